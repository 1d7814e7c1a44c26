"""Load Masked Generator and Load Shortcut Weights: thin adapters over ``shortcut_core`` loading."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..shortcut_core import ShortcutError, load_generator, load_shortcut
from ..shortcut_core.dtypes import MODEL_DTYPES, resolve_dtype
from . import bridge

log = logging.getLogger(__name__)

MaskedGeneratorType = io.Custom("MASKED_GENERATOR")
ShortcutType = io.Custom("MIGM_SHORTCUT")

GENERATOR_TOOLTIP = "the masked generator from Load Masked Generator"


class LoadMaskedGenerator(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMLoadMaskedGenerator",
            display_name="Load Masked Generator",
            category=bridge.CATEGORY,
            description=("Loads a masked image generation model (MaskGIT, Lumina-DiMOO, aMUSEd). 'demo' is the "
                         "small embedded generator (10 shape classes, 64x64 px, runs on a CPU). Other models go in "
                         "ComfyUI/models/masked_generators. ComfyUI's model management moves the model to the GPU "
                         "when a sampler needs it and offloads it when memory is needed elsewhere."),
            inputs=[
                io.Combo.Input("generator_name", options=bridge.list_generators(), default=bridge.DEMO,
                               tooltip="'demo' (embedded), a generator file, or a model folder (ends with '/') "
                                       "from models/masked_generators. Only files that load as a generator are "
                                       "listed: a VQGAN or shortcut file is not."),
                io.Combo.Input("device", options=bridge.device_choices(), default="auto",
                               tooltip="auto = ComfyUI's device; the model is offloaded by ComfyUI when idle"),
                io.Combo.Input("dtype", options=list(MODEL_DTYPES), default="auto",
                               tooltip="weights precision; auto = bf16 on GPUs that support it, else fp32. "
                                       "The image decoder always stays fp32."),
            ],
            outputs=[MaskedGeneratorType.Output(
                display_name="generator",
                tooltip="the loaded generator: connect it to Load Shortcut Weights, Masked Class Label and the "
                        "sampler")],
        )

    @classmethod
    def fingerprint_inputs(cls, generator_name, device="auto", dtype="auto", **kwargs):
        try:
            return bridge.file_fingerprint(bridge.resolve_generator(generator_name)) + f"|{device}|{dtype}"
        except ShortcutError:
            return f"missing:{generator_name}"

    @classmethod
    def execute(cls, generator_name: str, device: str = "auto", dtype: str = "auto", **kwargs) -> io.NodeOutput:
        path = bridge.resolve_generator(generator_name)
        load_device, offload_device = bridge.devices(device)
        torch_dtype = resolve_dtype(dtype, load_device)
        dtype_name = {v: k for k, v in MODEL_DTYPES.items() if v is not None}[torch_dtype]
        generator = load_generator(str(path), device=offload_device, dtype=dtype_name)
        patcher = bridge.manage(generator, load_device, offload_device)
        log.info("MIGM-Shortcut: generator %r (%s, %s) loaded, managed by ComfyUI for %s", generator_name,
                 type(generator).__name__, dtype_name, load_device)
        size = generator.image_size
        return io.NodeOutput(bridge.GeneratorHandle(generator, patcher, generator_name, load_device, offload_device,
                                                    image_size=tuple(size) if size else None))


class LoadShortcutWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMLoadShortcutWeights",
            display_name="Load Shortcut Weights",
            category=bridge.CATEGORY,
            description=("Loads shortcut weights (MIGM-Shortcut) for the connected generator and checks that they "
                         "were fitted for it. 'demo' fits the embedded demo generator. Files go in "
                         "ComfyUI/models/shortcut."),
            inputs=[
                MaskedGeneratorType.Input("generator", tooltip="the generator these weights must fit"),
                io.Combo.Input("shortcut_name", options=bridge.list_shortcuts(), default=bridge.DEMO,
                               tooltip="'demo' (embedded, for the demo generator) or a file from models/shortcut"),
            ],
            outputs=[ShortcutType.Output(
                display_name="shortcut",
                tooltip="the shortcut network, checked against the generator: connect it to the sampler")],
        )

    @classmethod
    def fingerprint_inputs(cls, shortcut_name, **kwargs):
        try:
            return bridge.file_fingerprint(bridge.resolve_shortcut(shortcut_name))
        except ShortcutError:
            return f"missing:{shortcut_name}"

    @classmethod
    def execute(cls, generator, shortcut_name: str, **kwargs) -> io.NodeOutput:
        handle = generator_handle(generator)
        path = bridge.resolve_shortcut(shortcut_name)
        try:
            weights = load_shortcut(path, handle.generator)
        except ShortcutError as err:
            raise ShortcutError(f"shortcut weights {shortcut_name!r} do not fit generator "
                                f"{handle.name!r}: {err}") from err
        patcher = bridge.manage(weights.network, handle.load_device, handle.offload_device)
        info = {"arch": weights.config.arch, "parameters": sum(p.numel() for p in weights.network.parameters())}
        return io.NodeOutput(bridge.ShortcutHandle(weights, patcher, shortcut_name, handle.generator.identity, info))


def generator_handle(value) -> bridge.GeneratorHandle:
    if not isinstance(value, bridge.GeneratorHandle):
        raise ShortcutError(f"the 'generator' input must come from a Load Masked Generator node, got "
                            f"{type(value).__name__}")
    return value
