"""The ComfyUI nodes without ComfyUI: a small stand-in for the few ComfyUI modules they touch.

The stand-in (``folder_paths``, ``comfy.utils.ProgressBar``, ``comfy.model_management``, ``comfy.model_patcher``
and, when the real ``comfy_api`` is not importable, ``comfy_api.latest`` io) is put into ``sys.modules`` by
fixtures only, and mirrors the behaviour the nodes rely on as ComfyUI 0.3.64 implements it: folder keys map to
(paths, extensions), ``get_full_path_or_raise`` raises FileNotFoundError, the progress hook is None outside the
server, ``throw_exception_if_processing_interrupted`` raises once and clears the flag, and
``load_models_gpu`` moves each patcher's module to its load device.

The pack is imported the way ComfyUI imports it: its folder's ``__init__.py`` as a package, so ``nodes``
reaches the engine through the relative import ``..shortcut_core`` (a copy separate from top-level
``shortcut_core``; these tests only use the pack's own).
"""
from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PACK = "migm_shortcut_pack_under_test"
NEW_NODES = {"MIGMLoadMaskedGenerator", "MIGMLoadShortcutWeights", "MIGMClassLabel", "MIGMTextPrompt",
             "MIGMShortcutSampler", "MIGMShortcutSamplerAdvanced", "MIGMRecordTrajectories"}
LEGACY_NODES = {"MIGMShortcutMaskedSampler", "MIGMTrajectoryRecorder"}


# ============================================================================ stand-in for comfy_api.latest

def _make_io_standin() -> tuple[types.ModuleType, types.ModuleType]:
    """``comfy_api`` and ``comfy_api.latest`` with the part of the V3 API the nodes use (same names/signatures)."""
    io = types.ModuleType("comfy_api.latest.io")

    class _Input:
        widget = True

        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                     **extra):
            self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
            self.default = default
            self.extra = extra

    class _Output:
        def __init__(self, id=None, display_name=None, tooltip=None, is_output_list=False, **extra):
            self.id, self.display_name, self.tooltip = id, display_name, tooltip

    def _type(io_type: str, widget: bool, input_base=_Input):
        input_cls = type("Input", (input_base,), {"widget": widget, "io_type": io_type})
        output_cls = type("Output", (_Output,), {"io_type": io_type})
        return type(io_type, (), {"io_type": io_type, "Input": input_cls, "Output": output_cls})

    class _ComboInput(_Input):
        def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None,
                     default=None, **extra):
            super().__init__(id, display_name, optional, tooltip, lazy, default, **extra)
            self.options = list(options or [])

    io.Int = _type("INT", True)
    io.Float = _type("FLOAT", True)
    io.Boolean = _type("BOOLEAN", True)
    io.String = _type("STRING", True)
    io.Combo = _type("COMBO", True, _ComboInput)
    io.Image = _type("IMAGE", False)
    io.Custom = lambda name: _type(name, False)

    @dataclasses.dataclass
    class Schema:
        node_id: str
        display_name: str = None
        category: str = "sd"
        inputs: list = None
        outputs: list = None
        hidden: list = None
        description: str = ""
        is_output_node: bool = False
        is_deprecated: bool = False
        is_experimental: bool = False

    class NodeOutput:
        def __init__(self, *args, ui=None, expand=None, block_execution=None):
            self.args, self.ui = args, ui

        @property
        def result(self):
            return self.args if self.args else None

        def __getitem__(self, index):
            return self.args[index]

    class ComfyNode:
        @classmethod
        def define_schema(cls):
            raise NotImplementedError

        @classmethod
        def execute(cls, **kwargs):
            raise NotImplementedError

        @classmethod
        def validate_inputs(cls, **kwargs):
            raise NotImplementedError

        @classmethod
        def fingerprint_inputs(cls, **kwargs):
            raise NotImplementedError

    io.Schema, io.NodeOutput, io.ComfyNode = Schema, NodeOutput, ComfyNode

    latest = types.ModuleType("comfy_api.latest")

    class ComfyExtension:
        async def on_load(self):
            pass

        async def get_node_list(self):
            raise NotImplementedError

    latest.ComfyExtension, latest.io = ComfyExtension, io
    package = types.ModuleType("comfy_api")
    package.__path__ = []
    package.latest = latest
    return package, latest


def _real_comfy_api():
    try:
        return importlib.import_module("comfy_api.latest")
    except Exception:  # noqa: BLE001 - absent, or present but not importable outside ComfyUI
        return None


# ============================================================================ stand-in for folder_paths / comfy.*

class InterruptProcessingException(Exception):
    pass


class ComfyStandin:
    """folder_paths + comfy.utils + comfy.model_management + comfy.model_patcher for one test."""

    def __init__(self, base: Path):
        self.base = base
        self.models_dir = base / "models"
        self.output_dir = base / "output"
        self.output_dir.mkdir(parents=True)
        self.interrupted = False
        self.loaded: list = []
        self.progress: list = []  # (value, total, preview) per update
        self.hook = None  # set to a callable to act like the server's progress hook
        self.routes: dict = {}  # path -> handler the pack added to ComfyUI's server

    def modules(self) -> dict[str, types.ModuleType]:
        fp = types.ModuleType("folder_paths")
        fp.models_dir = str(self.models_dir)
        fp.folder_names_and_paths = {"checkpoints": ([str(self.models_dir / "checkpoints")], {".safetensors"})}

        def get_folder_paths(key):
            return list(fp.folder_names_and_paths[key][0])

        def get_filename_list(key):
            paths, exts = fp.folder_names_and_paths[key]
            found = set()
            for base in paths:
                for dirpath, _, files in os.walk(base):
                    for name in files:
                        rel = os.path.relpath(os.path.join(dirpath, name), base).replace(os.sep, "/")
                        if not exts or os.path.splitext(name)[1].lower() in exts:
                            found.add(rel)
            return sorted(found)

        def get_full_path(key, name):
            if key not in fp.folder_names_and_paths:
                return None
            name = os.path.relpath(os.path.join("/", name), "/")
            for base in fp.folder_names_and_paths[key][0]:
                if os.path.isfile(os.path.join(base, name)):
                    return os.path.join(base, name)
            return None

        def get_full_path_or_raise(key, name):
            full = get_full_path(key, name)
            if full is None:
                raise FileNotFoundError(f"Model in folder '{key}' with filename '{name}' not found.")
            return full

        fp.get_folder_paths, fp.get_filename_list = get_folder_paths, get_filename_list
        fp.get_full_path, fp.get_full_path_or_raise = get_full_path, get_full_path_or_raise
        fp.get_output_directory = lambda: str(self.output_dir)

        standin = self
        mm = types.ModuleType("comfy.model_management")
        mm.InterruptProcessingException = InterruptProcessingException
        mm.get_torch_device = lambda: torch.device("cpu")
        mm.unet_offload_device = lambda: torch.device("cpu")

        def interrupt_current_processing(value=True):
            standin.interrupted = value

        def throw_exception_if_processing_interrupted():
            if standin.interrupted:
                standin.interrupted = False
                raise InterruptProcessingException()

        def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                            force_full_load=False):
            for patcher in models:
                patcher.model.to(patcher.load_device)
                standin.loaded.append((patcher, force_full_load))

        mm.interrupt_current_processing = interrupt_current_processing
        mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
        mm.load_models_gpu = load_models_gpu

        mp = types.ModuleType("comfy.model_patcher")

        class ModelPatcher:
            def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
                self.model, self.load_device, self.offload_device = model, load_device, offload_device
                if not hasattr(model, "device"):
                    model.device = offload_device
                model.model_loaded_weight_memory = 0  # ComfyUI sets attributes like these on the model

        mp.ModelPatcher = ModelPatcher

        utils = types.ModuleType("comfy.utils")

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total, self.current, self.hook = total, 0, standin.hook

            def update_absolute(self, value, total=None, preview=None):
                if total is not None:
                    self.total = total
                self.current = min(value, self.total)
                standin.progress.append((self.current, self.total, preview))
                if self.hook is not None:
                    self.hook(self.current, self.total, preview)

            def update(self, value):
                self.update_absolute(self.current + value)

        utils.ProgressBar = ProgressBar

        server = types.ModuleType("server")

        class Routes:  # aiohttp's RouteTableDef, as far as the pack uses it
            def get(self, path):
                def add(handler):
                    standin.routes[path] = handler
                    return handler
                return add

        server.PromptServer = types.SimpleNamespace(instance=types.SimpleNamespace(routes=Routes()))
        comfy = types.ModuleType("comfy")
        comfy.__path__ = []
        comfy.utils, comfy.model_management, comfy.model_patcher = utils, mm, mp
        return {"folder_paths": fp, "comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm,
                "comfy.model_patcher": mp, "server": server}


