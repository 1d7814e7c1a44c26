"""What to draw, as its own nodes (the way CLIPTextEncode feeds KSampler): a class label for class-conditional
generators, a prompt and a negative prompt for text-to-image ones. Both give a MIGM_CONDITIONING."""
from __future__ import annotations

from comfy_api.latest import io

from ..shortcut_core import DEMO_GENERATOR, ShortcutError
from ..shortcut_core.validation import parse_class_labels
from ..shortcut_core.registry import describe_generator
from . import bridge
from .loaders import GENERATOR_TOOLTIP, MaskedGeneratorType, generator_handle

ConditioningType = io.Custom("MIGM_CONDITIONING")
CYCLE_CLASSES = "(cycle through all classes)"
CONDITIONING_TOOLTIP = "what to draw: connect it to the sampler's 'conditioning' input"


def default_class_options() -> list[str]:
    """The class combo's options before the front end asks the connected generator for its own (the demo's)."""
    card = describe_generator(DEMO_GENERATOR) if DEMO_GENERATOR.is_file() else None
    return [CYCLE_CLASSES] + (list(card.class_names) if card else [])


class MaskedClassLabel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMClassLabel",
            display_name="Masked Class Label",
            category=bridge.CATEGORY,
            description=("The class to draw, for class-conditional generators (MaskGIT, the demo). The list shows "
                         "the classes of the connected generator; the cycle entry gives image i class i."),
            inputs=[
                MaskedGeneratorType.Input("generator", tooltip=GENERATOR_TOOLTIP + "; its classes fill the list"),
                io.Combo.Input("class_name", options=default_class_options(), default=CYCLE_CLASSES,
                               tooltip="a class of the connected generator, or the cycle entry (image i draws "
                                       "class i of the generator)"),
            ],
            outputs=[ConditioningType.Output(display_name="conditioning", tooltip=CONDITIONING_TOOLTIP)],
        )

    @classmethod
    def execute(cls, generator, class_name: str, **kwargs) -> io.NodeOutput:
        return io.NodeOutput(class_conditioning(generator_handle(generator).generator, class_name))


def class_conditioning(generator, class_name: str) -> bridge.MaskedConditioning:
    """Class conditioning for one class name (or a class number) of ``generator``, or all classes in turn."""
    if generator.condition_kind != "class":
        raise ShortcutError(f"generator {generator.identity!r} is text-to-image: use a Masked Text Prompt node "
                            "instead of Masked Class Label")
    if class_name == CYCLE_CLASSES:
        return bridge.MaskedConditioning("class", generator_identity=generator.identity)
    try:
        label = parse_class_labels(str(class_name), generator.class_names, generator.num_classes, what="class_name")[0]
    except ShortcutError as err:
        shown = ", ".join(map(str, list(generator.class_names)[:30]))
        raise ShortcutError(f"class {class_name!r} is not a class of generator {generator.identity!r} ({err}); its classes "
                            f"are: {shown}{' ...' if generator.num_classes > 30 else ''}. Pick one of these or "
                            f"'{CYCLE_CLASSES}'") from err
    names = list(generator.class_names)
    condition = bridge.MaskedConditioning("class", labels=(label,), generator_identity=generator.identity,
                                          label_names=(names[label] if 0 <= label < len(names) else str(label),))
    condition.condition(generator, 1)  # refuses a number out of range now, not when sampling
    return condition


class MaskedTextPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MIGMTextPrompt",
            display_name="Masked Text Prompt",
            category=bridge.CATEGORY,
            description=("The prompt, the negative prompt and the image size, for text-to-image generators "
                         "(Lumina-DiMOO, aMUSEd)."),
            inputs=[
                io.String.Input("prompt", default="", multiline=True, tooltip="what to draw"),
                io.String.Input("negative_prompt", default="", multiline=True,
                                tooltip="what to avoid: the unconditional branch of classifier-free guidance "
                                        "(empty = the generator's own unconditional prompt)"),
                *size_inputs(),
            ],
            outputs=[ConditioningType.Output(display_name="conditioning", tooltip=CONDITIONING_TOOLTIP)],
        )

    @classmethod
    def execute(cls, prompt: str, negative_prompt: str = "", width: int = 0, height: int = 0,
                **kwargs) -> io.NodeOutput:
        return io.NodeOutput(text_conditioning(prompt, negative_prompt, width, height))


def size_inputs(optional: bool = False) -> list:
    return [io.Int.Input(name, default=0, min=0, max=8192, step=16, optional=optional,
                         tooltip=f"image {name} in px; 0 = the generator's own size (Lumina-DiMOO 1024, aMUSEd "
                                 "256 or 512). Lumina-DiMOO and aMUSEd-256 take multiples of 16, aMUSEd-512 of 32.")
            for name in ("width", "height")]


def text_conditioning(prompt: str, negative_prompt: str = "", width: int = 0,
                      height: int = 0) -> bridge.MaskedConditioning:
    if not (prompt or "").strip():
        raise ShortcutError("the prompt is empty: write what to draw in the Masked Text Prompt node")
    for name, value in (("width", width), ("height", height)):
        if int(value or 0) < 0:
            raise ShortcutError(f"{name} must be 0 (the generator's own size) or a size in px, got {value}")
    return bridge.MaskedConditioning("text", prompt=prompt, negative_prompt=negative_prompt or "",
                                     width=int(width or 0), height=int(height or 0))
