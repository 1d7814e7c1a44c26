"""Shortcut Masked Sampler and Trajectory Recorder: widgets in, ``shortcut_core.sample`` / ``record`` out.

No sampling maths here: the nodes turn widget values into a ``Condition`` and ``SamplerSettings``, hand the
models to ComfyUI's model management, and report progress (with a cheap preview) and cancellation per step.
"""
from __future__ import annotations

import re
import time
from typing import Optional

import torch
from comfy_api.latest import io

from ..shortcut_core import Condition, SamplerSettings, ShortcutError, sample, with_overrides
from ..shortcut_core.presets import PRESET_NAMES, apply_preset, check_preset
from ..shortcut_core.recording import STORAGE_DTYPES, dataset_summary, record
from ..shortcut_core.predictors import METHOD_HELP, METHODS
from ..shortcut_core.schedules import FULL_STEP_RULES, SEARCHED, TOKEN_SCHEDULES
from ..shortcut_core.validation import check_batch_memory
from . import bridge
from .loaders import MaskedGeneratorType, ShortcutType

TokensType = io.Custom("MIGM_TOKENS")

CYCLE_CLASSES = "(cycle through all classes)"
AUTO = "auto"
PRESET_WIDGETS = "none (use the widgets)"
PRESET_GENERATOR = "generator defaults"
# Relative cost of a shortcut call vs a base call assumed before a run has measured it (paper: ~1/24 MaskGIT).
ASSUMED_SHORTCUT_COST = 1 / 24
# Previews (image 0, decoded with still-masked tokens greyed): only when ComfyUI shows progress (server), about
# MAX_PREVIEWS per run plus the finished image, none before PREVIEW_AFTER_SECONDS of sampling (a quick run
# needs none), and only while decoding them has cost at most PREVIEW_SHARE of the sampling time so far, so a
# costly decoder gets fewer previews instead of a slower sampler.
MAX_PREVIEWS = 8
PREVIEW_AFTER_SECONDS = 0.5
PREVIEW_SHARE = 0.1
PREVIEW_MIN_SIDE = 256
PREVIEW_MAX_SIDE = 512
MASKED_GREY = 0.5
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


# --------------------------------------------------------------------------------------------- shared inputs

def condition_inputs() -> list:
    return [
        io.Combo.Input("class_name", options=[CYCLE_CLASSES] + bridge.class_name_options(), default=CYCLE_CLASSES,
                       tooltip="class-conditional generators: the class to draw (checked against the connected "
                               "generator's class names); the cycle entry gives image i class i. Ignored by "
                               "text-to-image generators."),
        io.Int.Input("class_index", default=-1, min=-1, max=1_000_000,
                     tooltip="-1 = use class_name; 0 or more = this class number (for generators without names)"),
        io.String.Input("prompt", default="", multiline=True, optional=True,
                        tooltip="text-to-image generators only: what to draw"),
        io.String.Input("negative_prompt", default="", multiline=True, optional=True,
                        tooltip="text-to-image generators only: what to avoid (the unconditional CFG branch)"),
    ]


def sampling_inputs(budget: bool) -> list:
    presets = [PRESET_WIDGETS, PRESET_GENERATOR] + (list(PRESET_NAMES) if budget else [])
    inputs = [io.Combo.Input(
        "preset", options=presets, default=PRESET_WIDGETS,
        tooltip="'none' = every widget below counts. 'generator defaults' = cfg, cfg_ramp, sm_temp, r_temp and "
                "schedule come from the loaded generator (e.g. Lumina-DiMOO's own settings). A named preset "
                "(the paper's MaskGIT runs, <model>-N<steps>-B<budget>) sets steps and budget too and replaces "
                "those widgets.")]
    inputs.append(io.Int.Input("steps", default=16, min=1, max=256,
                               tooltip="sampling steps N: each step unmasks a share of the tokens"))
    if budget:
        inputs.append(io.Int.Input(
            "budget", default=8, min=1, max=256,
            tooltip="base-model calls B (<= steps). The other N - B steps run the shortcut network, which costs "
                    "about 1/24 of a base call: expected speedup N / (B + (N - B) / 24). Lower = faster, less "
                    "faithful. B = N (or no shortcut connected) is the vanilla sampler."))
    inputs += [
        io.Float.Input("cfg", default=2.0, min=0.0, max=30.0, step=0.1, round=0.01,
                       tooltip="classifier-free guidance w (0 = off, halves the work)"),
        io.Boolean.Input("cfg_ramp", default=True,
                         tooltip="ramp guidance linearly from 0 at the first step to w at the last (MaskGIT)"),
        io.Float.Input("sm_temp", default=1.0, min=0.01, max=10.0, step=0.05, round=0.01,
                       tooltip="softmax temperature: multiplies the logits before sampling a token"),
        io.Float.Input("r_temp", default=3.0, min=0.0, max=50.0, step=0.1, round=0.01,
                       tooltip="randomness of which tokens are kept (Gumbel noise, decays to 0)"),
        io.Combo.Input("schedule", options=[AUTO] + list(TOKEN_SCHEDULES), default=AUTO,
                       tooltip="how many tokens each step unmasks; auto = the generator's own"),
    ]
    if budget:
        inputs.append(io.Combo.Input("full_step_rule", options=list(FULL_STEP_RULES) + [SEARCHED], default="official",
                                     tooltip="which steps run the base model: 'official' = the released code "
                                             "(default), 'paper' = the paper's formula, 'searched' = the steps "
                                             "that minimise the shortcut error measured on held-out "
                                             "trajectories (needs weights that carry that table, e.g. the demo's)"))
    inputs += [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
        io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="images per run"),
    ]
    return inputs


