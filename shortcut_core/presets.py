"""Named sampler presets: the runs of the MIGM-Shortcut paper and the reference MaskGIT settings.

A preset is a dict of ``SamplerSettings`` fields. ``apply_preset(settings, name)`` returns a copy of
``settings`` with them set (the seed and autocast are kept); the CLI's ``--preset`` and the ComfyUI node call it.
Names: ``<model>-N<steps>`` runs the vanilla sampler, ``<model>-N<steps>-B<budget>`` runs the base model on
``budget`` of the ``steps`` steps (official full-step rule) and needs shortcut weights.

MaskGIT reference settings: 512 px (32x32 tokens) 15 steps, cfg 2.8 (linear ramp), r_temp 7, sm_temp 1, arccos;
256 px (16x16 tokens) 8 steps, cfg 3, r_temp 4.5. Published FID (50k images, 512 px) in the descriptions.
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Optional

from .generator import ShortcutError
from .sampler import SamplerSettings

_MASKGIT512 = {"cfg_scale": 2.8, "cfg_ramp": True, "r_temp": 7.0, "sm_temp": 1.0, "schedule": "arccos"}
_MASKGIT256 = {"cfg_scale": 3.0, "cfg_ramp": True, "r_temp": 4.5, "sm_temp": 1.0, "schedule": "arccos"}


def _preset(base: dict, steps: int, budget: Optional[int] = None) -> dict:
    return {**base, "steps": steps, "budget": steps if budget is None else budget, "full_step_rule": "official",
            "full_steps": None}


# name -> (settings overrides, model family tag, description)
PRESETS: dict[str, tuple[dict, str, str]] = {
    "maskgit512-N15": (_preset(_MASKGIT512, 15), "maskgit512",
                       "MaskGIT 512 px reference sampler, 15 steps (paper: FID 7.60, 50.1 ms)"),
    "maskgit512-N15-B7": (_preset(_MASKGIT512, 15, 7), "maskgit512",
                          "15 steps, 7 base calls + 8 shortcut calls (paper: FID 8.90, 25.9 ms, 1.94x)"),
    "maskgit512-N15-B8": (_preset(_MASKGIT512, 15, 8), "maskgit512", "15 steps, 8 base calls + 7 shortcut calls"),
    "maskgit512-N32": (_preset(_MASKGIT512, 32), "maskgit512", "MaskGIT 512 px reference sampler, 32 steps"),
    "maskgit512-N32-B8": (_preset(_MASKGIT512, 32, 8), "maskgit512",
                          "32 steps, 8 base calls + 24 shortcut calls (paper: FID 7.30, 33.7 ms)"),
    "maskgit512-N32-B9": (_preset(_MASKGIT512, 32, 9), "maskgit512", "32 steps, 9 base calls + 23 shortcut calls"),
    "maskgit512-N32-B12": (_preset(_MASKGIT512, 32, 12), "maskgit512",
                           "32 steps, 12 base calls + 20 shortcut calls (paper: FID 6.84, 45.9 ms)"),
    "maskgit256-N8": (_preset(_MASKGIT256, 8), "maskgit256", "MaskGIT 256 px reference sampler, 8 steps"),
    "maskgit256-N8-B4": (_preset(_MASKGIT256, 8, 4), "maskgit256",
                         "8 steps, 4 base calls + 4 shortcut calls (needs shortcut weights fitted on MaskGIT-256)"),
    "maskgit256-N16": (_preset(_MASKGIT256, 16), "maskgit256", "MaskGIT 256 px, 16 steps"),
}

PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)
_SETTING_FIELDS = {f.name for f in fields(SamplerSettings)}


def preset_names(generator=None) -> list[str]:
    """All preset names, or those meant for ``generator`` (its ``preset_family``) when one is given."""
    if generator is None:
        return list(PRESETS)
    return [name for name, (_, tag, _) in PRESETS.items() if tag == generator.preset_family]


def get_preset(name: str) -> dict:
    """The overrides of a preset (a copy); ShortcutError listing the names when unknown."""
    if name not in PRESETS:
        raise ShortcutError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return dict(PRESETS[name][0])


def needs_shortcut(name: str) -> bool:
    overrides = get_preset(name)
    return overrides["budget"] < overrides["steps"]


def apply_preset(settings: Optional[SamplerSettings], name: Optional[str]) -> SamplerSettings:
    """``settings`` (default ``SamplerSettings()``) with preset ``name`` applied; None/"" or "none" changes nothing.

    Explicit per-field choices (a CLI flag, a node widget) are applied after this call so they win over the preset.
    """
    settings = settings if settings is not None else SamplerSettings()
    if not name or name == "none":
        return replace(settings)
    overrides = {k: v for k, v in get_preset(name).items() if k in _SETTING_FIELDS}
    return replace(settings, **overrides)


def check_preset(name: str, generator) -> Optional[str]:
    """A warning when preset ``name`` was made for another model than ``generator``, else None."""
    tag = PRESETS[name][1] if name in PRESETS else None
    if tag is None:
        get_preset(name)
    family = generator.preset_family
    if tag != family:
        return (f"preset {name!r} was made for {tag} models, but generator {generator.identity!r} "
                f"is {family or 'another model'}; its steps and guidance may not suit it")
    return None
