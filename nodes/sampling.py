"""Shortcut Sampler and Shortcut Sampler (Advanced): generator + conditioning + optional shortcut in, images out.

As KSampler / KSamplerAdvanced: the simple node shows the few widgets most runs change (seed, steps, budget,
cfg, batch size) and takes the rest (temperatures, token schedule, guidance ramp) from the generator's own
settings; the advanced node shows all of them, the full-step rule or an explicit list, the method, and a
preset menu that fills the widgets in the front end. What runs is what the node shows: the preset menu never
changes a value behind a widget. No sampling maths here: the nodes build ``SamplerSettings``, hand the models to
ComfyUI's model management, and report progress, previews, cancellation and what the run measured.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Optional

import torch
from comfy_api.latest import io

from ..shortcut_core import SamplerSettings, ShortcutError, sample, with_overrides
from ..shortcut_core.predictors import METHOD_HELP, METHODS
from ..shortcut_core.presets import PRESETS, check_preset
from ..shortcut_core.schedules import FULL_STEP_RULES, SEARCHED, TOKEN_SCHEDULES
from ..shortcut_core.speed import expected_speedup, measured_cost_ratio, vanilla_seconds
from ..shortcut_core.validation import check_batch_memory
from . import bridge
from .conditioning import ConditioningType
from .loaders import GENERATOR_TOOLTIP, MaskedGeneratorType, ShortcutType, generator_handle

TokensType = io.Custom("MIGM_TOKENS")

AUTO = "auto"
CUSTOM = "custom"
PRESET_GENERATOR = "generator defaults"
# SamplerSettings field -> the widget that shows it (presets and the generator's defaults fill these).
SETTING_WIDGETS = {"steps": "steps", "budget": "budget", "cfg_scale": "cfg", "cfg_ramp": "cfg_ramp",
                   "sm_temp": "sm_temp", "r_temp": "r_temp", "schedule": "schedule",
                   "full_step_rule": "full_step_rule"}
# Previews (image 0, decoded with still-masked tokens greyed): only when ComfyUI shows progress (server), about
# MAX_PREVIEWS per run, none before PREVIEW_AFTER_SECONDS of sampling (a quick run needs none), and only while
# decoding them has cost at most PREVIEW_SHARE of the sampling time so far, so a costly decoder gets fewer
# previews instead of a slower sampler. The finished image is always the last preview.
MAX_PREVIEWS = 8
PREVIEW_AFTER_SECONDS = 0.5
PREVIEW_SHARE = 0.1
PREVIEW_MIN_SIDE = 256
PREVIEW_MAX_SIDE = 512
MASKED_GREY = 0.5

SAMPLER_OUTPUT_TOOLTIP = "the images, [batch, height, width, 3] in 0..1, for Save Image or Preview Image"


# --------------------------------------------------------------------------------------------- widgets

def seed_input() -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                        tooltip="random seed: the same seed, settings and conditioning give the same images")


def steps_input(default: int = 16) -> io.Int.Input:
    return io.Int.Input("steps", default=default, min=1, max=256,
                        tooltip="sampling steps N: each step unmasks a share of the image tokens")


def budget_input(default: int = 6) -> io.Int.Input:
    return io.Int.Input("budget", default=default, min=1, max=256,
                        tooltip="base-model calls B (1..steps). The other N - B steps run the small shortcut "
                                "network instead: lower = faster and less faithful to the vanilla sampler. "
                                "B = N, or no shortcut connected, is the vanilla sampler. The strip below shows "
                                "which steps run the base model and the expected speedup.")


def cfg_input(default: float = 2.0) -> io.Float.Input:
    return io.Float.Input("cfg", default=default, min=0.0, max=30.0, step=0.1, round=0.01,
                          tooltip="classifier-free guidance w, (1 + w) cond - w uncond; 0 = off (half the work). "
                                  "Lumina-DiMOO uses 4, aMUSEd 9 (its pipeline's guidance 10), MaskGIT 2.8-3.")


def batch_input() -> io.Int.Input:
    return io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="images per run")


def sampler_inputs() -> list:
    return [MaskedGeneratorType.Input("generator", tooltip=GENERATOR_TOOLTIP),
            ConditioningType.Input("conditioning", tooltip="what to draw, from Masked Class Label or Masked Text "
                                                           "Prompt"),
            ShortcutType.Input("shortcut", optional=True,
                               tooltip="from Load Shortcut Weights; leave unconnected for the vanilla sampler")]


def temperature_inputs() -> list:
    """What the simple sampler takes from the generator, shown on the advanced node and the recorder."""
    return [
        io.Boolean.Input("cfg_ramp", default=True,
                         tooltip="ramp guidance linearly from 0 at the first step to cfg at the last (MaskGIT); "
                                 "off = the same cfg on every step (Lumina-DiMOO, aMUSEd)"),
        io.Float.Input("sm_temp", default=1.0, min=0.01, max=10.0, step=0.05, round=0.01,
                       tooltip="softmax temperature: multiplies the logits before a token is drawn"),
        io.Float.Input("r_temp", default=3.0, min=0.0, max=50.0, step=0.1, round=0.01,
                       tooltip="randomness of which drawn tokens are kept (Gumbel noise on the confidence)"),
        io.Combo.Input("schedule", options=[AUTO] + list(TOKEN_SCHEDULES), default=AUTO,
                       tooltip="how many tokens each step unmasks; auto = the generator's own schedule"),
    ]


def preset_input(with_budget: bool = True) -> io.Combo.Input:
    names = [n for n, (overrides, _, _) in PRESETS.items() if with_budget or overrides["budget"] == overrides["steps"]]
    return io.Combo.Input(
        "preset", options=[CUSTOM, PRESET_GENERATOR] + names, default=CUSTOM,
        tooltip="fills the widgets below with a known setting: the loaded generator's own sampler, or a run from "
                "the MIGM-Shortcut paper (<model>-N<steps>-B<budget>). Only the widgets count: edit one and the "
                "preset goes back to 'custom'.")


METHOD_TOOLTIP = ("; ".join(f"{name}: {text}" for name, text in METHOD_HELP.items()) +
                  ". The baselines compare with the shortcut at the same budget.")


def method_input() -> io.Combo.Input:
    return io.Combo.Input("method", options=list(METHODS), default="shortcut", tooltip=METHOD_TOOLTIP)


def full_step_inputs() -> list:
    return [
        io.Combo.Input("full_step_rule", options=[AUTO] + list(FULL_STEP_RULES) + [SEARCHED], default=AUTO,
                       tooltip="which steps run the base model: 'auto' = 'searched' when the shortcut weights "
                               "carry a step-error table for this step count, else 'official' (the released "
                               "code); 'paper' = the paper's formula; 'searched' = the steps that minimise the "
                               "shortcut's error measured on held-out trajectories"),
        io.String.Input("full_steps", default="",
                        tooltip="explicit 0-based full steps, e.g. 0,3,5,8 (must start with 0 and hold 'budget' "
                                "steps); empty = the rule above"),
    ]


# --------------------------------------------------------------------------------------------- settings

def full_step_rule_for(rule: str, shortcut: Optional[bridge.ShortcutHandle], steps: int) -> str:
    """'auto': the searched steps when the weights measured their step errors for this step count."""
    if rule != AUTO:
        return rule
    tables = shortcut.weights.step_errors if shortcut is not None else {}
    return SEARCHED if int(steps) in tables else "official"


def parse_full_steps(text: str) -> Optional[list[int]]:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return [int(part) for part in text.replace(" ", ",").split(",") if part]
    except ValueError as err:
        raise ShortcutError(f"full_steps must be 0-based step numbers separated by commas, e.g. 0,3,5,8; got "
                            f"{text!r}") from err


def build_settings(generator, steps: int, budget: int, cfg: float, seed: int, full_step_rule: str = "official",
                   full_steps: Optional[list[int]] = None, method: str = "shortcut", cfg_ramp: Optional[bool] = None,
                   sm_temp: Optional[float] = None, r_temp: Optional[float] = None,
                   schedule: str = AUTO) -> SamplerSettings:
    """The generator's own settings with the node's widgets on top (None / 'auto' = keep the generator's)."""
    settings = with_overrides(SamplerSettings.for_generator(generator), steps=int(steps), budget=int(budget),
                              cfg_scale=float(cfg), cfg_ramp=cfg_ramp, sm_temp=sm_temp, r_temp=r_temp,
                              schedule=None if schedule == AUTO else schedule, full_step_rule=full_step_rule,
                              method=method, seed=int(seed))
    settings.full_steps = full_steps
    try:
        settings.validate()
    except ShortcutError as err:
        raise ShortcutError(f"{err}. Fix that widget on the node.") from err
    return settings


def preset_widget_values(name: str, generator_defaults: Optional[dict] = None) -> dict:
    """The widget values a preset sets (what the front end fills in); ``generator defaults`` needs the card's."""
    if name == PRESET_GENERATOR:
        values = dict(generator_defaults or {})
    elif name in PRESETS:
        values = dict(PRESETS[name][0])
    else:
        return {}
    return {SETTING_WIDGETS[k]: v for k, v in values.items() if k in SETTING_WIDGETS and v is not None}


def preset_note(preset: str, generator, shown: dict) -> Optional[str]:
    """A note when the preset menu names a setting the widgets no longer hold (an API prompt, an edited copy),
    or a preset made for another model. The widgets always run."""
    if preset in (None, "", CUSTOM):
        return None
    if preset != PRESET_GENERATOR and preset not in PRESETS:
        raise ShortcutError(f"unknown preset {preset!r}; pick one of: {CUSTOM}, {PRESET_GENERATOR}, "
                            f"{', '.join(PRESETS)}")
    wanted = preset_widget_values(preset, dict(generator.default_settings))
    differ = sorted(k for k, v in wanted.items() if k in shown and shown[k] != v)
    if differ:
        return f"the widgets {', '.join(differ)} differ from preset {preset!r}: the widgets ran"
    return check_preset(preset, generator) if preset in PRESETS else None


# --------------------------------------------------------------------------------------------- running

def to_comfy_image(images: torch.Tensor) -> torch.Tensor:
    """Core images [B, 3, H, W] in 0..1 to ComfyUI's IMAGE [B, H, W, C] float32 on the CPU."""
    return images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).contiguous().cpu()


