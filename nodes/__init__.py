"""ComfyUI nodes for MIGM-Shortcut (V3 schema). Imported only by ComfyUI (through ``comfy_entrypoint`` in the
pack's ``__init__.py``) or by tests that provide ``comfy_api``; the maths lives in ``shortcut_core``."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import bridge
from .loaders import LoadMaskedGenerator, LoadShortcutWeights
from .sampling import ShortcutMaskedSampler, TrajectoryRecorderNode

NODES: list[type[io.ComfyNode]] = [LoadMaskedGenerator, LoadShortcutWeights, ShortcutMaskedSampler,
                                   TrajectoryRecorderNode]


class ShortcutExtension(ComfyExtension):
    async def on_load(self) -> None:
        bridge.register_model_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        bridge.register_model_folders()
        return list(NODES)


async def comfy_entrypoint() -> ShortcutExtension:
    return ShortcutExtension()
