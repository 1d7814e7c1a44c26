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
OUR_NODES = {"MIGMLoadMaskedGenerator", "MIGMLoadShortcutWeights", "MIGMShortcutMaskedSampler",
             "MIGMTrajectoryRecorder"}


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
        comfy = types.ModuleType("comfy")
        comfy.__path__ = []
        comfy.utils, comfy.model_management, comfy.model_patcher = utils, mm, mp
        return {"folder_paths": fp, "comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm,
                "comfy.model_patcher": mp}


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
                                    bridge=nodes.bridge, sampling=nodes.sampling, loaders=nodes.loaders)
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
    return base


@pytest.fixture
def comfy(pack, weights, tmp_path, monkeypatch):
    standin = ComfyStandin(tmp_path)
    for name, module in standin.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    gens = standin.models_dir / "masked_generators"
    shorts = standin.models_dir / "shortcut"
    gens.mkdir(parents=True)
    shorts.mkdir(parents=True)
    (gens / "tiny.safetensors").write_bytes((weights / "tiny.safetensors").read_bytes())
    (gens / "README.txt").write_text("put generators here")
    for name in ("tiny_shortcut", "wrong_size", "other_generator"):
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


def sampler_inputs(pack, **overrides):
    inputs = widget_defaults(pack.sampling.ShortcutMaskedSampler)
    inputs.update(steps=8, budget=4, batch_size=2, seed=3, class_name="shape3")
    inputs.update(overrides)
    return inputs


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


