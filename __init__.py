"""ComfyUI entry point of the MIGM-Shortcut node pack (fast sampling for masked image generation models).

ComfyUI imports this file from ``custom_nodes/<this folder>``. Nothing ComfyUI-specific is imported here, so
the package also imports in plain Python (tests, the ``shortcut_core`` CLI): the V3 nodes load only when
ComfyUI calls ``comfy_entrypoint``. No ``NODE_CLASS_MAPPINGS`` on purpose: ComfyUI would then skip the entry point.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entrypoint
    return await entrypoint()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