# ============================================================================ fixtures

@pytest.fixture(scope="session")
def pack():
    """The pack imported as ComfyUI does (package from its folder), with comfy_api real or stood in."""
    with pytest.MonkeyPatch.context() as mp:
        if _real_comfy_api() is None:
            package, latest = _make_io_standin()
            mp.setitem(sys.modules, "comfy_api", package)
            mp.setitem(sys.modules, "comfy_api.latest", latest)
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        mp.setitem(sys.modules, PACK, module)
        spec.loader.exec_module(module)
        nodes = importlib.import_module(f"{PACK}.nodes")
        yield types.SimpleNamespace(root=module, nodes=nodes, core=importlib.import_module(f"{PACK}.shortcut_core"),
                                    bridge=nodes.bridge, sampling=nodes.sampling, loaders=nodes.loaders,
                                    conditioning=nodes.conditioning, recording=nodes.recording, legacy=nodes.legacy,
                                    routes=nodes.routes)
        for name in [n for n in sys.modules if n == PACK or n.startswith(PACK + ".")]:
            sys.modules.pop(name, None)


def _tiny_generator(core, identity="tiny-nodes", seed=0):
    from importlib import import_module
    maskgit = import_module(core.__name__ + ".backends.maskgit")
    vqgan = import_module(core.__name__ + ".backends.vqgan")
    torch.manual_seed(seed)
    transformer = maskgit.MaskTransformer(maskgit.MaskGITConfig(grid=8, hidden_dim=64, codebook_size=32, depth=2,
                                                                heads=4, mlp_dim=128, nclass=10))
    vq = vqgan.VQModel(vqgan.VQConfig(n_embed=32, embed_dim=8, z_channels=32, resolution=32, ch=32, ch_mult=[1, 2, 2],
                                      num_res_blocks=1, attn_resolutions=[]), with_encoder=False)
    return maskgit.MaskGITGenerator(transformer, vq, identity=identity,
                                    class_names=[f"shape{i}" for i in range(10)],
                                    default_settings={"steps": 8, "cfg_scale": 2.0}).eval()


@pytest.fixture(scope="session")
def weights(pack, tmp_path_factory):
    """Tiny generator + shortcut files (random weights): a models tree to copy into each test's stand-in."""
    core = pack.core
    base = tmp_path_factory.mktemp("weights")
    gen = _tiny_generator(core)
    core.save_generator(base / "tiny.safetensors", gen)
    torch.manual_seed(1)
    net = core.ShortcutNetwork(core.ShortcutConfig(feature_dim=64, num_heads=4))
    core.save_shortcut(base / "tiny_shortcut.safetensors", core.ShortcutWeights(net, gen.describe()))
    core.save_shortcut(base / "wrong_size.safetensors", core.ShortcutWeights(
        core.ShortcutNetwork(core.ShortcutConfig(feature_dim=32, num_heads=4)), {"generator": "x"}))
    core.save_shortcut(base / "other_generator.safetensors",
                       core.ShortcutWeights(net, {"generator": "some-other-generator"}))
    # weights as train/search_schedule.py and the fitter leave them: a step-error table for 8 steps (errors grow
    # with the distance from the last full step, most early on) and the per-call ratio measured when fitted
    steps = torch.arange(8, dtype=torch.float32)
    table = ((steps[None, :] - steps[:, None]).clamp(min=0) / (1 + steps[:, None])).contiguous()
    core.save_shortcut(base / "tiny_searched.safetensors",
                       core.ShortcutWeights(net, gen.describe(), step_errors={8: table}, per_call_ratio=0.0625))
    return base


@pytest.fixture
def comfy(pack, weights, tmp_path, monkeypatch):
    standin = ComfyStandin(tmp_path)
    for name, module in standin.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(pack.bridge, "_MEASURED", {})  # what runs measured belongs to one server session
    gens = standin.models_dir / "masked_generators"
    shorts = standin.models_dir / "shortcut"
    gens.mkdir(parents=True)
    shorts.mkdir(parents=True)
    (gens / "tiny.safetensors").write_bytes((weights / "tiny.safetensors").read_bytes())
    (gens / "README.txt").write_text("put generators here")
    for name in ("tiny_shortcut", "wrong_size", "other_generator", "tiny_searched"):
        (shorts / f"{name}.safetensors").write_bytes((weights / f"{name}.safetensors").read_bytes())
    return standin


def run(node_cls, **inputs):
    """Call a node the way ComfyUI's executor does: validate_inputs (if the node has one), then execute."""
    own_validate = node_cls.__dict__.get("validate_inputs")
    if own_validate is not None:
        params = inspect.signature(node_cls.validate_inputs).parameters
        verdict = node_cls.validate_inputs(**{k: v for k, v in inputs.items() if k in params})
        if verdict is not True:
            raise AssertionError(f"validation failed: {verdict}")
    return node_cls.execute(**inputs)


