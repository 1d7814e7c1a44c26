"""Record Trajectories: the sampler with every step full, each step's features written to a dataset folder
(training data for new shortcut weights, fitted with ``train/fit_shortcut.py``)."""
from __future__ import annotations

import re
import time
from typing import Optional

from comfy_api.latest import io

from ..shortcut_core import ShortcutError
from ..shortcut_core.dtypes import STORAGE_DTYPES
from ..shortcut_core.recording import dataset_summary, record
from . import bridge
from .conditioning import ConditioningType
from .loaders import GENERATOR_TOOLTIP, MaskedGeneratorType, generator_handle
from .sampling import (StepReporter, batch_input, build_settings, cfg_input, check_conditioning, preset_input,
                       preset_note, seed_input, steps_input, temperature_inputs)

_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def dataset_inputs(default_name: str = "migm_trajectories") -> list:
    return [
        io.String.Input("dataset_name", default=default_name,
                        tooltip="folder name under ComfyUI/output (letters, digits, _ . -); recording again into "
                                "the same folder resumes it"),
        io.Int.Input("batches", default=2, min=1, max=100_000,
                     tooltip="how many batches the dataset should hold in total; batch i uses seed + i"),
        io.Combo.Input("storage", options=list(STORAGE_DTYPES), default="fp16",
                       tooltip="precision of the stored features (fp16 halves the disk space)"),
    ]


class RecordTrajectories(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMRecordTrajectories",
            display_name="Record Trajectories",
            category=bridge.CATEGORY,
            description=("Runs the sampler with every step on the base model and records each step's features "
                         "into a dataset folder under ComfyUI's output directory: the training data for new "
                         "shortcut weights (fit them with train/fit_shortcut.py). Queueing again with more "
                         "batches resumes: batches already recorded are kept."),
            inputs=[MaskedGeneratorType.Input("generator", tooltip=GENERATOR_TOOLTIP),
                    ConditioningType.Input("conditioning", tooltip="what to draw, from Masked Class Label or Masked "
                                                                   "Text Prompt (recorded at the generator's own "
                                                                   "size)"),
                    *dataset_inputs(), preset_input(with_budget=False), seed_input(), steps_input(), cfg_input(),
                    *temperature_inputs(), batch_input()],
            outputs=[io.String.Output(display_name="summary",
                                      tooltip="what the dataset folder holds: trajectories, bytes, shards")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, dataset_name="", **kwargs):
        return dataset_fingerprint(dataset_name)

    @classmethod
    def execute(cls, generator, conditioning, dataset_name: str, batches: int, storage: str, preset: str, seed: int,
                steps: int, cfg: float, cfg_ramp: bool, sm_temp: float, r_temp: float, schedule: str,
                batch_size: int, **kwargs) -> io.NodeOutput:
        gen = generator_handle(generator).generator
        settings = build_settings(gen, steps, steps, cfg, seed, cfg_ramp=cfg_ramp, sm_temp=sm_temp, r_temp=r_temp,
                                  schedule=schedule)
        shown = {"steps": steps, "cfg": cfg, "cfg_ramp": cfg_ramp, "sm_temp": sm_temp, "r_temp": r_temp,
                 "schedule": schedule}
        note = preset_note(preset, gen, shown)
        return record_dataset(generator, conditioning, dataset_name, batches, storage, settings, batch_size, note)


def dataset_fingerprint(dataset_name) -> str:
    """Re-run (instead of reusing the cached report) when the folder changed on disk."""
    try:
        return f"{dataset_name}|{dataset_summary(bridge.output_directory() / str(dataset_name).strip())}"
    except Exception:  # noqa: BLE001 - a fingerprint must never fail the prompt
        return str(dataset_name)


def record_dataset(generator, conditioning, dataset_name: str, batches: int, storage: str, settings,
                   batch_size: int, note: Optional[str] = None) -> io.NodeOutput:
    handle = generator_handle(generator)
    gen = handle.generator
    conditioning = check_conditioning(conditioning)
    if conditioning.width or conditioning.height:
        raise ShortcutError("trajectories are recorded at the generator's own size (the shortcut is fitted on that "
                            "grid): set width and height to 0 on the Masked Text Prompt node")
    bridge.use_image_size(handle)
    name = (dataset_name or "").strip()
    if not _DATASET_NAME.match(name) or ".." in name:
        raise ShortcutError(f"dataset_name {dataset_name!r} must be a plain folder name (letters, digits, '_', '.', "
                            "'-'; no slashes): it is created under ComfyUI's output directory")
    if storage not in STORAGE_DTYPES:
        raise ShortcutError(f"storage must be one of {', '.join(STORAGE_DTYPES)}, got {storage!r}")
    folder = bridge.output_directory() / name
    settings.budget = None  # every step full
    batch = int(batch_size)
    conditions = [conditioning.condition(gen, batch, offset=i * batch) for i in range(int(batches))]
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
    if note:
        text += f"; note: {note}"
    info = {"folder": str(folder), "name": folder.name, "added": added, **summary}
    return io.NodeOutput(text, ui={"text": [text], "dataset": [info]})