def test_entrypoint_gives_four_v3_nodes_with_consistent_schemas(pack, comfy):
    extension = asyncio.run(pack.root.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    schemas = {n.define_schema().node_id: (n, n.define_schema()) for n in nodes}
    assert set(schemas) == OUR_NODES
    for node_id, (cls, schema) in schemas.items():
        assert schema.category == "sampling/shortcut"
        assert schema.display_name and schema.description
        ids = [i.id for i in schema.inputs]
        assert len(ids) == len(set(ids)), node_id
        # every declared input is accepted by execute (ComfyUI passes them by name)
        params = inspect.signature(cls.execute).parameters
        for i in schema.inputs:
            assert i.id in params, f"{node_id}.execute does not take input {i.id!r}"
            if i.optional:
                assert params[i.id].default is not inspect.Parameter.empty, f"optional {i.id!r} needs a default"
    sampler = schemas["MIGMShortcutMaskedSampler"][1]
    assert [o.io_type for o in sampler.outputs] == ["IMAGE", "MIGM_TOKENS"]
    names = {i.id for i in sampler.inputs}
    assert {"steps", "budget", "cfg", "cfg_ramp", "sm_temp", "r_temp", "schedule", "full_step_rule", "seed",
            "batch_size", "class_name", "prompt", "negative_prompt", "shortcut"} <= names
    assert schemas["MIGMTrajectoryRecorder"][1].is_output_node


def test_model_folders_registered_with_filters_and_existing_paths_kept(pack, comfy):
    fp = sys.modules["folder_paths"]
    extra = str(comfy.base / "extra_generators")
    fp.folder_names_and_paths["masked_generators"] = ([extra], set())  # as add_model_folder_path leaves it
    pack.bridge.register_model_folders()
    paths, exts = fp.folder_names_and_paths["masked_generators"]
    assert paths == [extra, str(comfy.models_dir / "masked_generators")]
    assert ".safetensors" in exts and ".pth" in exts
    assert fp.folder_names_and_paths["shortcut"][0] == [str(comfy.models_dir / "shortcut")]
    listed = pack.bridge.list_generators()
    assert listed[0] == "demo" and "tiny.safetensors" in listed
    assert "README.txt" not in listed


def test_generator_list_offers_model_folders_and_refuses_unlisted_names(pack, comfy):
    folder = comfy.models_dir / "masked_generators" / "some-hf-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    listed = pack.bridge.list_generators()
    assert "some-hf-model/" in listed
    assert not any(name.startswith("some-hf-model/model") for name in listed)
    assert pack.bridge.resolve_generator("some-hf-model/") == folder
    outside = comfy.base / "secret.safetensors"
    outside.write_bytes((comfy.models_dir / "masked_generators" / "tiny.safetensors").read_bytes())
    for bad in ("../secret.safetensors", str(outside), "nope.safetensors", "../output/", "/etc/"):
        with pytest.raises(pack.core.ShortcutError, match="masked_generators"):
            pack.bridge.resolve_generator(bad)
    with pytest.raises(pack.core.ShortcutError, match="not in the model folder 'shortcut'"):
        pack.bridge.resolve_shortcut("../masked_generators/tiny.safetensors")


def test_missing_generator_file_is_an_actionable_error(pack, comfy):
    with pytest.raises(pack.core.ShortcutError) as err:
        run(pack.loaders.LoadMaskedGenerator, generator_name="gone.safetensors", device="auto", dtype="auto")
    message = str(err.value)
    assert "'gone.safetensors'" in message and "masked_generators" in message and "Refresh" in message


def test_sampler_makes_class_dependent_images_and_hands_models_to_comfy(pack, comfy):
    gen, sc = load_tiny(pack)
    assert comfy.loaded == []  # nothing moved before a sampler needs it
    out = run(pack.sampling.ShortcutMaskedSampler, generator=gen, shortcut=sc, **sampler_inputs(pack))
    images, tokens = out.args
    assert images.shape == (2, 32, 32, 3) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert float(images.std()) > 0.01, "blank image"
    assert tokens["codes"].shape == (2, 64) and tokens["generator"] == "tiny-nodes"
    stats = out.ui["shortcut_stats"][0]
    assert (stats["base_calls"], stats["shortcut_calls"]) == (4, 4)
    assert stats["full_steps"] == [0, 2, 4, 6]
    assert {p.model.inner for p, _ in comfy.loaded} == {gen.generator, sc.weights.network}
    assert all(force for _, force in comfy.loaded)
    other = run(pack.sampling.ShortcutMaskedSampler, generator=gen, shortcut=sc,
                **sampler_inputs(pack, class_name="shape7"))
    assert not torch.equal(other.args[1]["codes"], tokens["codes"]), "class label has no effect"
    assert float((other.args[0] - images).abs().mean()) > 1e-3
    again = run(pack.sampling.ShortcutMaskedSampler, generator=gen, shortcut=sc, **sampler_inputs(pack))
    assert torch.equal(again.args[0], images), "same seed must give the same images"


def test_without_shortcut_or_with_budget_equal_steps_it_is_the_vanilla_sampler(pack, comfy):
    gen, sc = load_tiny(pack)
    core = pack.core
    settings = core.SamplerSettings(steps=8, budget=None, cfg_scale=2.0, cfg_ramp=True, sm_temp=1.0, r_temp=3.0,
                                    seed=3)
    reference = core.sample(gen.generator, core.Condition(labels=[3, 3]), settings).codes
    no_shortcut = run(pack.sampling.ShortcutMaskedSampler, generator=gen, **sampler_inputs(pack, budget=2))
    assert torch.equal(no_shortcut.args[1]["codes"], reference)
    assert no_shortcut.ui["shortcut_stats"][0]["vanilla"] is True
    full_budget = run(pack.sampling.ShortcutMaskedSampler, generator=gen, shortcut=sc,
                      **sampler_inputs(pack, budget=8))
    assert torch.equal(full_budget.args[1]["codes"], reference)
    assert full_budget.ui["shortcut_stats"][0]["shortcut_calls"] == 0


def test_method_widget_runs_the_baselines_on_equal_terms(pack, comfy):
    gen, sc = load_tiny(pack)
    core = pack.core
    for method in ("reuse", "taylor1", "taylor2"):  # training-free: no shortcut weights needed
        out = run(pack.sampling.ShortcutMaskedSampler, generator=gen, **sampler_inputs(pack, budget=3, method=method))
        stats = out.ui["shortcut_stats"][0]
        assert (stats["method"], stats["base_calls"], stats["shortcut_calls"]) == (method, 3, 5)
        assert stats["vanilla"] is False and method in stats["summary"]
    fewer = run(pack.sampling.ShortcutMaskedSampler, generator=gen, shortcut=sc,
                **sampler_inputs(pack, budget=3, method="fewer_steps"))
    settings = core.SamplerSettings(steps=3, cfg_scale=2.0, cfg_ramp=True, sm_temp=1.0, r_temp=3.0, seed=3)
    assert torch.equal(fewer.args[1]["codes"], core.sample(gen.generator, core.Condition(labels=[3, 3]), settings).codes)
    assert fewer.ui["shortcut_stats"][0]["expected_speedup"] == pytest.approx(8 / 3, abs=1e-3)
    with pytest.raises(core.ShortcutError, match="method must be one of"):
        run(pack.sampling.ShortcutMaskedSampler, generator=gen, **sampler_inputs(pack, budget=3, method="magic"))


def test_budget_above_steps_is_refused_with_a_readable_message(pack, comfy):
    gen, sc = load_tiny(pack)
    sampler = pack.sampling.ShortcutMaskedSampler
    verdict = sampler.validate_inputs(steps=8, budget=10)
    assert isinstance(verdict, str) and "budget 10 must be between 1 and steps (8)" in verdict
    assert sampler.validate_inputs(steps=8, budget=8) is True
    assert sampler.validate_inputs(steps=8, budget=None) is True  # linked value: checked when running
    with pytest.raises(pack.core.ShortcutError, match=r"budget 10 must be between 1 and steps \(8\)"):
        sampler.execute(generator=gen, shortcut=sc, **sampler_inputs(pack, budget=10))


def test_mismatched_shortcut_weights_are_refused_plainly(pack, comfy):
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
    # a shortcut checked against one generator, used with another loaded generator
    good = run(loader, generator=gen, shortcut_name="tiny_shortcut.safetensors")[0]
    other = dataclasses.replace(gen, generator=_tiny_generator(pack.core, identity="another"))
    with pytest.raises(pack.core.ShortcutError, match="connect the same generator"):
        run(pack.sampling.ShortcutMaskedSampler, generator=other, shortcut=good, **sampler_inputs(pack))


def test_progress_per_step_previews_and_cancel_within_one_step(pack, comfy, monkeypatch):
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
        run(pack.sampling.ShortcutMaskedSampler, generator=gen, shortcut=sc, **sampler_inputs(pack))
    assert [v for v, _, _ in seen] == [1, 2, 3], "did not stop within one step of Cancel"
    previews = [p for _, _, p in seen if p is not None]
    assert previews, "no preview while the server shows progress"
    kind, image, size = previews[0]
    assert kind == "JPEG" and min(image.size) >= 256 and size >= max(image.size)
    # the next run works and reports every step
    comfy.hook, comfy.progress = None, []
    out = run(pack.sampling.ShortcutMaskedSampler, generator=gen, shortcut=sc, **sampler_inputs(pack))
    assert out.args[0].shape[0] == 2
    assert [v for v, _, _ in comfy.progress][-1] == 8 and all(t == 8 for _, t, _ in comfy.progress)
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
    run(pack.sampling.ShortcutMaskedSampler, generator=gen, shortcut=sc, **sampler_inputs(pack, steps=16, budget=8))
    shown = [p for _, _, p in comfy.progress if p is not None]
    assert len(shown) == 1, "previews kept costing more than their share of the sampling time"
    monkeypatch.setattr(pack.sampling, "PREVIEW_AFTER_SECONDS", 60.0)
    comfy.progress = []
    run(pack.sampling.ShortcutMaskedSampler, generator=gen, shortcut=sc, **sampler_inputs(pack, seed=9))
    assert all(p is None for _, _, p in comfy.progress), "a quick run decoded previews"


def test_presets_replace_the_widgets_they_name(pack, comfy):
    gen, sc = load_tiny(pack)
    sampler = pack.sampling.ShortcutMaskedSampler
    named = run(sampler, generator=gen, shortcut=sc, **sampler_inputs(pack, preset="maskgit256-N8-B4", steps=8,
                                                                      budget=8, cfg=9.0))
    stats = named.ui["shortcut_stats"][0]
    assert (stats["steps"], stats["budget"], stats["shortcut_calls"]) == (8, 4, 4)
    assert "note: preset 'maskgit256-N8-B4' was made for maskgit256 models" in stats["summary"]
    # generator defaults: tiny's cfg 2.0 (and the core's r_temp 4.5) instead of the widgets' 9.0 and 0.5
    own = run(sampler, generator=gen, shortcut=sc, **sampler_inputs(pack, preset="generator defaults", cfg=9.0,
                                                                    r_temp=0.5))
    assert pack.core.SamplerSettings().r_temp == 4.5
    widgets = run(sampler, generator=gen, shortcut=sc, **sampler_inputs(pack, cfg=2.0, r_temp=4.5))
    assert torch.equal(own.args[1]["codes"], widgets.args[1]["codes"])
    with pytest.raises(pack.core.ShortcutError, match="unknown preset"):
        run(sampler, generator=gen, shortcut=sc, **sampler_inputs(pack, preset="fastest"))


def test_class_and_prompt_widgets_become_the_core_condition(pack, comfy):
    gen, _ = load_tiny(pack, with_shortcut=None)
    make = pack.sampling.make_condition
    g = gen.generator
    assert make(g, 3, pack.sampling.CYCLE_CLASSES).labels == [0, 1, 2]
    assert make(g, 2, "SHAPE4").labels == [4, 4]
    assert make(g, 2, "tench", class_index=7).labels == [7, 7]
    with pytest.raises(pack.core.ShortcutError, match="not a class of generator 'tiny-nodes'.*shape0"):
        make(g, 1, "tench")
    with pytest.raises(pack.core.ShortcutError, match="out of range"):
        make(g, 1, "shape1", class_index=10)
    text = types.SimpleNamespace(condition_kind="text", identity="t2i")
    cond = make(text, 2, "ignored", prompt="a red fox", negative_prompt="blurry")
    assert cond.prompts == ["a red fox"] * 2 and cond.negative_prompts == ["blurry"] * 2 and cond.labels is None
    assert make(text, 1, "x", prompt="fox", negative_prompt=" ").negative_prompts is None
    with pytest.raises(pack.core.ShortcutError, match="text-to-image: write a prompt"):
        make(text, 1, "x", prompt="  ")
    options = pack.bridge.class_name_options()
    assert "shape3" in options and "tench" in options and len(options) == len(set(options))


def test_trajectory_recorder_writes_a_readable_dataset(pack, comfy):
    gen, _ = load_tiny(pack, with_shortcut=None)
    recorder = pack.sampling.TrajectoryRecorderNode
    inputs = widget_defaults(recorder)
    inputs.update(dataset_name="tiny_set", batches=2, batch_size=2, steps=6, storage="fp16")
    out = run(recorder, generator=gen, **inputs)
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
    again = run(recorder, generator=gen, **{**inputs, "batches": 3})
    assert "12 trajectories" in again.args[0] and again.ui["dataset"][0]["added"] == 4
    for bad in ("../escape", "a/b", "", "..", "/abs"):
        with pytest.raises(pack.core.ShortcutError, match="plain folder name"):
            run(recorder, generator=gen, **{**inputs, "dataset_name": bad})
    assert not (comfy.base / "escape").exists()


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
        run(pack.sampling.ShortcutMaskedSampler, generator=gen, **sampler_inputs(pack, width=64, height=64))

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
    assert len(names) == 10 and set(names) <= set(pack.bridge.class_name_options())
    images = {}
    for name in names[:2]:
        out = run(pack.sampling.ShortcutMaskedSampler, generator=gen, shortcut=sc,
                  **sampler_inputs(pack, class_name=name, steps=16, budget=8, batch_size=2))
        images[name] = out.args[0]
        assert images[name].shape == (2, 64, 64, 3) and float(images[name].std()) > 0.05
    a, b = images.values()
    assert float((a - b).abs().mean()) > 0.02, "demo images do not depend on the class"


# ---------------------------------------------------------------------------- bundled workflows

def _schema_widgets(pack):
    nodes = {n.define_schema().node_id: n.define_schema() for n in pack.nodes.NODES}
    return nodes


WIDGET_TYPES = ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")
CORE_NODES = {"SaveImage": ["filename_prefix"], "PreviewImage": [], "ImageBatch": [],
              "MarkdownNote": [], "Note": []}


def test_bundled_workflows_match_the_node_schemas(pack, comfy):
    schemas = _schema_widgets(pack)
    ui_files = sorted((ROOT / "workflows").glob("*.json"))
    api_files = sorted((ROOT / "workflows" / "api").glob("*.json"))
    assert len(ui_files) >= 3 and {p.stem for p in api_files} == {p.stem for p in ui_files}
    for path in ui_files:
        wf = json.loads(path.read_text())
        assert {"nodes", "links", "version", "last_node_id", "last_link_id"} <= set(wf), path.name
        ids = {n["id"] for n in wf["nodes"]}
        for link in wf["links"]:
            link_id, src, src_slot, dst, dst_slot, kind = link
            assert src in ids and dst in ids, (path.name, link)
        for node in wf["nodes"]:
            assert {"id", "type", "pos", "size", "mode", "inputs", "outputs"} <= set(node), (path.name, node["id"])
            if node["type"] in schemas:
                schema = schemas[node["type"]]
                widgets = [i for i in schema.inputs if i.io_type in WIDGET_TYPES]
                expected = sum(2 if i.id == "seed" else 1 for i in widgets)
                assert len(node["widgets_values"]) == expected, (path.name, node["type"])
            else:
                assert node["type"] in CORE_NODES, (path.name, node["type"])
    for path in api_files:
        graph = json.loads(path.read_text())
        for node_id, node in graph.items():
            if node["class_type"] not in schemas:
                assert node["class_type"] in CORE_NODES
                continue
            schema = schemas[node["class_type"]]
            required = {i.id for i in schema.inputs if not i.optional}
            known = {i.id for i in schema.inputs}
            assert required <= set(node["inputs"]), (path.name, node_id, required - set(node["inputs"]))
            assert set(node["inputs"]) <= known, (path.name, node_id, set(node["inputs"]) - known)


FILE_COMBOS = {"generator_name": "models/masked_generators/", "shortcut_name": "models/shortcut/"}


def _ui_widget_order(schema) -> list[str]:
    """Widget names in the order the front end saves ``widgets_values``: required inputs, then optional ones, with
    the seed's control_after_generate value right after the seed."""
    widgets = [i for i in schema.inputs if i.io_type in WIDGET_TYPES]
    order = []
    for item in [i for i in widgets if not i.optional] + [i for i in widgets if i.optional]:
        order.append(item.id)
        if item.id == "seed":
            order.append("control_after_generate")
    return order


def test_bundled_workflows_have_thumbnails_valid_values_and_files_the_readme_names(pack, comfy):
    """Every template has an API copy and a JPEG thumbnail; the API copy holds the UI's widget values, links to
    existing nodes, combo values the node offers, and model file names README tells users to download."""
    schemas = _schema_widgets(pack)
    readme = (ROOT / "README.md").read_text()
    for ui_path in sorted((ROOT / "workflows").glob("*.json")):
        name = ui_path.stem
        thumbnail = ui_path.with_suffix(".jpg")
        assert thumbnail.is_file() and thumbnail.read_bytes()[:3] == b"\xff\xd8\xff", f"{name}: no JPEG thumbnail"
        api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
        ui = {str(n["id"]): n for n in json.loads(ui_path.read_text())["nodes"]}
        for node_id, node in api.items():
            assert node_id in ui and ui[node_id]["type"] == node["class_type"], (name, node_id)
            for key, value in node["inputs"].items():
                if isinstance(value, list):
                    assert value[0] in api and isinstance(value[1], int), (name, node_id, key)
            schema = schemas.get(node["class_type"])
            if schema is None:
                assert set(node["inputs"]) <= set(CORE_NODES[node["class_type"]]) | {"images"}, (name, node_id)
                continue
            saved = dict(zip(_ui_widget_order(schema), ui[node_id]["widgets_values"]))
            for item in schema.inputs:
                if item.id not in node["inputs"]:
                    continue
                value = node["inputs"][item.id]
                if item.io_type in WIDGET_TYPES:
                    assert saved[item.id] == value, (name, node_id, item.id)
                else:
                    assert isinstance(value, list), (name, node_id, item.id)
                if item.id in FILE_COMBOS:
                    if value != pack.bridge.DEMO:
                        assert FILE_COMBOS[item.id] + value.rstrip("/") in readme, (name, value)
                elif item.io_type == "COMBO":
                    assert value in item.options, (name, node_id, item.id, value)
