"""The first versions of the sampler and the recorder, which took the class or prompt as widgets: kept
registered (deprecated, hidden from the node menu) so workflows saved with them still load and run. They build
the same conditioning and settings as the new nodes and run the same code; like them, only the widgets run
(a preset named in the menu that no longer matches the widgets is reported on the node, not applied)."""
from __future__ import annotations

from comfy_api.latest import io

from ..shortcut_core.predictors import METHODS
from ..shortcut_core.presets import PRESET_NAMES
from ..shortcut_core.schedules import FULL_STEP_RULES, SEARCHED
from . import bridge
from .conditioning import CYCLE_CLASSES, class_conditioning, size_inputs, text_conditioning
from .loaders import GENERATOR_TOOLTIP, MaskedGeneratorType, ShortcutType, generator_handle
from .recording import dataset_fingerprint, dataset_inputs, record_dataset
from .sampling import (CUSTOM, METHOD_TOOLTIP, PRESET_GENERATOR, TokensType, batch_input, budget_input,
                       budget_problem, build_settings, cfg_input, check_budget, preset_note, run_sampler, seed_input,
                       steps_input, temperature_inputs)

LEGACY_NONE = "none (use the widgets)"
DEPRECATED = " Deprecated: use Masked Class Label / Masked Text Prompt with the new node instead."


def legacy_class_options() -> list[str]:
    names: list[str] = []
    for name in bridge.list_generators():
        try:
            card = bridge.generator_card(name)
        except Exception:  # noqa: BLE001 - a broken file must not break the node list
            continue
        names += list(card.class_names)
    return [CYCLE_CLASSES] + list(dict.fromkeys(names))


def condition_inputs() -> list:
    return [
        io.Combo.Input("class_name", options=legacy_class_options(), default=CYCLE_CLASSES,
                       tooltip="class-conditional generators: the class to draw"),
        io.Int.Input("class_index", default=-1, min=-1, max=1_000_000,
                     tooltip="-1 = use class_name; 0 or more = this class number"),
        io.String.Input("prompt", default="", multiline=True, optional=True,
                        tooltip="text-to-image generators only: what to draw"),
        io.String.Input("negative_prompt", default="", multiline=True, optional=True,
                        tooltip="text-to-image generators only: what to avoid"),
    ]


def legacy_preset(with_budget: bool) -> io.Combo.Input:
    options = [LEGACY_NONE, PRESET_GENERATOR] + (list(PRESET_NAMES) if with_budget else [])
    return io.Combo.Input("preset", options=options, default=LEGACY_NONE,
                          tooltip="fills the widgets below in the front end; only the widgets run")


def legacy_conditioning(generator, class_name, class_index, prompt, negative_prompt, width=0, height=0):
    if generator.condition_kind == "text":
        return text_conditioning(prompt, negative_prompt, width, height)
    if class_index is not None and int(class_index) >= 0:
        return class_conditioning(generator, str(int(class_index)))
    return class_conditioning(generator, class_name)


class LegacyShortcutMaskedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMShortcutMaskedSampler",
            display_name="Shortcut Masked Sampler (old)",
            category=bridge.CATEGORY,
            description="The first sampler node, with the class and prompt as widgets." + DEPRECATED,
            inputs=[
                MaskedGeneratorType.Input("generator", tooltip=GENERATOR_TOOLTIP),
                ShortcutType.Input("shortcut", optional=True, tooltip="from Load Shortcut Weights"),
                *condition_inputs(), legacy_preset(True), steps_input(), budget_input(8), cfg_input(),
                *temperature_inputs(),
                io.Combo.Input("full_step_rule", options=list(FULL_STEP_RULES) + [SEARCHED], default="official",
                               tooltip="which steps run the base model"),
                seed_input(), batch_input(), *size_inputs(optional=True),
                io.Combo.Input("method", options=list(METHODS), default="shortcut", optional=True,
                               tooltip=METHOD_TOOLTIP),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="the images"),
                     TokensType.Output(display_name="tokens", tooltip="the final token grid")],
            is_deprecated=True,
        )

    @classmethod
    def validate_inputs(cls, steps=None, budget=None):
        return budget_problem(steps, budget) or True

    @classmethod
    def execute(cls, generator, steps: int, budget: int, cfg: float, cfg_ramp: bool, sm_temp: float, r_temp: float,
                schedule: str, full_step_rule: str, seed: int, batch_size: int, class_name: str = CYCLE_CLASSES,
                class_index: int = -1, prompt: str = "", negative_prompt: str = "", shortcut=None,
                preset: str = LEGACY_NONE, width: int = 0, height: int = 0, method: str = "shortcut",
                **kwargs) -> io.NodeOutput:
        gen = generator_handle(generator).generator
        check_budget(steps, budget)
        conditioning = legacy_conditioning(gen, class_name, class_index, prompt, negative_prompt, width, height)
        settings = build_settings(gen, steps, budget, cfg, seed, full_step_rule, None, method, cfg_ramp, sm_temp,
                                  r_temp, schedule)
        shown = {"steps": steps, "budget": budget, "cfg": cfg, "cfg_ramp": cfg_ramp, "sm_temp": sm_temp,
                 "r_temp": r_temp, "schedule": schedule, "full_step_rule": full_step_rule}
        note = preset_note(CUSTOM if preset == LEGACY_NONE else preset, gen, shown)
        return run_sampler(generator, conditioning, shortcut, settings, batch_size, note)


class LegacyTrajectoryRecorder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMTrajectoryRecorder",
            display_name="Trajectory Recorder (old)",
            category=bridge.CATEGORY,
            description="The first recorder node, with the class and prompt as widgets." + DEPRECATED,
            inputs=[MaskedGeneratorType.Input("generator", tooltip=GENERATOR_TOOLTIP), *dataset_inputs(),
                    *condition_inputs(), legacy_preset(False), steps_input(), cfg_input(), *temperature_inputs(),
                    seed_input(), batch_input()],
            outputs=[io.String.Output(display_name="summary", tooltip="what the dataset folder holds")],
            is_output_node=True,
            is_deprecated=True,
        )

    @classmethod
    def fingerprint_inputs(cls, dataset_name="", **kwargs):
        return dataset_fingerprint(dataset_name)

    @classmethod
    def execute(cls, generator, dataset_name: str, batches: int, storage: str, steps: int, cfg: float,
                cfg_ramp: bool, sm_temp: float, r_temp: float, schedule: str, seed: int, batch_size: int,
                class_name: str = CYCLE_CLASSES, class_index: int = -1, prompt: str = "", negative_prompt: str = "",
                preset: str = LEGACY_NONE, **kwargs) -> io.NodeOutput:
        gen = generator_handle(generator).generator
        conditioning = legacy_conditioning(gen, class_name, class_index, prompt, negative_prompt)
        settings = build_settings(gen, steps, steps, cfg, seed, cfg_ramp=cfg_ramp, sm_temp=sm_temp, r_temp=r_temp,
                                  schedule=schedule)
        return record_dataset(generator, conditioning, dataset_name, batches, storage, settings, batch_size)