def preview_image(image: torch.Tensor):
    """ComfyUI's preview tuple for one image [3, H, W] in 0..1, enlarged (nearest) to at least 256 px."""
    from PIL import Image

    array = (image.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    pil = Image.fromarray(array)
    scale = max(1, PREVIEW_MIN_SIDE // max(pil.size))
    if scale > 1:
        pil = pil.resize((pil.size[0] * scale, pil.size[1] * scale), Image.NEAREST)
    # ComfyUI fits the preview into (max, max), scaling up too: never above the image's own size.
    return ("JPEG", pil, min(max(pil.size), PREVIEW_MAX_SIDE))


def preview_frame(generator, codes: torch.Tensor, masked: torch.Tensor):
    """A preview of image 0 during sampling: its current tokens decoded, still-masked tokens greyed out."""
    image = generator.decode(codes[:1]).float()[0]  # [3, H, W]
    gh, gw = generator.grid_size
    mask = masked[:1].view(1, 1, gh, gw).float()
    mask = torch.nn.functional.interpolate(mask, size=image.shape[-2:], mode="nearest")[0]
    return preview_image(image * (1 - mask) + MASKED_GREY * mask)


class StepReporter:
    """The per-step callback: cancel check, progress bar, and a preview every few steps.

    ``total_steps`` covers every run this node makes (the recorder samples one batch after another); a run
    that stops early (every token placed) or is skipped still advances the bar when the next one starts.
    """

    def __init__(self, generator, total_steps: int, steps_per_run: int, preview: bool = True):
        self.generator = generator
        self.total = total_steps
        self.steps_per_run = steps_per_run
        self.runs = 0
        self.done = 0
        self.bar = bridge.progress_bar(total_steps)
        # Only decode previews when something shows them (ComfyUI's progress hook is set under the server).
        self.preview = preview and getattr(self.bar, "hook", None) is not None
        self.every = max(1, -(-steps_per_run // MAX_PREVIEWS))
        self.started = time.perf_counter()
        self.preview_seconds = 0.0
        self.previews = 0

    def __call__(self, info) -> None:
        bridge.check_interrupt()
        if info.index == 0:
            self.runs += 1
        self.done = (self.runs - 1) * self.steps_per_run + info.index + 1
        frame = None
        if self.preview and (info.index + 1) % self.every == 0 and bool(info.masked[:1].any()) \
                and self._preview_affordable():
            t0 = time.perf_counter()
            frame = preview_frame(self.generator, info.codes, info.masked)
            self.preview_seconds += time.perf_counter() - t0
            self.previews += 1
        self.bar.update_absolute(min(self.done, self.total), self.total, frame)

    def _preview_affordable(self) -> bool:
        sampling = time.perf_counter() - self.started - self.preview_seconds
        return sampling >= PREVIEW_AFTER_SECONDS and self.preview_seconds <= PREVIEW_SHARE * sampling

    def complete(self, final: Optional[torch.Tensor] = None) -> None:
        """Fill the bar; with ``final`` (the decoded image 0 [3, H, W]) the finished image is the last preview,
        so the node never keeps a half-masked frame after a run."""
        self.done = self.total
        frame = preview_image(final) if self.preview and final is not None else None
        self.bar.update_absolute(self.total, self.total, frame)


def check_shortcut(shortcut, generator) -> Optional[bridge.ShortcutHandle]:
    if shortcut is None:
        return None
    if not isinstance(shortcut, bridge.ShortcutHandle):
        raise ShortcutError("the 'shortcut' input must come from a Load Shortcut Weights node")
    if shortcut.generator_identity != generator.identity:
        raise ShortcutError(f"shortcut {shortcut.name!r} was checked against generator {shortcut.generator_identity!r}, "
                            f"but this sampler uses {generator.identity!r}: connect the same generator to Load "
                            "Shortcut Weights and to this sampler")
    return shortcut


def check_conditioning(value) -> bridge.MaskedConditioning:
    if not isinstance(value, bridge.MaskedConditioning):
        raise ShortcutError("the 'conditioning' input must come from a Masked Class Label or Masked Text Prompt node")
    return value


def run_sampler(generator, conditioning, shortcut, settings: SamplerSettings, batch_size: int,
                note: Optional[str] = None) -> io.NodeOutput:
    """Sample, decode and report: (images, tokens) with what the run measured in the node's ``ui``."""
    handle = generator_handle(generator)
    gen = handle.generator
    conditioning = check_conditioning(conditioning)
    shortcut = check_shortcut(shortcut, gen)
    condition = conditioning.condition(gen, int(batch_size))
    bridge.use_image_size(handle, conditioning.width, conditioning.height)
    if shortcut is None and settings.method == "shortcut":  # no weights: every step runs the base model (vanilla)
        settings = replace(settings, budget=settings.steps, full_steps=None,
                           full_step_rule="official" if settings.full_step_rule == SEARCHED else settings.full_step_rule)
    weights = shortcut.weights if shortcut is not None and (
        settings.resolved_budget() < settings.steps or settings.full_step_rule == SEARCHED) else None
    bridge.load_for_use([handle.patcher, shortcut.patcher if weights is not None else None])
    check_batch_memory(gen, int(batch_size), settings.cfg_scale != 0, what="batch_size")
    reporter = StepReporter(gen, settings.steps, settings.steps)
    result = sample(gen, condition, settings, shortcut=weights, batch_size=int(batch_size), callback=reporter)
    decoded = gen.decode(result.codes)
    reporter.complete(decoded[0])
    tokens = {"codes": result.codes.detach().cpu(), "grid": list(gen.grid_size), "generator": gen.identity,
              "full_steps": list(result.full_steps), "decode_order": result.decode_order.detach().cpu()
              if result.decode_order is not None else None}
    stats = run_stats(settings, result, shortcut_connected=shortcut is not None or settings.method != "shortcut",
                      fitted_ratio=shortcut.fitted_ratio if shortcut is not None else None, note=note)
    if shortcut is not None and settings.method == "shortcut" and stats["measured_ratio"] is not None:
        bridge.record_measured_ratio(shortcut.name, handle.name, stats["measured_ratio"], str(handle.load_device))
    return io.NodeOutput(to_comfy_image(decoded), tokens, ui={"shortcut_stats": [stats]})


def run_stats(settings: SamplerSettings, result, shortcut_connected: bool, fitted_ratio: Optional[float] = None,
              note: Optional[str] = None) -> dict:
    """What the node shows after a run: calls, measured times, the speedup over the estimated vanilla time."""
    steps, budget, method = settings.steps, settings.resolved_budget(), settings.method
    ratio = measured_cost_ratio(result)
    expected = expected_speedup(steps, budget, ratio if ratio is not None else fitted_ratio, method)
    vanilla = vanilla_seconds(result, steps, method)
    speedup = vanilla / result.seconds if result.seconds > 0 else 1.0
    summary = (f"{result.steps_run} of {steps} steps: {result.base_calls} base + {result.shortcut_calls} {method} "
               f"calls (full steps {result.full_steps}); {result.seconds:.2f} s, {speedup:.2f}x the speed of the "
               f"vanilla sampler (estimated {vanilla:.2f} s)")
    if ratio is not None:
        summary += f"; a {method} call costs {ratio:.3f} of a base call"
    if not shortcut_connected:
        summary += "; no shortcut connected: vanilla sampler (budget not used)"
    if note:
        summary += f"; note: {note}"
    return {"steps": steps, "budget": budget, "method": method, "full_steps": list(result.full_steps),
            "base_calls": result.base_calls, "shortcut_calls": result.shortcut_calls, "steps_run": result.steps_run,
            "base_call_ms": round(result.base_call_ms, 3), "shortcut_call_ms": round(result.shortcut_call_ms, 3),
            "seconds": round(result.seconds, 4), "vanilla_seconds": round(vanilla, 4),
            "speedup": round(speedup, 3), "measured_ratio": ratio, "fitted_ratio": fitted_ratio,
            "expected_speedup": round(expected, 3) if expected is not None else None,
            "vanilla": not shortcut_connected or budget == steps, "note": note, "summary": summary}


# --------------------------------------------------------------------------------------------- the nodes

class ShortcutSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMShortcutSampler",
            display_name="Shortcut Sampler",
            category=bridge.CATEGORY,
            description=("Draws images with a masked generator. With shortcut weights only `budget` of the `steps` "
                         "steps run the base model; the others run the small shortcut network (MIGM-Shortcut). "
                         "Temperatures, token schedule and guidance ramp are the generator's own; the Advanced "
                         "sampler shows them."),
            inputs=[*sampler_inputs(), seed_input(), steps_input(), budget_input(), cfg_input(), batch_input()],
            outputs=[io.Image.Output(display_name="images", tooltip=SAMPLER_OUTPUT_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(cls, steps=None, budget=None):
        return budget_problem(steps, budget) or True

    @classmethod
    def execute(cls, generator, conditioning, seed: int, steps: int, budget: int, cfg: float, batch_size: int,
                shortcut=None, **kwargs) -> io.NodeOutput:
        gen = generator_handle(generator).generator
        check_budget(steps, budget)
        shortcut_handle = check_shortcut(shortcut, gen)
        settings = build_settings(gen, steps, budget, cfg, seed, full_step_rule_for(AUTO, shortcut_handle, steps))
        output = run_sampler(generator, conditioning, shortcut, settings, batch_size)
        return io.NodeOutput(output.args[0], ui=output.ui)


class ShortcutSamplerAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMShortcutSamplerAdvanced",
            display_name="Shortcut Sampler (Advanced)",
            category=bridge.CATEGORY,
            description=("The Shortcut Sampler with every setting on the node: temperatures, token schedule, "
                         "guidance ramp, which steps run the base model (rule or explicit list), and the method on "
                         "the other steps (the shortcut or a training-free baseline). The preset menu fills the "
                         "widgets; only the widgets run."),
            inputs=[*sampler_inputs(), preset_input(), seed_input(), steps_input(), budget_input(),
                    *full_step_inputs(), method_input(), cfg_input(), *temperature_inputs(), batch_input()],
            outputs=[io.Image.Output(display_name="images", tooltip=SAMPLER_OUTPUT_TOOLTIP),
                     TokensType.Output(display_name="tokens",
                                       tooltip="the final token grid, the step each token was decoded at, and the "
                                               "full steps (for inspecting a run)")],
        )

    @classmethod
    def validate_inputs(cls, steps=None, budget=None):
        return budget_problem(steps, budget) or True

    @classmethod
    def execute(cls, generator, conditioning, preset: str, seed: int, steps: int, budget: int, full_step_rule: str,
                full_steps: str, method: str, cfg: float, cfg_ramp: bool, sm_temp: float, r_temp: float,
                schedule: str, batch_size: int, shortcut=None, **kwargs) -> io.NodeOutput:
        gen = generator_handle(generator).generator
        check_budget(steps, budget)
        if method not in METHODS:
            raise ShortcutError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        shortcut_handle = check_shortcut(shortcut, gen)
        settings = build_settings(gen, steps, budget, cfg, seed, full_step_rule_for(full_step_rule, shortcut_handle,
                                                                                   steps),
                                  parse_full_steps(full_steps), method, cfg_ramp, sm_temp, r_temp, schedule)
        shown = {"steps": steps, "budget": budget, "cfg": cfg, "cfg_ramp": cfg_ramp, "sm_temp": sm_temp,
                 "r_temp": r_temp, "schedule": schedule, "full_step_rule": full_step_rule}
        note = preset_note(preset, gen, shown)
        return run_sampler(generator, conditioning, shortcut, settings, batch_size, note)


def budget_problem(steps, budget) -> Optional[str]:
    """A message when the budget widget is out of range (None for linked values, checked when running)."""
    if isinstance(steps, int) and isinstance(budget, int) and not 1 <= budget <= steps:
        return (f"budget {budget} must be between 1 and steps ({steps}): it counts the steps that run the base "
                f"model. Lower budget or raise steps.")
    return None


def check_budget(steps, budget) -> None:
    problem = budget_problem(int(steps), int(budget))
    if problem:
        raise ShortcutError(problem)