def widget_defaults(node_cls) -> dict:
    schema = node_cls.define_schema()
    return {i.id: i.default for i in schema.inputs if getattr(i, "default", None) is not None}


def load_tiny(pack, with_shortcut="tiny_shortcut.safetensors"):
    gen = run(pack.loaders.LoadMaskedGenerator, generator_name="tiny.safetensors", device="auto", dtype="fp32")[0]
    sc = None
    if with_shortcut:
        sc = run(pack.loaders.LoadShortcutWeights, generator=gen, shortcut_name=with_shortcut)[0]
    return gen, sc


def label(pack, gen, class_name="shape3"):
    return run(pack.conditioning.MaskedClassLabel, generator=gen, class_name=class_name)[0]


def simple_inputs(pack, gen, sc=None, class_name="shape3", **overrides):
    inputs = widget_defaults(pack.sampling.ShortcutSampler)
    inputs.update(generator=gen, conditioning=label(pack, gen, class_name), steps=8, budget=4, batch_size=2, seed=3)
    if sc is not None:
        inputs["shortcut"] = sc
    inputs.update(overrides)
    return inputs


def advanced_inputs(pack, gen, sc=None, class_name="shape3", **overrides):
    inputs = widget_defaults(pack.sampling.ShortcutSamplerAdvanced)
    inputs.update(generator=gen, conditioning=label(pack, gen, class_name), steps=8, budget=4, batch_size=2, seed=3,
                  cfg=2.0, r_temp=3.0)
    if sc is not None:
        inputs["shortcut"] = sc
    inputs.update(overrides)
    return inputs


def legacy_inputs(pack, **overrides):
    inputs = widget_defaults(pack.legacy.LegacyShortcutMaskedSampler)
    inputs.update(steps=8, budget=4, batch_size=2, seed=3, class_name="shape3")
    inputs.update(overrides)
    return inputs


def reference_codes(pack, gen, labels, **fields):
    """What the core sampler draws for the tiny generator with its own settings and ``fields`` on top."""
    core = pack.core
    settings = core.with_overrides(core.SamplerSettings.for_generator(gen.generator), **fields)
    return core.sample(gen.generator, core.Condition(labels=labels), settings).codes


class FakeTextGenerator:
    """Only what conditioning needs from a text-to-image generator (no weights)."""

    condition_kind = "text"
    identity = "fake-t2i"

    def check_condition(self, condition, batch_size):
        assert len(condition.prompts) == batch_size


# ============================================================================ tests