def size_inputs() -> list:
    """Output size for generators that take one (Lumina-DiMOO, aMUSEd); optional so older graphs still run."""
    return [io.Int.Input(name, default=0, min=0, max=8192, step=16, optional=True,
                         tooltip=f"image {name} in px for text-to-image generators (Lumina-DiMOO: a multiple "
                                 "of 16, aMUSEd-512: of 32); 0 = the generator's own size. MaskGIT draws at one "
                                 "size: leave 0.")
            for name in ("width", "height")]


def method_input() -> io.Combo.Input:
    """What runs on the steps that skip the base model; optional and last so older graphs keep their values."""
    return io.Combo.Input("method", options=list(METHODS), default="shortcut", optional=True,
                          tooltip="; ".join(f"{name}: {text}" for name, text in METHOD_HELP.items()) +
                                  ". The baselines are here to compare with the shortcut at the same budget.")


def make_condition(generator, batch_size: int, class_name: str, class_index: int = -1, prompt: str = "",
                   negative_prompt: str = "", offset: int = 0) -> Condition:
    """The core ``Condition`` for ``batch_size`` images from the class/prompt widgets."""
    if generator.condition_kind == "text":
        if not (prompt or "").strip():
            raise ShortcutError(f"generator {generator.identity!r} is text-to-image: write a prompt")
        negatives = [negative_prompt] * batch_size if (negative_prompt or "").strip() else None
        return Condition(prompts=[prompt] * batch_size, negative_prompts=negatives)
    count = generator.num_classes
    if class_index is not None and class_index >= 0:
        labels = [int(class_index)] * batch_size
    elif class_name == CYCLE_CLASSES:
        labels = [(offset + i) % count for i in range(batch_size)]
    else:
        names = {str(n).lower(): i for i, n in enumerate(generator.class_names)}
        if str(class_name).lower() not in names:
            shown = ", ".join(map(str, list(generator.class_names)[:30]))
            raise ShortcutError(f"class {class_name!r} is not a class of generator {generator.identity!r}; its "
                                f"classes are: {shown}{' ...' if count > 30 else ''}. Pick one of these, "
                                f"'{CYCLE_CLASSES}', or set class_index")
        labels = [names[str(class_name).lower()]] * batch_size
    condition = Condition(labels=labels)
    generator.check_condition(condition, batch_size)
    return condition


