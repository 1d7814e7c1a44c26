"""MIGM-Shortcut engine: fast sampling for masked image generation models, framework-free (no ComfyUI)."""
from .generator import Condition, Context, MaskedGenerator, NewTokens, ShortcutError, gather_new_tokens
from .registry import DEMO_GENERATOR, DEMO_SHORTCUT, load_generator, save_generator, shortcut_path
from .sampler import SampleResult, SamplerSettings, StepInfo, sample, with_overrides
from .schedules import full_steps, tokens_per_step
from .shortcut import ShortcutConfig, ShortcutNetwork, build_shortcut
from .weights import ShortcutWeights, load_shortcut, save_shortcut

__version__ = "0.1.0"

__all__ = [
    "Condition", "Context", "MaskedGenerator", "NewTokens", "ShortcutError", "gather_new_tokens",
    "DEMO_GENERATOR", "DEMO_SHORTCUT", "load_generator", "save_generator", "shortcut_path",
    "SampleResult", "SamplerSettings", "StepInfo", "sample", "with_overrides", "full_steps", "tokens_per_step",
    "ShortcutConfig", "ShortcutNetwork", "build_shortcut", "ShortcutWeights", "load_shortcut", "save_shortcut",
]