def test_pack_root_imports_without_comfyui_or_torch():
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('p', {str(ROOT / '__init__.py')!r}, "
            f"submodule_search_locations=[{str(ROOT)!r}])\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['p'] = m; spec.loader.exec_module(m)\n"
            "assert callable(m.comfy_entrypoint) and m.WEB_DIRECTORY == './web'\n"
            "assert not hasattr(m, 'NODE_CLASS_MAPPINGS')\n"
            "bad = [n for n in sys.modules if n.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', 'torch')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    web = ROOT / "web"
    assert (web / "schedule.js").is_file() and (web / "shortcut_strip.js").is_file()


def test_entrypoint_gives_native_nodes_with_tooltips_everywhere_and_keeps_the_old_ones(pack, comfy):
    extension = asyncio.run(pack.root.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    schemas = {n.define_schema().node_id: (n, n.define_schema()) for n in nodes}
    assert set(schemas) == NEW_NODES | LEGACY_NODES
    for node_id, (cls, schema) in schemas.items():
        assert schema.category == "sampling/shortcut"
        assert schema.display_name and schema.description
        assert schema.is_deprecated == (node_id in LEGACY_NODES), node_id
        ids = [i.id for i in schema.inputs]
        assert len(ids) == len(set(ids)), node_id
        params = inspect.signature(cls.execute).parameters
        for i in schema.inputs:
            assert i.tooltip, f"{node_id}.{i.id} has no tooltip"
            assert i.id in params, f"{node_id}.execute does not take input {i.id!r}"
            if i.optional:
                assert params[i.id].default is not inspect.Parameter.empty, f"optional {i.id!r} needs a default"
        for o in schema.outputs:
            assert o.tooltip, f"{node_id} output {o.display_name} has no tooltip"
    inputs = {node_id: [i.id for i in schema.inputs] for node_id, (_, schema) in schemas.items()}
    # the simple sampler: what every generator uses and most runs change, no per-model widgets
    assert inputs["MIGMShortcutSampler"] == ["generator", "conditioning", "shortcut", "seed", "steps", "budget", "cfg",
                                             "batch_size"]
    assert {"sm_temp", "r_temp", "schedule", "cfg_ramp", "full_step_rule", "full_steps", "method", "preset"} <= \
        set(inputs["MIGMShortcutSamplerAdvanced"])
    per_model = {"class_name", "class_index", "prompt", "negative_prompt", "width", "height"}
    for node_id in ("MIGMShortcutSampler", "MIGMShortcutSamplerAdvanced", "MIGMRecordTrajectories"):
        assert not per_model & set(inputs[node_id]), node_id
    assert inputs["MIGMClassLabel"] == ["generator", "class_name"]
    assert inputs["MIGMTextPrompt"] == ["prompt", "negative_prompt", "width", "height"]
    assert [o.io_type for o in schemas["MIGMShortcutSamplerAdvanced"][1].outputs] == ["IMAGE", "MIGM_TOKENS"]
    assert [o.io_type for o in schemas["MIGMShortcutSampler"][1].outputs] == ["IMAGE"]
    assert schemas["MIGMRecordTrajectories"][1].is_output_node
    assert set(comfy.routes) >= {"/migm_shortcut/generator", "/migm_shortcut/presets", "/migm_shortcut/shortcut"} \
        or pack.routes._REGISTERED  # registered once per process: by this test or an earlier one


def test_model_folders_registered_with_filters_and_existing_paths_kept(pack, comfy):
    fp = sys.modules["folder_paths"]
    extra = str(comfy.base / "extra_generators")
    fp.folder_names_and_paths["masked_generators"] = ([extra], set())  # as add_model_folder_path leaves it
    pack.bridge.register_model_folders()
    paths, exts = fp.folder_names_and_paths["masked_generators"]
    assert paths == [extra, str(comfy.models_dir / "masked_generators")]
    assert {".safetensors", ".pth", ".json"} <= exts and ".txt" not in exts
    assert fp.folder_names_and_paths["shortcut"][0] == [str(comfy.models_dir / "shortcut")]
    listed = pack.bridge.list_generators()
    assert listed[0] == "demo" and "tiny.safetensors" in listed
    assert "README.txt" not in listed


def test_generator_list_offers_only_what_loads_as_a_generator(pack, comfy):
    """Issue 18: VQ decoders and sub-files such as pretrained_maskgit/VQGAN/last.ckpt were offered and failed."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_maskgit_official import write_official_files
    gens = comfy.models_dir / "masked_generators"
    write_official_files(gens, grid=16)
    (gens / "MaskGIT-Shortcut" / "maskgit-shortcut.pth").rename(gens / "maskgit-shortcut.pth")
    (gens / "stray_shortcut.safetensors").write_bytes(
        (comfy.models_dir / "shortcut" / "tiny_shortcut.safetensors").read_bytes())
    llada = gens / "some-llada-model"
    llada.mkdir()
    (llada / "config.json").write_text(json.dumps({"model_type": "llada"}))
    (llada / "model.safetensors").write_bytes(b"")
    unknown = gens / "not-a-model"
    unknown.mkdir()
    (unknown / "config.json").write_text("{}")
    (unknown / "weights.safetensors").write_bytes(b"")
    listed = pack.bridge.list_generators()
    assert listed == ["demo", "pretrained_maskgit/MaskGIT/MaskGIT_ImageNet_512.pth", "tiny.safetensors",
                      "some-llada-model/"], listed
    card = pack.bridge.generator_card("pretrained_maskgit/MaskGIT/MaskGIT_ImageNet_512.pth")
    assert card.condition_kind == "class" and card.class_names[281] == "tabby" and len(card.class_names) == 1000
    assert card.default_settings["steps"] == 8  # 16 x 16 tokens: the 256 px reference settings
    assert pack.bridge.generator_card("some-llada-model/").condition_kind == "text"
    assert pack.bridge.resolve_generator("some-llada-model/") == llada
    outside = comfy.base / "secret.safetensors"
    outside.write_bytes((gens / "tiny.safetensors").read_bytes())
    for bad in ("../secret.safetensors", str(outside), "nope.safetensors", "../output/", "/etc/",
                "pretrained_maskgit/VQGAN/last.ckpt", "not-a-model/", "stray_shortcut.safetensors"):
        with pytest.raises(pack.core.ShortcutError, match="masked_generators"):
            pack.bridge.resolve_generator(bad)
    with pytest.raises(pack.core.ShortcutError, match="not in the model folder 'shortcut'"):
        pack.bridge.resolve_shortcut("../masked_generators/tiny.safetensors")


def test_missing_generator_file_is_an_actionable_error(pack, comfy):
    with pytest.raises(pack.core.ShortcutError) as err:
        run(pack.loaders.LoadMaskedGenerator, generator_name="gone.safetensors", device="auto", dtype="auto")
    message = str(err.value)
    assert "'gone.safetensors'" in message and "masked_generators" in message and "Refresh" in message


def test_class_label_node_and_the_route_that_fills_its_list_follow_the_generator(pack, comfy):
    gen, _ = load_tiny(pack, with_shortcut=None)
    info = pack.routes.generator_info("tiny.safetensors")
    assert info["condition_kind"] == "class" and info["class_names"] == [f"shape{i}" for i in range(10)]
    assert info["defaults"] == {"steps": 8, "cfg": 2.0}  # the generator's own settings, by widget name
    assert pack.routes.generator_info("demo")["class_names"][:2] == ["circle", "square"] or \
        not pack.core.DEMO_GENERATOR.is_file()
    with pytest.raises(pack.core.ShortcutError, match="not in the model folder"):
        pack.routes.generator_info("gone.safetensors")
    g = gen.generator
    cycle = label(pack, gen, pack.conditioning.CYCLE_CLASSES)
    assert cycle.condition(g, 3).labels == [0, 1, 2] and cycle.condition(g, 2, offset=9).labels == [9, 0]
    assert label(pack, gen, "SHAPE4").condition(g, 2).labels == [4, 4]
    assert label(pack, gen, "7").condition(g, 1).labels == [7]  # a class number, for generators without names
    with pytest.raises(pack.core.ShortcutError, match="not a class of generator 'tiny-nodes'.*shape0"):
        label(pack, gen, "tench")
    with pytest.raises(pack.core.ShortcutError, match="out of range"):
        label(pack, gen, "10")


def test_text_prompt_node_and_conditioning_that_does_not_fit_the_generator(pack, comfy):
    gen, _ = load_tiny(pack, with_shortcut=None)
    prompt = pack.conditioning.MaskedTextPrompt
    cond = run(prompt, prompt="a red fox", negative_prompt="blurry", width=512, height=256)[0]
    text = FakeTextGenerator()
    made = cond.condition(text, 2)
    assert made.prompts == ["a red fox"] * 2 and made.negative_prompts == ["blurry"] * 2 and made.labels is None
    assert (cond.width, cond.height) == (512, 256)
    assert run(prompt, prompt="fox", negative_prompt=" ", width=0, height=0)[0].condition(text, 1).negative_prompts is None
    with pytest.raises(pack.core.ShortcutError, match="the prompt is empty"):
        run(prompt, prompt="  ", negative_prompt="", width=0, height=0)
    with pytest.raises(pack.core.ShortcutError, match="class-conditional.*connect a Masked Class Label"):
        run(pack.sampling.ShortcutSampler, **{**simple_inputs(pack, gen), "conditioning": cond})
    with pytest.raises(pack.core.ShortcutError, match="text-to-image.*connect a Masked Text Prompt"):
        label(pack, gen).condition(text, 1)
    with pytest.raises(pack.core.ShortcutError, match="text-to-image: use a Masked Text Prompt"):
        pack.conditioning.class_conditioning(text, "shape1")


def test_simple_sampler_uses_the_generators_own_settings_and_hands_models_to_comfy(pack, comfy):
    gen, sc = load_tiny(pack)
    assert comfy.loaded == []  # nothing moved before a sampler needs it
    out = run(pack.sampling.ShortcutSampler, **simple_inputs(pack, gen, sc))
    (images,) = out.args
    assert images.shape == (2, 32, 32, 3) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0 and float(images.std()) > 0.01
    stats = out.ui["shortcut_stats"][0]
    assert (stats["base_calls"], stats["shortcut_calls"], stats["full_steps"]) == (4, 4, [0, 2, 4, 6])
    # temperatures, schedule and ramp are the generator's (tiny: the core defaults), the widgets the rest
    reference = pack.core.sample(gen.generator, pack.core.Condition(labels=[3, 3]), pack.core.with_overrides(
        pack.core.SamplerSettings.for_generator(gen.generator), steps=8, budget=4, cfg_scale=2.0, seed=3),
        shortcut=sc.weights).codes
    assert torch.equal(gen.generator.decode(reference).permute(0, 2, 3, 1).clamp(0, 1), images)
    assert {p.model.inner for p, _ in comfy.loaded} == {gen.generator, sc.weights.network}
    assert all(force for _, force in comfy.loaded)
    other = run(pack.sampling.ShortcutSampler, **simple_inputs(pack, gen, sc, class_name="shape7"))
    assert float((other.args[0] - images).abs().mean()) > 1e-3, "class label has no effect"
    again = run(pack.sampling.ShortcutSampler, **simple_inputs(pack, gen, sc))
    assert torch.equal(again.args[0], images), "same seed must give the same images"


def test_model_management_names_and_counts_every_module(pack, comfy):
    """Issue 18: the log said "Requested to load _Managed", and DiMOO's VQ decoder was outside the module tree."""
    gen, sc = load_tiny(pack)
    assert type(gen.patcher.model).__name__ == "MaskGITGenerator"  # what ComfyUI's log line names
    assert type(sc.patcher.model).__name__ == "ShortcutNetwork"
    managed = dict(gen.patcher.model.named_parameters())
    assert any(name.startswith("inner.vq.") for name in managed), "the VQ decoder is not counted"
    assert len(managed) == len(list(gen.generator.parameters()))
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(ROOT / "tests"))
    from test_dimoo import build_tiny_folder
    dimoo = importlib.import_module(pack.core.__name__ + ".backends.dimoo")
    registry = importlib.import_module(pack.core.__name__ + ".registry")
    folder = build_tiny_folder(comfy.base / "tiny-dimoo")
    generator = registry.load_generator(str(folder), device="cpu", dtype="bf16")
    assert isinstance(generator, dimoo.DimooGenerator)
    patcher = pack.bridge.manage(generator, torch.device("cpu"), torch.device("cpu"))
    names = dict(patcher.model.named_parameters())
    assert type(patcher.model).__name__ == "DimooGenerator"
    vq = [p for n, p in names.items() if n.startswith("inner.vq.")]
    assert vq and all(p.dtype == torch.float32 for p in vq)  # managed, and still float32 under a bf16 model
    assert generator.transformer.wte.weight.dtype == torch.bfloat16


def test_without_shortcut_or_with_budget_equal_steps_it_is_the_vanilla_sampler(pack, comfy):
    gen, sc = load_tiny(pack)
    reference = reference_codes(pack, gen, [3, 3], steps=8, cfg_scale=2.0, seed=3)
    no_shortcut = run(pack.sampling.ShortcutSamplerAdvanced, **advanced_inputs(pack, gen, budget=2, r_temp=4.5))
    assert torch.equal(no_shortcut.args[1]["codes"], reference)
    assert no_shortcut.ui["shortcut_stats"][0]["vanilla"] is True
    full_budget = run(pack.sampling.ShortcutSamplerAdvanced, **advanced_inputs(pack, gen, sc, budget=8, r_temp=4.5))
    assert torch.equal(full_budget.args[1]["codes"], reference)
    stats = full_budget.ui["shortcut_stats"][0]
    assert stats["shortcut_calls"] == 0 and stats["speedup"] == 1.0 and stats["vanilla_seconds"] == stats["seconds"]


def test_presets_fill_widgets_and_never_override_them(pack, comfy):
    """Issue 18: preset maskgit512-N15-B7 ran 7 base calls and its own cfg while the node showed budget 3, cfg 9."""
    gen, sc = load_tiny(pack)
    sampling = pack.sampling
    assert sampling.preset_widget_values("maskgit256-N8-B4") == {
        "cfg": 3.0, "cfg_ramp": True, "r_temp": 4.5, "sm_temp": 1.0, "schedule": "arccos", "steps": 8, "budget": 4,
        "full_step_rule": "official"}
    table = pack.routes.preset_table()
    assert table["maskgit512-N15-B7"]["values"]["budget"] == 7 and "1.94x" in table["maskgit512-N15-B7"]["description"]
    shown = advanced_inputs(pack, gen, sc, preset="maskgit256-N8-B4", budget=3, cfg=9.0)
    out = run(sampling.ShortcutSamplerAdvanced, **shown)
    stats = out.ui["shortcut_stats"][0]
    assert (stats["budget"], stats["base_calls"]) == (3, 3), "the preset replaced the budget the node shows"
    assert "budget, cfg, full_step_rule, r_temp, schedule differ from preset 'maskgit256-N8-B4': the widgets ran" \
        in stats["note"]
    widgets_only = run(sampling.ShortcutSamplerAdvanced, **{**shown, "preset": "custom"})
    assert torch.equal(widgets_only.args[1]["codes"], out.args[1]["codes"])
    assert widgets_only.ui["shortcut_stats"][0]["note"] is None
    filled = {**advanced_inputs(pack, gen, sc, preset="maskgit256-N8-B4"),
              **sampling.preset_widget_values("maskgit256-N8-B4")}
    matching = run(sampling.ShortcutSamplerAdvanced, **filled).ui["shortcut_stats"][0]
    assert "was made for maskgit256 models" in matching["note"]  # the tiny generator is not a MaskGIT-256
    defaults = {**advanced_inputs(pack, gen, sc, preset="generator defaults"),
                **sampling.preset_widget_values("generator defaults", gen.generator.default_settings)}
    assert run(sampling.ShortcutSamplerAdvanced, **defaults).ui["shortcut_stats"][0]["note"] is None
    with pytest.raises(pack.core.ShortcutError, match="unknown preset"):
        run(sampling.ShortcutSamplerAdvanced, **advanced_inputs(pack, gen, sc, preset="fastest"))


def test_full_step_rules_explicit_lists_and_the_searched_default(pack, comfy):
    gen, sc = load_tiny(pack)
    searched_sc = run(pack.loaders.LoadShortcutWeights, generator=gen, shortcut_name="tiny_searched.safetensors")[0]
    advanced = pack.sampling.ShortcutSamplerAdvanced
    explicit = run(advanced, **advanced_inputs(pack, gen, sc, full_steps="0, 1,5,6"))
    assert explicit.ui["shortcut_stats"][0]["full_steps"] == [0, 1, 5, 6]
    with pytest.raises(pack.core.ShortcutError, match="3 distinct steps but budget is 4"):
        run(advanced, **advanced_inputs(pack, gen, sc, full_steps="0,3,5"))
    with pytest.raises(pack.core.ShortcutError, match="full_steps must be 0-based step numbers"):
        run(advanced, **advanced_inputs(pack, gen, sc, full_steps="0;3;x"))
    table = searched_sc.weights.step_errors[8]
    schedules = importlib.import_module(pack.core.__name__ + ".schedules")
    best = schedules.search_full_steps(table, 4)
    assert best != [0, 2, 4, 6]  # the table moves the full steps early
    for node, inputs in ((advanced, advanced_inputs(pack, gen, searched_sc)),
                         (pack.sampling.ShortcutSampler, simple_inputs(pack, gen, searched_sc))):
        assert run(node, **inputs).ui["shortcut_stats"][0]["full_steps"] == best  # auto = searched with a table
    assert run(advanced, **advanced_inputs(pack, gen, sc)).ui["shortcut_stats"][0]["full_steps"] == [0, 2, 4, 6]
    no_table = advanced_inputs(pack, gen, searched_sc, steps=10, budget=4)
    assert run(advanced, **no_table).ui["shortcut_stats"][0]["full_steps"] == [0, 2, 5, 8]  # no table for 10 steps
    with pytest.raises(pack.core.ShortcutError, match="measured for steps \\[8\\], not 10"):
        run(advanced, **{**no_table, "full_step_rule": "searched"})


def test_method_widget_runs_the_baselines_on_equal_terms(pack, comfy):
    gen, sc = load_tiny(pack)
    advanced = pack.sampling.ShortcutSamplerAdvanced
    for method in ("reuse", "taylor1", "taylor2"):  # training-free: no shortcut weights needed
        stats = run(advanced, **advanced_inputs(pack, gen, budget=3, method=method)).ui["shortcut_stats"][0]
        assert (stats["method"], stats["base_calls"], stats["shortcut_calls"]) == (method, 3, 5)
        assert stats["vanilla"] is False and method in stats["summary"]
    fewer = run(advanced, **advanced_inputs(pack, gen, sc, budget=3, method="fewer_steps", r_temp=4.5))
    assert torch.equal(fewer.args[1]["codes"], reference_codes(pack, gen, [3, 3], steps=3, cfg_scale=2.0, seed=3))
    stats = fewer.ui["shortcut_stats"][0]
    assert stats["expected_speedup"] == pytest.approx(8 / 3, abs=1e-3)
    # both figures are rounded to 0.1 ms before they reach the node, so compare within that rounding
    assert stats["vanilla_seconds"] == pytest.approx(stats["seconds"] * 8 / 3, abs=5e-5 * (1 + 8 / 3))
    with pytest.raises(pack.core.ShortcutError, match="method must be one of"):
        run(advanced, **advanced_inputs(pack, gen, budget=3, method="magic"))


def test_budget_above_steps_is_refused_with_a_readable_message(pack, comfy):
    gen, sc = load_tiny(pack)
    for sampler in (pack.sampling.ShortcutSampler, pack.sampling.ShortcutSamplerAdvanced,
                    pack.legacy.LegacyShortcutMaskedSampler):
        verdict = sampler.validate_inputs(steps=8, budget=10)
        assert isinstance(verdict, str) and "budget 10 must be between 1 and steps (8)" in verdict
        assert sampler.validate_inputs(steps=8, budget=8) is True
        assert sampler.validate_inputs(steps=8, budget=None) is True  # linked value: checked when running
    with pytest.raises(pack.core.ShortcutError, match=r"budget 10 must be between 1 and steps \(8\)"):
        pack.sampling.ShortcutSampler.execute(**simple_inputs(pack, gen, sc, budget=10))


def test_mismatched_shortcut_weights_and_conditioning_are_refused_plainly(pack, comfy):
    gen, _ = load_tiny(pack, with_shortcut=None)
    loader = pack.loaders.LoadShortcutWeights
    with pytest.raises(pack.core.ShortcutError) as err:
        run(loader, generator=gen, shortcut_name="wrong_size.safetensors")
    assert "do not fit generator 'tiny.safetensors'" in str(err.value)
    assert "features of size 32" in str(err.value) and "has 64" in str(err.value)
    with pytest.raises(pack.core.ShortcutError, match="fitted for generator 'some-other-generator'"):
        run(loader, generator=gen, shortcut_name="other_generator.safetensors")
    with pytest.raises(pack.core.ShortcutError, match="not in the model folder 'shortcut'"):
        run(loader, generator=gen, shortcut_name="absent.safetensors")
    good = run(loader, generator=gen, shortcut_name="tiny_shortcut.safetensors")[0]
    other = dataclasses.replace(gen, generator=_tiny_generator(pack.core, identity="another"))
    with pytest.raises(pack.core.ShortcutError, match="connect the same generator"):
        run(pack.sampling.ShortcutSampler, **simple_inputs(pack, gen, good, generator=other))
    with pytest.raises(pack.core.ShortcutError, match="class label was chosen for generator 'tiny-nodes'.*'another'"):
        run(pack.sampling.ShortcutSampler, **simple_inputs(pack, gen, None, generator=other))


def _preview_pixels(preview):
    import numpy as np
    kind, image, size = preview
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def test_progress_per_step_previews_cancel_and_the_finished_image_as_last_preview(pack, comfy, monkeypatch):
    gen, sc = load_tiny(pack)
    monkeypatch.setattr(pack.sampling, "PREVIEW_AFTER_SECONDS", 0.0)  # tiny runs are quicker than the threshold
    monkeypatch.setattr(pack.sampling, "PREVIEW_SHARE", 1e9)
    mm = sys.modules["comfy.model_management"]
    seen = []

    def hook(value, total, preview):  # the server's hook: shows progress; here it also presses Cancel
        seen.append((value, total, preview))
        if value == 3 and total == 8:
            mm.interrupt_current_processing(True)

    comfy.hook = hook
    with pytest.raises(InterruptProcessingException):
        run(pack.sampling.ShortcutSampler, **simple_inputs(pack, gen, sc))
    assert [v for v, _, _ in seen] == [1, 2, 3], "did not stop within one step of Cancel"
    previews = [p for _, _, p in seen if p is not None]
    assert previews, "no preview while the server shows progress"
    kind, image, size = previews[0]
    assert kind == "JPEG" and min(image.size) >= 256 and size >= max(image.size)
    # the next run works; its last progress update carries the finished image 0 (issue 18: a stale half-masked
    # frame stayed on the node in 2 of 4 runs)
    comfy.hook = lambda *args: None
    comfy.progress = []
    out = run(pack.sampling.ShortcutSampler, **simple_inputs(pack, gen, sc))
    assert [v for v, _, _ in comfy.progress][-1] == 8 and all(t == 8 for _, t, _ in comfy.progress)
    last = comfy.progress[-1][2]
    assert last is not None
    finished = out.args[0][0].permute(2, 0, 1)
    expected = _preview_pixels(pack.sampling.preview_image(finished))
    got = _preview_pixels(last)
    assert got.shape == expected.shape == (256, 256, 3)
    assert float(abs(got - expected).mean()) < 1e-6
    masked_frames = [p for _, _, p in comfy.progress[:-1] if p is not None]
    assert all(float(abs(_preview_pixels(p) - expected).mean()) > 1 for p in masked_frames)
    comfy.hook, comfy.progress = None, []
    run(pack.sampling.ShortcutSampler, **simple_inputs(pack, gen, sc))
    assert all(p is None for _, _, p in comfy.progress), "previews decoded although nothing shows them"


def test_previews_are_skipped_when_decoding_costs_too_much(pack, comfy, monkeypatch):
    gen, sc = load_tiny(pack)
    monkeypatch.setattr(pack.sampling, "PREVIEW_AFTER_SECONDS", 0.0)
    comfy.hook = lambda *args: None
    slow = pack.sampling.preview_frame

    def costly(*args):
        import time
        time.sleep(0.2)  # a decoder far slower than a sampling step
        return slow(*args)

    monkeypatch.setattr(pack.sampling, "preview_frame", costly)
    run(pack.sampling.ShortcutSampler, **simple_inputs(pack, gen, sc, steps=16, budget=8))
    shown = [p for _, _, p in comfy.progress if p is not None]
    assert len(shown) == 2, "previews kept costing more than their share of the sampling time"
    assert comfy.progress[-1][2] is shown[-1]  # the finished image, sent whatever previews cost
    monkeypatch.setattr(pack.sampling, "PREVIEW_AFTER_SECONDS", 60.0)
    comfy.progress = []
    run(pack.sampling.ShortcutSampler, **simple_inputs(pack, gen, sc, seed=9))
    assert [p is not None for _, _, p in comfy.progress] == [False] * 8 + [True], "a quick run decoded previews"


def test_the_node_reports_measured_time_calls_and_speedup_and_the_route_serves_the_ratio(pack, comfy):
    gen, sc = load_tiny(pack)
    info = pack.routes.shortcut_info({"name": "tiny_searched.safetensors", "generator": "tiny.safetensors",
                                      "steps": "8", "budget": "4"})
    assert info["fitted_ratio"] == 0.0625 and info["measured"] is None and info["table_steps"] == [8]
    searched = run(pack.loaders.LoadShortcutWeights, generator=gen, shortcut_name="tiny_searched.safetensors")[0]
    schedules = importlib.import_module(pack.core.__name__ + ".schedules")
    assert info["searched"] == schedules.search_full_steps(searched.weights.step_errors[8], 4)
    assert pack.routes.shortcut_info({"name": "tiny_shortcut.safetensors"})["fitted_ratio"] is None
    out = run(pack.sampling.ShortcutSampler, **simple_inputs(pack, gen, sc))
    stats = out.ui["shortcut_stats"][0]
    ratio = stats["shortcut_call_ms"] / stats["base_call_ms"]
    assert stats["measured_ratio"] == pytest.approx(ratio, rel=1e-2)
    assert stats["expected_speedup"] == pytest.approx(8 / (4 + 4 * stats["measured_ratio"]), rel=1e-3)
    saved = stats["shortcut_calls"] * (stats["base_call_ms"] - stats["shortcut_call_ms"]) / 1000
    assert stats["vanilla_seconds"] == pytest.approx(stats["seconds"] + saved, abs=2e-3)
    assert stats["speedup"] == pytest.approx(stats["vanilla_seconds"] / stats["seconds"], rel=1e-2)
    assert f"{stats['seconds']:.2f} s" in stats["summary"] and "the speed of the vanilla sampler (estimated" in stats["summary"]
    measured = pack.routes.shortcut_info({"name": "tiny_shortcut.safetensors", "generator": "tiny.safetensors"})
    assert measured["measured"]["ratio"] == stats["measured_ratio"] and measured["measured"]["device"] == "cpu"
    with pytest.raises(pack.core.ShortcutError, match="not in the model folder 'shortcut'"):
        pack.routes.shortcut_info({"name": "../x.safetensors"})


def test_record_trajectories_writes_a_readable_dataset(pack, comfy):
    gen, _ = load_tiny(pack, with_shortcut=None)
    recorder = pack.recording.RecordTrajectories
    inputs = widget_defaults(recorder)
    inputs.update(generator=gen, conditioning=label(pack, gen, pack.conditioning.CYCLE_CLASSES),
                  dataset_name="tiny_set", batches=2, batch_size=2, steps=6, storage="fp16")
    out = run(recorder, **inputs)
    folder = comfy.output_dir / "tiny_set"
    recording = importlib.import_module(pack.core.__name__ + ".recording")
    summary = recording.dataset_summary(folder)
    assert summary["trajectories"] == 2 * 2 * 2  # batches x images x CFG branches
    assert summary["bytes"] == sum(p.stat().st_size for p in folder.glob("shard-*.safetensors")) > 0
    dataset = recording.TrajectoryDataset(folder)
    item = dataset.load(0)
    assert item["features"].shape == (6, 65, 64) and item["features"].dtype == torch.float16
    assert item["codes"].shape == (64,) and int(item["order"].max()) <= 5
    text = out.args[0]
    assert "8 trajectories" in text and str(summary["bytes"]) in text and out.ui["text"] == [text]
    assert out.ui["dataset"][0]["added"] == 8
    assert [v for v, _, _ in comfy.progress][-1] == 12
    again = run(recorder, **{**inputs, "batches": 3})
    assert "12 trajectories" in again.args[0] and again.ui["dataset"][0]["added"] == 4
    for bad in ("../escape", "a/b", "", "..", "/abs"):
        with pytest.raises(pack.core.ShortcutError, match="plain folder name"):
            run(recorder, **{**inputs, "dataset_name": bad})
    assert not (comfy.base / "escape").exists()
    sized = run(pack.conditioning.MaskedTextPrompt, prompt="x", negative_prompt="", width=64, height=0)[0]
    with pytest.raises(pack.core.ShortcutError, match="recorded at the generator's own size"):
        run(recorder, **{**inputs, "conditioning": sized})


def test_old_nodes_still_run_saved_workflows_with_the_widgets_they_show(pack, comfy):
    """Workflows saved with the first sampler and recorder keep loading and running (deprecated, hidden)."""
    gen, sc = load_tiny(pack)
    old = run(pack.legacy.LegacyShortcutMaskedSampler, generator=gen, shortcut=sc, **legacy_inputs(pack))
    new = run(pack.sampling.ShortcutSamplerAdvanced, **advanced_inputs(pack, gen, sc, full_step_rule="official"))
    assert torch.equal(old.args[1]["codes"], new.args[1]["codes"])
    by_index = run(pack.legacy.LegacyShortcutMaskedSampler, generator=gen, shortcut=sc,
                   **legacy_inputs(pack, class_name="(cycle through all classes)", class_index=3))
    assert torch.equal(by_index.args[1]["codes"], new.args[1]["codes"])
    named = run(pack.legacy.LegacyShortcutMaskedSampler, generator=gen, shortcut=sc,
                **legacy_inputs(pack, preset="maskgit256-N8-B4", budget=2))
    stats = named.ui["shortcut_stats"][0]
    assert stats["budget"] == 2 and "differ from preset 'maskgit256-N8-B4'" in stats["note"]
    recorder = pack.legacy.LegacyTrajectoryRecorder
    inputs = widget_defaults(recorder)
    inputs.update(generator=gen, dataset_name="old_set", batches=1, batch_size=2, steps=4)
    assert "4 trajectories" in run(recorder, **inputs).args[0]


def test_shortcut_architectures_of_lazy_backends_resolve_inside_the_pack(pack):
    """ComfyUI imports the engine as <pack>.shortcut_core: the DiMOO and aMUSEd shortcut classes must come from
    there, not from a top-level shortcut_core that is not importable inside ComfyUI."""
    shortcut = importlib.import_module(pack.core.__name__ + ".shortcut")
    for arch in ("dimoo", "amused"):
        assert shortcut.shortcut_class(arch).__module__ == f"{pack.core.__name__}.backends.{arch}"


def test_width_and_height_size_text_to_image_generators_and_zero_restores_their_own(pack, comfy):
    gen, _ = load_tiny(pack, with_shortcut=None)
    assert gen.image_size is None  # MaskGIT draws at one size
    with pytest.raises(pack.core.ShortcutError, match="one fixed size: set width and height to 0"):
        pack.bridge.use_image_size(gen, 64, 64)

    class Sized:
        image_size = (1024, 1024)

        def set_image_size(self, width, height):
            self.image_size = (width, height)

    sized = Sized()
    cpu = torch.device("cpu")
    handle = pack.bridge.GeneratorHandle(sized, None, "sized", cpu, cpu, image_size=(1024, 1024))
    pack.bridge.use_image_size(handle, 512, 0)
    assert sized.image_size == (512, 1024)
    pack.bridge.use_image_size(handle)  # what the recorder does: the size it was loaded with
    assert sized.image_size == (1024, 1024)


def test_embedded_demo_generator_and_shortcut(pack, comfy):
    core = pack.core
    if not (core.DEMO_GENERATOR.is_file() and core.DEMO_SHORTCUT.is_file()):
        pytest.skip("embedded demo weights not built yet (shortcut_core/assets)")
    gen = run(pack.loaders.LoadMaskedGenerator, generator_name="demo", device="cpu", dtype="fp32")[0]
    sc = run(pack.loaders.LoadShortcutWeights, generator=gen, shortcut_name="demo")[0]
    names = list(gen.generator.class_names)
    assert len(names) == 10 and pack.conditioning.default_class_options()[1:] == names
    images = {}
    for name in names[:2]:
        out = run(pack.sampling.ShortcutSampler, **simple_inputs(pack, gen, sc, class_name=name, steps=16, budget=8))
        images[name] = out.args[0]
        assert images[name].shape == (2, 64, 64, 3) and float(images[name].std()) > 0.05
    a, b = images.values()
    assert float((a - b).abs().mean()) > 0.02, "demo images do not depend on the class"


# ---------------------------------------------------------------------------- bundled workflows

TEMPLATES = ROOT / "example_workflows"
WIDGET_TYPES = ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")
FILE_COMBOS = {"generator_name": "masked_generators", "shortcut_name": "shortcut"}


def _user_fitted() -> set:
    """Shortcut files the guides' step 2 makes (aMUSEd, Meissonic): nothing to download."""
    sys.path.insert(0, str(ROOT / "tests"))
    from template_specs import RECORD_FIT_SAMPLE
    return {shortcut for _, _, _, shortcut, _ in RECORD_FIT_SAMPLE.values()}


def _schemas(pack):
    return {n.define_schema().node_id: n.define_schema() for n in pack.nodes.NODES}


def _orders(schemas) -> dict:
    from comfy_workflow import widget_order
    def control(item):
        return bool(getattr(item, "control_after_generate", None) or getattr(item, "extra", {}).get(
            "control_after_generate"))

    return {node_id: widget_order([(i.id, i.optional, control(i)) for i in schema.inputs if i.io_type in WIDGET_TYPES])
            for node_id, schema in schemas.items()}


def test_templates_are_onboarding_workflows_with_model_metadata(pack, comfy):
    """example_workflows/ (ComfyUI's folder): titles in order, thumbnails, only current nodes, widget values the
    nodes accept, and for every file to download a `models` entry (name, url, folder) for the missing-models
    dialog."""
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_workflow import ui_to_api
    schemas = _schemas(pack)
    orders = _orders(schemas)
    files = sorted(TEMPLATES.glob("*.json"))
    assert not (ROOT / "workflows").exists(), "one copy of each template: example_workflows/ only"
    assert len(files) >= 7
    readme = (ROOT / "README.md").read_text()
    assert files[0].stem.startswith("01 ") and "demo" in files[0].stem.lower()
    for index, path in enumerate(files, 1):
        name = path.stem
        assert name.startswith(f"{index:02d} "), f"{name}: templates are numbered in the order to open them"
        assert path.with_suffix(".jpg").read_bytes()[:3] == b"\xff\xd8\xff", f"{name}: no JPEG thumbnail"
        wf = json.loads(path.read_text())
        assert {"nodes", "links", "version", "last_node_id", "last_link_id"} <= set(wf), name
        api = ui_to_api(wf, orders)
        nodes = {str(n["id"]): n for n in wf["nodes"]}
        assert any(n["type"] == "MarkdownNote" for n in wf["nodes"]), f"{name}: no note that explains it"
        downloads = list(wf.get("models") or [])
        for node_id, entry in api.items():
            kind = entry["class_type"]
            assert kind not in LEGACY_NODES, f"{name} uses the deprecated {kind}"
            if kind not in schemas:
                assert kind in ("SaveImage", "PreviewImage"), (name, kind)
                continue
            schema = schemas[kind]
            required = {i.id for i in schema.inputs if not i.optional}
            assert required <= set(entry["inputs"]), (name, kind, required - set(entry["inputs"]))
            for item in schema.inputs:
                value = entry["inputs"].get(item.id)
                if item.io_type == "COMBO" and item.id not in FILE_COMBOS and item.id != "class_name" \
                        and value is not None:
                    assert value in item.options, (name, kind, item.id, value)
                if item.id in FILE_COMBOS and value != pack.bridge.DEMO and not str(value).endswith("/"):
                    meta = {m["name"]: m for m in nodes[node_id]["properties"].get("models", [])}
                    downloads += meta.values()
                    if value not in _user_fitted():
                        assert value in meta, f"{name}: no download address for {value}"
                        assert meta[value]["directory"] == FILE_COMBOS[item.id]
        for model in downloads:
            assert model["url"].startswith("https://huggingface.co/"), (name, model)
            assert model["directory"] in FILE_COMBOS.values(), (name, model)
        assert f"`{name}`" in readme or name in readme, f"README does not point to template {name}"