def make_settings(generator, steps: int, budget: Optional[int], cfg: float, cfg_ramp: bool, sm_temp: float,
                  r_temp: float, schedule: str, full_step_rule: str, seed: int,
                  preset: str = PRESET_WIDGETS) -> tuple[SamplerSettings, Optional[str]]:
    """Settings and an optional warning: the generator's own defaults (e.g. its confidence rule), then the
    widgets, except those the preset replaces (see the preset widget's tooltip)."""
    base = SamplerSettings.for_generator(generator)
    warning = None
    if preset in (None, "", PRESET_WIDGETS):
        settings = with_overrides(base, steps=int(steps), budget=budget, cfg_scale=float(cfg), cfg_ramp=bool(cfg_ramp),
                                  sm_temp=float(sm_temp), r_temp=float(r_temp),
                                  schedule=None if schedule == AUTO else schedule, full_step_rule=full_step_rule)
    elif preset == PRESET_GENERATOR:
        settings = with_overrides(base, steps=int(steps), budget=budget, full_step_rule=full_step_rule)
    elif preset in PRESET_NAMES:
        settings = apply_preset(base, preset)
        warning = check_preset(preset, generator)
        if budget is None:  # the recorder: every step full
            settings.budget = None
    else:
        raise ShortcutError(f"unknown preset {preset!r}; pick one of: {PRESET_WIDGETS}, {PRESET_GENERATOR}, "
                            f"{', '.join(PRESET_NAMES)}")
    settings.seed = int(seed)
    settings.full_steps = None
    try:
        settings.validate()
    except ShortcutError as err:
        raise ShortcutError(f"{err}. Fix that widget on the node.") from err
    return settings, warning


def budget_problem(steps, budget) -> Optional[str]:
    """A message when the budget widget is out of range (None for linked values, checked when running)."""
    if isinstance(steps, int) and isinstance(budget, int) and not 1 <= budget <= steps:
        return (f"budget {budget} must be between 1 and steps ({steps}): it counts the steps that run the base "
                f"model. Lower budget or raise steps.")
    return None


def to_comfy_image(images: torch.Tensor) -> torch.Tensor:
    """Core images [B, 3, H, W] in 0..1 to ComfyUI's IMAGE [B, H, W, C] float32 on the CPU."""
    return images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).contiguous().cpu()


