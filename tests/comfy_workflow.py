"""The bundled templates are UI-format workflows (what the front end saves); tests queue them through
``POST /prompt``, which takes the API format. This is the front end's "Export (API)" for the nodes the templates
use: links become ``[source id, output slot]``, widget values are matched to input names in the order the front
end creates widgets (required inputs, then optional ones, with the seed's "control after generate" value right
after the seed). Notes are dropped, as the front end drops them."""
from __future__ import annotations

VIRTUAL_NODES = {"MarkdownNote", "Note"}
CORE_WIDGETS = {"SaveImage": ["filename_prefix"], "PreviewImage": []}
CONTROL_AFTER_GENERATE = "control_after_generate"


def widget_order(inputs) -> list[str]:
    """Names of the saved ``widgets_values`` for a node whose widget inputs are ``(name, optional,
    control_after_generate)`` in schema order."""
    ordered = [i for i in inputs if not i[1]] + [i for i in inputs if i[1]]
    names = []
    for name, _, control in ordered:
        names.append(name)
        if control:
            names.append(CONTROL_AFTER_GENERATE)
    return names


def ui_to_api(workflow: dict, orders: dict[str, list[str]]) -> dict:
    """The API-format prompt of a UI workflow; ``orders`` gives each node type's widget names (``widget_order``)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) != 0:
            continue
        order = orders.get(node["type"], CORE_WIDGETS.get(node["type"]))
        if order is None:
            raise KeyError(f"no widget order for node type {node['type']!r}")
        values = dict(zip(order, node.get("widgets_values") or []))
        values.pop(CONTROL_AFTER_GENERATE, None)
        for item in node.get("inputs") or []:
            if item.get("link") is not None:
                _, source, slot, *_ = links[item["link"]]
                values[item["name"]] = [str(source), slot]
        entry = {"inputs": values, "class_type": node["type"]}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node["id"])] = entry
    return prompt
