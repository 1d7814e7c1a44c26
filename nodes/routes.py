"""What the front end asks the server before anything runs: a generator's classes and own settings (read from
its configs and headers, no weights loaded), the presets' widget values, and the per-call cost ratio known for
a shortcut file. Served under ``/migm_shortcut/`` through ComfyUI's ``PromptServer`` routes."""
from __future__ import annotations

import logging
from ..shortcut_core import ShortcutError
from ..shortcut_core.presets import PRESETS
from . import bridge
from .sampling import PRESET_GENERATOR, preset_widget_values

log = logging.getLogger(__name__)

PREFIX = "/migm_shortcut"
_REGISTERED: list[bool] = []


def generator_info(name: str) -> dict:
    card = bridge.generator_card(name)
    return {"name": name, "condition_kind": card.condition_kind, "class_names": list(card.class_names),
            "defaults": preset_widget_values(PRESET_GENERATOR, card.default_settings)}


def preset_table() -> dict:
    return {name: {"values": preset_widget_values(name), "description": description, "family": family}
            for name, (_, family, description) in PRESETS.items()}


def shortcut_info(query) -> dict:
    def number(key):
        value = query.get(key)
        return int(value) if value not in (None, "") and str(value).isdigit() else None
    return bridge.shortcut_speed(query.get("name", ""), query.get("generator"), number("steps"), number("budget"))


def register_routes() -> None:
    """Add the routes to ComfyUI's server once (ComfyUI mounts them under / and /api)."""
    if _REGISTERED:
        return
    from server import PromptServer  # ComfyUI's

    routes = PromptServer.instance.routes

    def answer(make):
        async def handler(request):
            from aiohttp import web  # ComfyUI's web server
            try:
                return web.json_response(make(request.rel_url.query))
            except ShortcutError as err:
                return web.json_response({"error": str(err)}, status=404)
        return handler

    routes.get(f"{PREFIX}/generator")(answer(lambda q: generator_info(q.get("name", ""))))
    routes.get(f"{PREFIX}/presets")(answer(lambda q: preset_table()))
    routes.get(f"{PREFIX}/shortcut")(answer(shortcut_info))
    _REGISTERED.append(True)