def preview_frame(generator, codes: torch.Tensor, masked: torch.Tensor):
    """A preview of image 0: its current tokens decoded, still-masked tokens greyed out. One small decode."""
    from PIL import Image

    image = generator.decode(codes[:1]).float()[0]  # [3, H, W]
    gh, gw = generator.grid_size
    mask = masked[:1].view(1, 1, gh, gw).float()
    mask = torch.nn.functional.interpolate(mask, size=image.shape[-2:], mode="nearest")[0]
    image = image * (1 - mask) + MASKED_GREY * mask
    array = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    pil = Image.fromarray(array)
    scale = max(1, PREVIEW_MIN_SIDE // max(pil.size))
    if scale > 1:
        pil = pil.resize((pil.size[0] * scale, pil.size[1] * scale), Image.NEAREST)
    # ComfyUI fits the preview into (max, max), scaling up too: never above the image's own size.
    return ("JPEG", pil, min(max(pil.size), PREVIEW_MAX_SIDE))


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
        self.full_flags: list[bool] = []
        self.started = time.perf_counter()
        self.preview_seconds = 0.0
        self.previews = 0

    def __call__(self, info) -> None:
        bridge.check_interrupt()
        if info.index == 0:
            self.runs += 1
        self.full_flags.append(bool(info.is_full))
        self.done = (self.runs - 1) * self.steps_per_run + info.index + 1
        frame = None
        finished = not bool(info.masked[:1].any())
        if self.preview and (finished or (info.index + 1) % self.every == 0) and self._preview_affordable():
            t0 = time.perf_counter()
            frame = preview_frame(self.generator, info.codes, info.masked)
            self.preview_seconds += time.perf_counter() - t0
            self.previews += 1
        self.bar.update_absolute(min(self.done, self.total), self.total, frame)

    def _preview_affordable(self) -> bool:
        sampling = time.perf_counter() - self.started - self.preview_seconds
        return sampling >= PREVIEW_AFTER_SECONDS and self.preview_seconds <= PREVIEW_SHARE * sampling

    def complete(self) -> None:
        self.done = self.total
        self.bar.update_absolute(self.total, self.total, None)


def _generator(value) -> bridge.GeneratorHandle:
    if not isinstance(value, bridge.GeneratorHandle):
        raise ShortcutError("the 'generator' input must come from a Load Masked Generator node")
    return value


# --------------------------------------------------------------------------------------------- sampler node

class ShortcutMaskedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMShortcutMaskedSampler",
            display_name="Shortcut Masked Sampler",
            category=bridge.CATEGORY,
            description=("Generates images with a masked generator. With shortcut weights, only `budget` of the "
                         "`steps` steps run the base model; the others run the small shortcut network "
                         "(MIGM-Shortcut). Without shortcut, or with budget = steps, it is the vanilla sampler. "
                         "`method` runs a baseline at the same budget instead, for comparison."),
            inputs=[
                MaskedGeneratorType.Input("generator"),
                ShortcutType.Input("shortcut", optional=True,
                                   tooltip="from Load Shortcut Weights; leave unconnected for the vanilla sampler"),
                *condition_inputs(),
                *sampling_inputs(budget=True),
                *size_inputs(),
                method_input(),
            ],
            outputs=[io.Image.Output(display_name="images"),
                     TokensType.Output(display_name="tokens")],
        )

    @classmethod
    def validate_inputs(cls, steps=None, budget=None):
        return budget_problem(steps, budget) or True

    @classmethod
    def execute(cls, generator, steps: int, budget: int, cfg: float, cfg_ramp: bool, sm_temp: float, r_temp: float,
                schedule: str, full_step_rule: str, seed: int, batch_size: int, class_name: str = CYCLE_CLASSES,
                class_index: int = -1, prompt: str = "", negative_prompt: str = "", shortcut=None,
                preset: str = PRESET_WIDGETS, width: int = 0, height: int = 0, method: str = "shortcut",
                **kwargs) -> io.NodeOutput:
        handle = _generator(generator)
        gen = handle.generator
        bridge.use_image_size(handle, width, height)
        problem = budget_problem(steps, budget)
        if problem:
            raise ShortcutError(problem)
        if shortcut is not None:
            if not isinstance(shortcut, bridge.ShortcutHandle):
                raise ShortcutError("the 'shortcut' input must come from a Load Shortcut Weights node")
            if shortcut.generator_identity != gen.identity:
                raise ShortcutError(f"shortcut {shortcut.name!r} was checked against generator "
                                    f"{shortcut.generator_identity!r}, but this sampler uses {gen.identity!r}: "
                                    "connect the same generator to Load Shortcut Weights and to this sampler")
        settings, warning = make_settings(gen, steps, int(budget), cfg, cfg_ramp, sm_temp, r_temp, schedule,
                                          full_step_rule, seed, preset)
        if method not in METHODS:
            raise ShortcutError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        settings.method = method
        if shortcut is None and method == "shortcut":  # no weights: every step runs the base model (vanilla)
            settings.budget = settings.steps
        condition = make_condition(gen, int(batch_size), class_name, class_index, prompt, negative_prompt)
        network = shortcut.network if shortcut is not None and (
            settings.resolved_budget() < settings.steps or settings.full_step_rule == SEARCHED) else None
        bridge.load_for_use([handle.patcher, shortcut.patcher if network is not None else None])
        check_batch_memory(gen, int(batch_size), settings.cfg_scale != 0, what="batch_size")
        reporter = StepReporter(gen, settings.steps, settings.steps)
        result = sample(gen, condition, settings, shortcut=network, batch_size=int(batch_size), callback=reporter)
        reporter.complete()
        images = to_comfy_image(gen.decode(result.codes))
        tokens = {"codes": result.codes.detach().cpu(), "grid": list(gen.grid_size), "generator": gen.identity,
                  "full_steps": list(result.full_steps), "decode_order": result.decode_order.detach().cpu()
                  if result.decode_order is not None else None}
        stats = run_stats(settings, result, shortcut_connected=shortcut is not None or method != "shortcut")
        if warning:
            stats["summary"] += f"; note: {warning}"
        return io.NodeOutput(images, tokens, ui={"shortcut_stats": [stats], "text": [stats["summary"]]})


def run_stats(settings: SamplerSettings, result, shortcut_connected: bool) -> dict:
    steps, budget, method = settings.steps, settings.resolved_budget(), settings.method
    ratio = (result.shortcut_call_ms / result.base_call_ms
             if result.shortcut_calls and result.base_calls and result.base_call_ms > 0 else None)
    cost = ratio if ratio is not None else ASSUMED_SHORTCUT_COST
    expected = steps / budget if method == "fewer_steps" else steps / (budget + (steps - budget) * cost)
    summary = (f"{result.steps_run} of {steps} steps, {result.base_calls} base + {result.shortcut_calls} {method} "
               f"calls (full steps {result.full_steps}); {result.seconds:.2f} s")
    if ratio is not None:
        summary += f"; {method} call = {ratio:.3f} of a base call, speedup {expected:.2f}x"
    elif method == "fewer_steps" and budget < steps:
        summary += f"; vanilla with {budget} steps, speedup {expected:.2f}x"
    if not shortcut_connected:
        summary += "; no shortcut connected: vanilla sampler (budget ignored)"
    return {"steps": steps, "budget": budget, "method": method, "full_steps": list(result.full_steps),
            "base_calls": result.base_calls, "shortcut_calls": result.shortcut_calls,
            "base_call_ms": round(result.base_call_ms, 3), "shortcut_call_ms": round(result.shortcut_call_ms, 3),
            "seconds": round(result.seconds, 4), "measured_ratio": ratio, "expected_speedup": round(expected, 3),
            "vanilla": not shortcut_connected or budget == steps, "summary": summary}


