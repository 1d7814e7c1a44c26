"""ComfyUI nodes for MIGM-Shortcut (V3 schema). Imported only by ComfyUI (through ``comfy_entrypoint`` in the
pack's ``__init__.py``) or by tests that provide ``comfy_api``; the maths lives in ``shortcut_core``."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import bridge, routes
from .conditioning import MaskedClassLabel, MaskedTextPrompt
from .legacy import LegacyShortcutMaskedSampler, LegacyTrajectoryRecorder
from .loaders import LoadMaskedGenerator, LoadShortcutWeights
from .recording import RecordTrajectories
from .sampling import ShortcutSampler, ShortcutSamplerAdvanced

NODES: list[type[io.ComfyNode]] = [LoadMaskedGenerator, LoadShortcutWeights, MaskedClassLabel, MaskedTextPrompt,
                                   ShortcutSampler, ShortcutSamplerAdvanced, RecordTrajectories,
                                   LegacyShortcutMaskedSampler, LegacyTrajectoryRecorder]


class ShortcutExtension(ComfyExtension):
    """Registers the model folders and the front end's routes when loaded (ComfyUI 0.3.64 calls only
    ``get_node_list``; later versions call ``on_load`` first: both do it once)."""

    async def on_load(self) -> None:
        self._setup()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        self._setup()
        return list(NODES)

    @staticmethod
    def _setup() -> None:
        bridge.register_model_folders()
        routes.register_routes()


async def comfy_entrypoint() -> ShortcutExtension:
    return ShortcutExtension()