# --------------------------------------------------------------------------------------------- recorder node

class TrajectoryRecorderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMTrajectoryRecorder",
            display_name="Trajectory Recorder",
            category=bridge.CATEGORY,
            description=("Runs the sampler with every step full and records each step's features into a dataset "
                         "folder under ComfyUI's output directory (training data for shortcut weights). "
                         "Re-running resumes: batches already recorded are skipped."),
            inputs=[
                MaskedGeneratorType.Input("generator"),
                io.String.Input("dataset_name", default="migm_trajectories",
                                tooltip="folder name under ComfyUI/output (letters, digits, _ . -)"),
                io.Int.Input("batches", default=2, min=1, max=100_000,
                             tooltip="how many batches the dataset should hold in total; batch i uses seed + i"),
                io.Combo.Input("storage", options=list(STORAGE_DTYPES), default="fp16",
                               tooltip="precision of the stored features"),
                *condition_inputs(),
                *sampling_inputs(budget=False),
            ],
            outputs=[io.String.Output(display_name="summary")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, dataset_name="", **kwargs):
        # Re-run (instead of reusing the cached report) when the folder changed on disk.
        try:
            return f"{dataset_name}|{dataset_summary(bridge.output_directory() / str(dataset_name).strip())}"
        except Exception:  # noqa: BLE001 - a fingerprint must never fail the prompt
            return dataset_name

    @classmethod
    def execute(cls, generator, dataset_name: str, batches: int, storage: str, steps: int, cfg: float,
                cfg_ramp: bool, sm_temp: float, r_temp: float, schedule: str, seed: int, batch_size: int,
                class_name: str = CYCLE_CLASSES, class_index: int = -1, prompt: str = "", negative_prompt: str = "",
                preset: str = PRESET_WIDGETS, **kwargs) -> io.NodeOutput:
        handle = _generator(generator)
        gen = handle.generator
        bridge.use_image_size(handle)  # recordings (and the shortcuts fitted on them) use the generator's own size
        name = (dataset_name or "").strip()
        if not _DATASET_NAME.match(name) or ".." in name:
            raise ShortcutError(f"dataset_name {dataset_name!r} must be a plain folder name (letters, digits, "
                                "'_', '.', '-'; no slashes): it is created under ComfyUI's output directory")
        if storage not in STORAGE_DTYPES:
            raise ShortcutError(f"storage must be one of {', '.join(STORAGE_DTYPES)}, got {storage!r}")
        folder = bridge.output_directory() / name
        settings, _ = make_settings(gen, steps, None, cfg, cfg_ramp, sm_temp, r_temp, schedule, "official", seed,
                                    preset)
        batch = int(batch_size)
        conditions = [make_condition(gen, batch, class_name, class_index, prompt, negative_prompt, offset=i * batch)
                      for i in range(int(batches))]
        bridge.load_for_use([handle.patcher])
        before = dataset_summary(folder)
        reporter = StepReporter(gen, settings.steps * len(conditions), settings.steps, preview=False)
        started = time.perf_counter()
        record(gen, folder, conditions, settings, storage=storage, callback=reporter)
        reporter.complete()
        summary = dataset_summary(folder)
        added = summary["trajectories"] - before["trajectories"]
        text = (f"{folder.name}: {summary['trajectories']} trajectories, {summary['bytes']} bytes "
                f"({summary['bytes'] / 2**20:.1f} MiB) in {summary['shards']} shards; {added} added this run in "
                f"{time.perf_counter() - started:.1f} s")
        info = {"folder": str(folder), "name": folder.name, "added": added, **summary}
        return io.NodeOutput(text, ui={"text": [text], "dataset": [info]})


NODES = [
    ShortcutMaskedSampler,
    TrajectoryRecorderNode,
]
