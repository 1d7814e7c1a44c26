"""Official MaskGIT / VQGAN / MaskGIT-Shortcut files: loaders, conversion, safe loading, path rule, presets.

Reference fixtures (outputs of the authors' code on tiny random weights, in the real on-disk formats) come from
``$SHORTCUT_FIXTURES`` (default ``tests/fixtures/upstream``, see its README); every config, id and
shape is read from their ``meta.json``. ``SHORTCUT_SLOW=1`` also runs a full-size MaskGIT-512 end to end.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from shortcut_core import cli
from shortcut_core.backends import maskgit_official as mo
from shortcut_core.backends.maskgit import MaskGITConfig, MaskGITGenerator, MaskTransformer
from shortcut_core.backends.vqgan import VQConfig, VQModel
from shortcut_core.generator import Condition, Context, ShortcutError
from shortcut_core.imagenet_classes import IMAGENET_CLASSES, class_index
from shortcut_core.presets import PRESETS, apply_preset, check_preset, get_preset, needs_shortcut, preset_names
from shortcut_core.registry import load_generator
from shortcut_core.sampler import SamplerSettings, sample
from shortcut_core.schedules import full_steps, tokens_per_step
from shortcut_core.shortcut import ShortcutConfig, ShortcutNetwork
import shortcut_core.shortcut as shortcut_module

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("SHORTCUT_FIXTURES", REPO / "tests" / "fixtures" / "upstream"))
if not FIXTURES.is_absolute():
    FIXTURES = (REPO / FIXTURES).resolve()

# Every comparison with the reference uses atol 1e-5 AND rtol 1e-5. The relative part matters for the shortcut:
# its time input is the DiT sinusoidal embedding of mask_ratio * 1000, so at t = 750 the largest phase is 750 rad,
# where one float32 ulp is 6e-5 rad. Outputs move by ~1e-5 per ulp of that phase, and how the last bit of
# exp()/cos() is rounded differs between CPUs and builds (see test_shortcut_matches_reference_as_shipped).
ATOL = 1e-5
RTOL = 1e-5


def close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = ATOL, rtol: float = RTOL) -> None:
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fixtures() -> Path:
    if not (FIXTURES / "meta.json").is_file():
        pytest.skip(f"reference fixtures not found at {FIXTURES} (set SHORTCUT_FIXTURES)")
    return FIXTURES


@pytest.fixture(scope="module")
def meta(fixtures) -> dict:
    return json.loads((fixtures / "meta.json").read_text())


@pytest.fixture(scope="module")
def io(fixtures) -> dict:
    from safetensors.torch import load_file
    return {name: load_file(str(fixtures / f"{name}_io.safetensors"))
            for name in ("maskgit_base", "maskgit_shortcut", "vqgan")}


def taming_yaml(vq: dict) -> dict:
    """A taming ``model.yaml`` document for a meta.json ``vqgan_config``."""
    return {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
                      "params": {"embed_dim": vq["embed_dim"], "n_embed": vq["n_embed"], "ddconfig": vq["ddconfig"],
                                 "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"}}}}


@pytest.fixture(scope="module")
def heads(meta) -> dict:
    return {"base": meta["maskgit_base_config"]["heads"], "shortcut": meta["maskgit_shortcut_config"]["num_heads"]}


@pytest.fixture(scope="module")
def official(tmp_path_factory, fixtures, meta) -> dict:
    """The fixture files in the official layout: pretrained_maskgit/{MaskGIT,VQGAN} (+ model.yaml)."""
    root = tmp_path_factory.mktemp("official") / "pretrained_maskgit"
    (root / "MaskGIT").mkdir(parents=True)
    (root / "VQGAN").mkdir()
    shutil.copy(fixtures / "maskgit_base.pth", root / "MaskGIT" / "maskgit_base.pth")
    shutil.copy(fixtures / "vqgan.ckpt", root / "VQGAN" / "last.ckpt")
    (root / "VQGAN" / "model.yaml").write_text(yaml.safe_dump(taming_yaml(meta["vqgan_config"])))
    return {"root": root, "transformer": root / "MaskGIT" / "maskgit_base.pth", "vqgan": root / "VQGAN" / "last.ckpt",
            "shortcut": fixtures / "maskgit_shortcut.pth"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, official, heads) -> dict:
    """Each fixture converted with ``python -m shortcut_core convert`` (heads recorded in the metadata)."""
    out = tmp_path_factory.mktemp("converted")
    paths = {"transformer": out / "maskgit_base.safetensors", "vqgan": out / "vqgan.safetensors",
             "shortcut": out / "maskgit_shortcut.safetensors"}
    assert cli.main(["convert", str(official["transformer"]), str(paths["transformer"]),
                     "--heads", str(heads["base"])]) == 0
    assert cli.main(["convert", str(official["vqgan"]), str(paths["vqgan"])]) == 0
    assert cli.main(["convert", str(official["shortcut"]), str(paths["shortcut"]),
                     "--heads", str(heads["shortcut"])]) == 0
    return paths


@pytest.fixture(scope="module")
def generators(official, converted, heads) -> dict:
    return {
        "official": mo.load_maskgit(official["transformer"], official["vqgan"], heads=heads["base"]),
        "converted": mo.load_maskgit(converted["transformer"], converted["vqgan"]),  # heads from the metadata
    }


def _shortcut_for(source, official, converted, generator, heads):
    if source == "official":
        return mo.load_official_shortcut(official["shortcut"], generator, heads=heads["shortcut"])
    return mo.load_official_shortcut(converted["shortcut"], generator)


# ----------------------------------------------------------------------------------------------------------------
# Agreement with the reference code
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["official", "converted"])
def test_base_transformer_matches_reference(source, generators, io, meta):
    gen = generators[source]
    cfg = meta["maskgit_base_config"]
    assert gen.codebook_size == cfg["codebook_size"] and gen.num_classes == cfg["nclass"]
    assert gen.feature_dim == cfg["hidden_dim"] and gen.transformer.config.depth == cfg["depth"]
    assert gen.transformer.config.heads == cfg["heads"]
    assert gen.transformer.config.mlp_dim == cfg["mlp_dim"]
    data = io["maskgit_base"]
    grid = data["code"].shape[-1]
    assert gen.grid_size == (grid, grid) == (cfg["f_factor"], cfg["f_factor"])  # f_factor = token grid side
    drop = data["drop_label"].bool()
    class_tokens = gen.transformer.class_tokens(data["y"], drop)
    assert torch.equal(class_tokens[drop], torch.full_like(class_tokens[drop], meta["null_class_id"]))
    assert torch.equal(class_tokens[~drop], data["y"][~drop] + meta["class_token_offset"])
    with torch.no_grad():
        feature = gen.transformer.features(data["code"].flatten(1), class_tokens)
        ctx = Context(batch_size=len(drop), branches=1, device=torch.device("cpu"))
        logits = gen.head(feature, ctx, torch.ones(len(drop), grid * grid, dtype=torch.bool))
    close(feature, data["last_feat"], "last_feat")
    close(logits, data["logits"], "logits")


@pytest.mark.parametrize("source", ["official", "converted"])
def test_vqgan_decoder_matches_reference(source, generators, io):
    gen = generators[source]
    data = io["vqgan"]
    with torch.no_grad():
        image = gen.vq.decode_codes(data["codes"])
        decoded = gen.decode(data["codes"].flatten(1))
    close(image, data["image"], "image")
    close(decoded, ((data["image"] + 1) / 2).clamp(0, 1), "decode() in 0..1")


def _shortcut_inputs(gen, data):
    """The reference inputs through the generator's own new-token path (ids placed at their grid positions)."""
    new_map = data["new_token_map"].bool()
    assert not new_map[:, -1].any(), "the class column is never a new token"
    length = gen.num_tokens
    codes = torch.zeros(new_map.shape[0], length, dtype=torch.long)
    for row in range(new_map.shape[0]):
        positions = new_map[row, :length].nonzero()[:, 0]  # row-major, the reference's boolean-mask order
        codes[row, positions] = data["new_token_ids"][row]
    ctx = Context(batch_size=new_map.shape[0], branches=1, device=torch.device("cpu"))
    return gen.new_tokens(codes, new_map[:, :length], ctx), ctx


def _run_shortcut(gen, weights, data):
    new, ctx = _shortcut_inputs(gen, data)
    with torch.no_grad():
        feature = weights.network(data["prev_feat"], new, data["mask_ratio"])
        logits = gen.head(feature, ctx, torch.ones(feature.shape[0], gen.num_tokens, dtype=torch.bool))
    return feature, logits


def _reference_frequency_table(dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """The float32 frequencies exp(-ln(P) k / half) as the reference run rounded them.

    The correctly rounded table (exp in float64, then to float32) with entry 13 one ulp up; torch's vectorised
    exp on this CPU rounds entries 12 and 106 the other way instead. Found by comparing with the fixture.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32) / half
    freqs = torch.exp(exponent.double()).float()
    freqs[13] = torch.nextafter(freqs[13], torch.tensor(math.inf))
    return freqs


@pytest.mark.parametrize("source", ["official", "converted"])
def test_shortcut_matches_reference(source, generators, official, converted, heads, io, meta, monkeypatch):
    """With the reference's frequency table the shortcut agrees to atol 1e-5 + rtol 1e-5 on every row."""
    gen = generators[source]
    network = _shortcut_for(source, official, converted, gen, heads)
    cfg = meta["maskgit_shortcut_config"]
    assert isinstance(network.network, ShortcutNetwork)
    assert network.config.num_heads == cfg["num_heads"] and network.config.n_blocks == cfg["n_block"]
    assert network.config.bottleneck_ratio == cfg["bottleneck_ratio"] and network.config.feature_dim == cfg["hidden_dim"]
    table = _reference_frequency_table()

    def embedding(t, dim, max_period=10000.0):
        assert dim == table.numel() * 2
        args = t.float()[:, None] * table[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    monkeypatch.setattr(shortcut_module, "timestep_embedding", embedding)
    feature, logits = _run_shortcut(gen, network, io["maskgit_shortcut"])
    close(feature, io["maskgit_shortcut"]["next_feat"], "next_feat")
    close(logits, io["maskgit_shortcut"]["next_logits"], "next_logits")


@pytest.mark.parametrize("source", ["official", "converted"])
def test_shortcut_matches_reference_as_shipped(source, generators, official, converted, heads, io):
    """The shipped embedding (torch.exp here): strict where the time input is small, looser at t >= 500.

    At t = 750 the top frequencies give phases up to 750 rad, and a one-ulp difference in a float32 frequency
    near 1 shifts the phase by 4.5e-5 rad; the fixture's run rounded three of the 128 frequencies differently
    from this CPU, which moves next_feat by up to ~3e-5 (next_logits ~7e-5). Rows with mask ratio 0.1 are not
    affected and meet atol 1e-5 + rtol 1e-5.
    """
    gen = generators[source]
    network = _shortcut_for(source, official, converted, gen, heads)
    data = io["maskgit_shortcut"]
    feature, logits = _run_shortcut(gen, network, data)
    small_t = data["mask_ratio"] * 1000 < 200
    assert small_t.any()
    close(feature[small_t], data["next_feat"][small_t], "next_feat (t < 200)")
    close(logits[small_t], data["next_logits"][small_t], "next_logits (t < 200)")
    close(feature, data["next_feat"], "next_feat (all rows)", atol=5e-5)
    close(logits, data["next_logits"], "next_logits (all rows)", atol=1.5e-4)


def test_official_shortcut_has_no_identity_and_fits_any_maskgit(generators, official, converted, heads):
    from shortcut_core.files import read_metadata

    assert read_metadata(converted["shortcut"])["generator"] == ""
    for gen in generators.values():
        network = mo.load_official_shortcut(converted["shortcut"], gen)
        assert network.config.feature_dim == gen.feature_dim


def test_shortcut_refused_on_wrong_feature_size(official, tmp_path, meta):
    gen = _tiny_generator(hidden=32, grid=4, codebook=meta["maskgit_base_config"]["codebook_size"])
    with pytest.raises(ShortcutError, match="features of size"):
        mo.load_official_shortcut(official["shortcut"], gen, heads=4)


# ----------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------

def test_converted_files_record_what_they_are(converted, official, meta, heads):
    from safetensors import safe_open
    from shortcut_core.files import read_metadata

    transformer = read_metadata(converted["transformer"])
    assert transformer["format"] == mo.OFFICIAL_FORMAT and transformer["kind"] == mo.KIND_TRANSFORMER
    assert transformer["source"] == official["transformer"].name
    cfg = meta["maskgit_base_config"]
    assert transformer["config"]["heads"] == heads["base"]
    assert transformer["config"]["hidden_dim"] == cfg["hidden_dim"] and transformer["config"]["depth"] == cfg["depth"]
    assert transformer["config"]["grid"] == cfg["f_factor"]
    vqgan = read_metadata(converted["vqgan"])
    assert vqgan["kind"] == mo.KIND_VQGAN and vqgan["source"] == "last.ckpt"
    assert VQConfig(**vqgan["config"]) == VQConfig.from_taming(meta["vqgan_config"])
    with safe_open(str(converted["vqgan"]), framework="pt") as handle:
        assert not any(k.startswith("loss.") for k in handle.keys())
    with safe_open(str(converted["transformer"]), framework="pt") as handle:
        assert "tok_emb.weight" in handle.keys() and not any("optimizer" in k for k in handle.keys())
    shortcut = read_metadata(converted["shortcut"])
    assert shortcut["format"] == "migm-shortcut" and shortcut["config"]["num_heads"] == heads["shortcut"]


def test_convert_refuses_bad_requests(official, converted, tmp_path):
    assert cli.main(["convert", str(converted["transformer"]), str(tmp_path / "again.safetensors")]) == 2
    assert cli.main(["convert", str(official["transformer"]), str(tmp_path / "out.pt")]) == 2
    assert cli.main(["convert", str(official["vqgan"]), str(tmp_path / "x.safetensors"), "--kind", "shortcut"]) == 2
    target = tmp_path / "exists.safetensors"
    target.write_bytes(b"x")
    assert cli.main(["convert", str(official["transformer"]), str(target)]) == 2
    assert cli.main(["convert", str(official["transformer"]), str(target), "--force", "--heads", "4"]) == 0


def test_convert_vqgan_without_yaml_says_what_to_do(fixtures, tmp_path, capsys):
    assert cli.main(["convert", str(fixtures / "vqgan.ckpt"), str(tmp_path / "v.safetensors")]) == 2
    assert "model.yaml" in capsys.readouterr().err
    assert not (tmp_path / "v.safetensors").exists()


def test_convert_folder_to_one_generator_file(official, tmp_path, io, heads, generators):
    out = tmp_path / "maskgit_tiny.safetensors"
    assert cli.main(["convert", str(official["root"]), str(out), "--heads", str(heads["base"])]) == 0
    gen = load_generator(str(out), device="cpu", dtype="fp32")
    assert gen.identity == generators["official"].identity
    data = io["maskgit_base"]
    with torch.no_grad():
        feature = gen.transformer.features(data["code"].flatten(1),
                                           gen.transformer.class_tokens(data["y"], data["drop_label"].bool()))
    close(feature, data["last_feat"], "last_feat from the one-file generator")


# ----------------------------------------------------------------------------------------------------------------
# Identity, settings, classes
# ----------------------------------------------------------------------------------------------------------------

def test_identity_is_stable_for_the_same_weights(generators, official, converted, tmp_path, heads, io, meta):
    official_id, converted_id = generators["official"].identity, generators["converted"].identity
    assert official_id == converted_id
    # maskgit<px>-: px = token grid side (the reference codes' shape) x the VQGAN's downsampling (2 per ch_mult level)
    side = io["maskgit_base"]["code"].shape[-1]
    downsampling = 2 ** (len(meta["vqgan_config"]["ddconfig"]["ch_mult"]) - 1)
    assert official_id.startswith(f"maskgit{side * downsampling}-")
    renamed = tmp_path / "renamed.pth"
    shutil.copy(official["transformer"], renamed)
    assert mo.load_maskgit(renamed, official["vqgan"], heads=heads["base"]).identity == official_id
    changed = torch.load(official["transformer"], weights_only=True)
    changed["model_state_dict"]["last_layer.2.weight"][0, 0] += 1e-3
    torch.save(changed, tmp_path / "changed.pth")
    assert mo.load_maskgit(tmp_path / "changed.pth", official["vqgan"], heads=heads["base"]).identity != official_id


def test_fixture_generator_defaults_are_the_256_reference(generators):
    assert generators["official"].default_settings == mo.REFERENCE_SETTINGS[256]
    settings = SamplerSettings(**generators["official"].default_settings)
    assert (settings.steps, settings.cfg_scale, settings.r_temp, settings.sm_temp) == (8, 3.0, 4.5, 1.0)
    assert settings.schedule == "arccos" and settings.cfg_ramp


def test_reference_settings_by_resolution():
    assert mo.reference_settings(32) == {"steps": 15, "cfg_scale": 2.8, "r_temp": 7.0, "sm_temp": 1.0,
                                         "schedule": "arccos", "cfg_ramp": True}
    assert mo.reference_settings(16) == {"steps": 8, "cfg_scale": 3.0, "r_temp": 4.5, "sm_temp": 1.0,
                                         "schedule": "arccos", "cfg_ramp": True}


def test_imagenet_class_names():
    assert len(IMAGENET_CLASSES) == 1000 and len(set(IMAGENET_CLASSES)) == 1000
    assert IMAGENET_CLASSES[:5] == ("tench", "goldfish", "great white shark", "tiger shark", "hammerhead")
    assert IMAGENET_CLASSES[207] == "golden retriever" and IMAGENET_CLASSES[281] == "tabby"
    assert IMAGENET_CLASSES[388] == "giant panda" and IMAGENET_CLASSES[999] == "toilet tissue"
    assert class_index(" Goldfish ") == 1 and class_index("crane") == 517 and class_index("crane bird") == 134


# ----------------------------------------------------------------------------------------------------------------
# Tiny random models in the real formats (grid 16/32, 1000 classes)
# ----------------------------------------------------------------------------------------------------------------

TINY_VQ = VQConfig(n_embed=16, embed_dim=8, z_channels=8, ch=32, ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1,
                   attn_resolutions=[16], resolution=256)


def _tiny_generator(hidden=16, grid=4, codebook=16, nclass=10, heads=4) -> MaskGITGenerator:
    torch.manual_seed(0)
    cfg = MaskGITConfig(grid=grid, hidden_dim=hidden, codebook_size=codebook, depth=1, heads=heads,
                        mlp_dim=2 * hidden, nclass=nclass)
    vq = VQModel(VQConfig(n_embed=codebook, embed_dim=8, z_channels=8, ch=32, ch_mult=[1], num_res_blocks=1,
                          attn_resolutions=[], resolution=16), with_encoder=False)
    return MaskGITGenerator(MaskTransformer(cfg), vq, identity="tiny")


def write_official_files(folder: Path, grid: int, hidden: int = 32, depth: int = 1, heads: int = 4,
                         mlp: int = 64, nclass: int = 1000, vq: VQConfig = TINY_VQ, shortcut_blocks: int = 1,
                         name: str = "MaskGIT_ImageNet_512.pth", optimizer: bool = True) -> dict:
    """Random weights saved exactly as the released files are: pretrained_maskgit/{MaskGIT,VQGAN} + shortcut."""
    torch.manual_seed(grid)
    root = folder / "pretrained_maskgit"
    (root / "MaskGIT").mkdir(parents=True, exist_ok=True)
    (root / "VQGAN").mkdir(exist_ok=True)
    cfg = MaskGITConfig(grid=grid, hidden_dim=hidden, codebook_size=vq.n_embed, depth=depth, heads=heads,
                        mlp_dim=mlp, nclass=nclass)
    transformer = MaskTransformer(cfg)
    state = transformer.state_dict()
    opt = {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(state["tok_emb.weight"])}},
           "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.96), "params": [0]}]} if optimizer else {}
    torch.save({"iter": 1_500_000, "global_epoch": 380, "model_state_dict": state, "optimizer_state_dict": opt},
               root / "MaskGIT" / name)
    vqgan = VQModel(vq, with_encoder=True)
    vq_state = dict(vqgan.state_dict())
    vq_state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    vq_state["loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(4, 3, 3, 3)
    torch.save({"epoch": 3, "global_step": 100, "state_dict": vq_state, "optimizer_states": [{}], "lr_schedulers": []},
               root / "VQGAN" / "last.ckpt")
    ddconfig = {k: getattr(vq, k) for k in ("double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch",
                                            "ch_mult", "num_res_blocks", "attn_resolutions", "dropout")}
    (root / "VQGAN" / "model.yaml").write_text(yaml.safe_dump(
        taming_yaml({"ddconfig": ddconfig, "n_embed": vq.n_embed, "embed_dim": vq.embed_dim})))
    shortcut = ShortcutNetwork(ShortcutConfig(feature_dim=hidden, bottleneck_ratio=2, n_blocks=shortcut_blocks,
                                              num_heads=16 if hidden % 32 == 0 else 1))
    (folder / "MaskGIT-Shortcut").mkdir(exist_ok=True)
    torch.save(shortcut.state_dict(), folder / "MaskGIT-Shortcut" / "maskgit-shortcut.pth")
    return {"root": root, "transformer": root / "MaskGIT" / name, "vqgan": root / "VQGAN" / "last.ckpt",
            "shortcut": folder / "MaskGIT-Shortcut" / "maskgit-shortcut.pth", "state": state}


def test_official_layout_512_with_shortcut_and_paper_preset(tmp_path, meta):
    files = write_official_files(tmp_path / "weights", grid=32)
    gen = load_generator(str(tmp_path / "weights"), device="cpu", dtype="fp32")  # the folder holding pretrained_maskgit
    assert isinstance(gen, MaskGITGenerator)
    assert gen.grid_size == (32, 32) and gen.num_classes == 1000 and gen.codebook_size == TINY_VQ.n_embed
    assert gen.identity.startswith("maskgit512-")
    assert gen.class_names[1] == "goldfish" and len(gen.class_names) == 1000
    assert {k: v for k, v in gen.default_settings.items() if k != "shortcut"} == mo.REFERENCE_SETTINGS[512]
    assert Path(gen.default_settings["shortcut"]) == files["shortcut"].resolve()
    shortcut = mo.load_official_shortcut(gen.default_settings["shortcut"], gen)
    settings = apply_preset(SamplerSettings(seed=3), "maskgit512-N15-B7")
    result = sample(gen, Condition(labels=[class_index("goldfish")]), settings, shortcut=shortcut)
    assert result.full_steps == meta["official_full_steps"]["15,7"]
    assert (result.base_calls, result.shortcut_calls) == (7, 8)
    assert int(result.decode_order.min()) >= 0  # every token decoded
    # same weights through the single-file rule (../VQGAN) give the same identity
    assert mo.load_path(files["transformer"]).identity == gen.identity


def test_official_layout_256_defaults_and_no_shortcut_default(tmp_path):
    files = write_official_files(tmp_path, grid=16, name="MaskGIT_ImageNet_256.pth")
    gen = load_generator(str(files["root"]), device="cpu", dtype="fp32")
    assert gen.identity.startswith("maskgit256-")
    assert gen.default_settings == mo.REFERENCE_SETTINGS[256]  # the released shortcut is for 512 only
    assert preset_names(gen) == [n for n in PRESETS if n.startswith("maskgit256")]
    assert check_preset("maskgit256-N8", gen) is None and "maskgit512" in check_preset("maskgit512-N15-B7", gen)


def test_lightning_metadata_is_skipped_without_running_it(tmp_path, fixtures, meta):
    """Taming-era Lightning checkpoints pickle callback classes; they load as inert placeholders, never run."""
    marker = tmp_path / "lightning_ran"
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __setstate__(self, state):
            marker.write_text("ran")

    ModelCheckpoint.__module__ = module.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", module.__name__]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = module if n == module.__name__ else types.ModuleType(n)
    try:
        callback = ModelCheckpoint()
        callback.best_model_path = "/somewhere/last.ckpt"
        ckpt = torch.load(fixtures / "vqgan.ckpt", weights_only=True)
        ckpt["callbacks"] = {ModelCheckpoint: {"best_model_score": torch.tensor(0.1)}}
        ckpt["checkpoint_callback"] = callback
        folder = tmp_path / "VQGAN"
        folder.mkdir()
        torch.save(ckpt, folder / "last.ckpt")
        assert any("pytorch_lightning" in g for g in torch.serialization.get_unsafe_globals_in_checkpoint(
            str(folder / "last.ckpt")))
        (folder / "model.yaml").write_text(yaml.safe_dump(taming_yaml(meta["vqgan_config"])))
        vq, info = mo.load_vqgan(folder / "last.ckpt")
    finally:
        for n, old in saved.items():
            if old is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = old
    assert info["config_source"].endswith("model.yaml")
    assert not marker.exists()
    assert vq.quantize.embedding.weight.shape[0] == meta["vqgan_config"]["n_embed"]


# ----------------------------------------------------------------------------------------------------------------
# Path rule and actionable errors
# ----------------------------------------------------------------------------------------------------------------

def test_path_loader_official_folder_and_single_file(official, converted, generators, tmp_path, io):
    root = tmp_path / "pretrained_maskgit"
    (root / "MaskGIT").mkdir(parents=True)
    (root / "VQGAN").mkdir()
    shutil.copy(converted["transformer"], root / "MaskGIT" / "MaskGIT_ImageNet_256.safetensors")
    shutil.copy(converted["transformer"], root / "MaskGIT" / "MaskGIT_ImageNet_512.safetensors")
    shutil.copy(official["transformer"], root / "MaskGIT" / "MaskGIT_ImageNet_512.pth")
    shutil.copy(converted["vqgan"], root / "VQGAN" / "last.safetensors")
    expected = generators["converted"].identity
    gen = load_generator(str(root), device="cpu", dtype="fp32")
    assert Path(gen.sources["transformer"]).name == "MaskGIT_ImageNet_512.safetensors"  # 512 first, safetensors first
    assert gen.identity == expected
    single = load_generator(str(root / "MaskGIT" / "MaskGIT_ImageNet_256.safetensors"), device="cpu", dtype="fp32")
    assert Path(single.sources["vqgan"]) == (root / "VQGAN" / "last.safetensors").resolve()
    assert single.identity == expected
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(converted["transformer"], flat / "maskgit.safetensors")
    shutil.copy(converted["vqgan"], flat / "vqgan.safetensors")
    assert load_generator(str(flat / "maskgit.safetensors"), device="cpu", dtype="fp32").identity == expected


def test_cli_sample_with_official_folder(official, tmp_path, capsys, heads):
    # the fixture's 4 heads must come from a converted file: put one in an official layout
    root = tmp_path / "pretrained_maskgit"
    (root / "MaskGIT").mkdir(parents=True)
    assert cli.main(["convert", str(official["transformer"]), str(root / "MaskGIT" / "MaskGIT_tiny.safetensors"),
                     "--heads", str(heads["base"])]) == 0
    shutil.copytree(official["root"] / "VQGAN", root / "VQGAN")
    out = tmp_path / "img.png"
    assert cli.main(["sample", "--generator", str(root), "--classes", "1,2", "--device", "cpu", "--out", str(out),
                     "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 8 and summary["base_calls"] == 8 and out.is_file()


def test_missing_pieces_give_actionable_errors(official, converted, tmp_path, fixtures):
    root = tmp_path / "pretrained_maskgit"
    (root / "MaskGIT").mkdir(parents=True)
    with pytest.raises(ShortcutError, match=r"MaskGIT_ImageNet_512\.pth.*llvictorll/Maskgit-pytorch"):
        load_generator(str(root), device="cpu", dtype="fp32")
    shutil.copy(converted["transformer"], root / "MaskGIT" / "MaskGIT_ImageNet_512.safetensors")
    with pytest.raises(ShortcutError, match=r"no VQGAN.*last\.ckpt and model\.yaml"):
        load_generator(str(root), device="cpu", dtype="fp32")
    lonely = tmp_path / "lonely" / "MaskGIT_ImageNet_512.safetensors"
    lonely.parent.mkdir()
    shutil.copy(converted["transformer"], lonely)
    with pytest.raises(ShortcutError, match=r"no VQGAN found.*Looked for"):
        load_generator(str(lonely), device="cpu", dtype="fp32")
    # a non-standard VQGAN without its model.yaml
    (root / "VQGAN").mkdir()
    shutil.copy(fixtures / "vqgan.ckpt", root / "VQGAN" / "last.ckpt")
    with pytest.raises(ShortcutError, match=r"model\.yaml"):
        load_generator(str(root), device="cpu", dtype="fp32")
    # wrong kinds of file given as the generator
    with pytest.raises(ShortcutError, match="VQGAN"):
        load_generator(str(official["vqgan"]), device="cpu", dtype="fp32")
    with pytest.raises(ShortcutError, match="shortcut"):
        load_generator(str(official["shortcut"]), device="cpu", dtype="fp32")
    # a VQGAN whose codebook does not split the transformer's table
    with pytest.raises(ShortcutError, match="does not belong"):
        mo.load_maskgit(official["transformer"], _write_vq_with_codebook(tmp_path, 64))
    # unrelated folders are not this loader's business
    assert mo.load_path(tmp_path / "lonely") is None


def _write_vq_with_codebook(folder: Path, codebook: int) -> Path:
    cfg = VQConfig(n_embed=codebook, embed_dim=8, z_channels=8, ch=32, ch_mult=[1], num_res_blocks=1,
                   attn_resolutions=[], resolution=16)
    path = folder / "vq_other.safetensors"
    mo.save_converted_vqgan(path, VQModel(cfg, with_encoder=False).state_dict(), cfg, "other.ckpt")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Safe loading
# ----------------------------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this would create ``path`` (io.open(path, 'w'))."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("layout", ["zip", "legacy", "raw-pickle"])
def test_code_running_pickles_are_refused(layout, tmp_path, fixtures, official):
    marker = tmp_path / "pwned"
    base = torch.load(fixtures / "maskgit_base.pth", weights_only=True)
    transformer_file = tmp_path / "MaskGIT_ImageNet_512.pth"
    vqgan_file = tmp_path / "last.ckpt"
    shortcut_file = tmp_path / "maskgit-shortcut.pth"
    payloads = {
        transformer_file: {**base, "optimizer_state_dict": {"state": _Payload(marker)}},
        vqgan_file: {"state_dict": {"quantize.embedding.weight": torch.zeros(2, 2)}, "callbacks": _Payload(marker)},
        shortcut_file: {"blocks.0.x": torch.zeros(1), "proj_out.weight": _Payload(marker)},
    }
    for path, obj in payloads.items():
        if layout == "raw-pickle":
            path.write_bytes(pickle.dumps(obj, protocol=2))
        else:
            torch.save(obj, path, _use_new_zipfile_serialization=layout == "zip")
    calls = [
        lambda: mo.load_transformer(transformer_file),
        lambda: mo.load_path(transformer_file),
        lambda: load_generator(str(transformer_file), device="cpu", dtype="fp32"),
        lambda: mo.load_vqgan(vqgan_file),
        lambda: mo.load_maskgit(official["transformer"], vqgan_file),
        lambda: mo.load_official_shortcut(shortcut_file),
    ]
    for call in calls:
        with pytest.raises(ShortcutError, match="refused"):
            call()
    for path in payloads:
        assert cli.main(["convert", str(path), str(tmp_path / f"{path.stem}.safetensors")]) == 2
    assert not marker.exists()


@pytest.mark.parametrize("name", ["transformer", "vqgan", "shortcut"])
@pytest.mark.parametrize("fmt", ["official", "converted"])
def test_truncated_files_give_a_clear_error(name, fmt, official, converted, tmp_path):
    source = official[name] if fmt == "official" else converted[name]
    broken = tmp_path / f"broken_{source.name}"
    data = source.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    loaders = {"transformer": lambda: mo.load_transformer(broken, heads=4),
               "vqgan": lambda: mo.load_vqgan(broken, official["root"] / "VQGAN" / "model.yaml"),
               "shortcut": lambda: mo.load_official_shortcut(broken, heads=4)}
    with pytest.raises(ShortcutError) as err:
        loaders[name]()
    assert broken.name in str(err.value)
    assert "truncated" in str(err.value) or "corrupted" in str(err.value)
    assert cli.main(["convert", str(broken), str(tmp_path / "out.safetensors"), "--kind", name]) == 2


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ShortcutError, match="not found"):
        mo.load_transformer(tmp_path / "nope.pth")


# ----------------------------------------------------------------------------------------------------------------
# Schedules and presets against the reference
# ----------------------------------------------------------------------------------------------------------------

def test_official_full_steps_and_arccos_schedule(meta):
    for key, expected in meta["official_full_steps"].items():
        steps, budget = (int(v) for v in key.split(","))
        assert full_steps(steps, budget) == expected, key
    for key, expected in meta["arccos_tokens_per_step"].items():
        steps, tokens = (int(v) for v in key.split(","))
        assert tokens_per_step(steps, tokens, "arccos") == expected, key


def test_presets_reproduce_the_paper_runs(meta):
    for name in ("maskgit512-N15-B7", "maskgit512-N15-B8", "maskgit512-N32-B8", "maskgit512-N32-B9",
                 "maskgit512-N32-B12"):
        settings = apply_preset(SamplerSettings(seed=11, autocast="bf16"), name)
        settings.validate()
        key = f"{settings.steps},{settings.budget}"
        assert name.endswith(f"N{settings.steps}-B{settings.budget}")
        assert settings.full_step_list() == meta["official_full_steps"][key]
        assert (settings.cfg_scale, settings.r_temp, settings.sm_temp, settings.schedule) == (2.8, 7.0, 1.0, "arccos")
        assert settings.cfg_ramp and settings.seed == 11 and settings.autocast == "bf16"
        assert needs_shortcut(name)
    vanilla = apply_preset(SamplerSettings(budget=3, full_steps=[0, 1, 2]), "maskgit512-N15")
    assert vanilla.resolved_budget() == vanilla.steps == 15 and vanilla.full_steps is None
    assert not needs_shortcut("maskgit256-N8")
    small = apply_preset(None, "maskgit256-N8")
    assert (small.steps, small.cfg_scale, small.r_temp) == (8, 3.0, 4.5)
    assert apply_preset(small, None) == small and apply_preset(small, "none") == small
    with pytest.raises(ShortcutError, match="maskgit512-N15-B7"):
        get_preset("maskgit512-N99")


# ----------------------------------------------------------------------------------------------------------------
# Full size (SHORTCUT_SLOW=1)
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(os.environ.get("SHORTCUT_SLOW") != "1",
                    reason="full-size MaskGIT-512 + VQGAN on CPU takes minutes and ~2 GB of disk; set SHORTCUT_SLOW=1")
def test_full_size_maskgit512_official_formats_sample_15_7(tmp_path, meta):
    files = write_official_files(tmp_path, grid=32, hidden=768, depth=24, heads=16, mlp=3072, nclass=1000,
                                 vq=VQConfig(), shortcut_blocks=1)
    del files["state"]
    gen = load_generator(str(tmp_path), device="cpu", dtype="fp32")
    cfg = gen.transformer.config
    assert (cfg.hidden_dim, cfg.depth, cfg.heads, cfg.mlp_dim, cfg.grid, cfg.nclass, cfg.codebook_size) == \
        (768, 24, 16, 3072, 32, 1000, 1024)
    assert gen.identity.startswith("maskgit512-")
    params = sum(p.numel() for p in gen.transformer.parameters())
    assert abs(params - 176.3e6) < 0.5e6, params  # 174.2 M + position embedding and per-position bias
    shortcut = mo.load_official_shortcut(gen.default_settings["shortcut"], gen)
    assert shortcut.config.num_heads == 16 and shortcut.config.hidden_dim == 384
    assert abs(shortcut.network.num_parameters() - 5.08e6) < 0.02e6, shortcut.network.num_parameters()
    settings = apply_preset(SamplerSettings(**{k: v for k, v in gen.default_settings.items() if k != "shortcut"}),
                            "maskgit512-N15-B7")
    result = sample(gen, Condition(labels=[class_index("tabby")]), settings, shortcut=shortcut)
    assert result.full_steps == meta["official_full_steps"]["15,7"]
    assert (result.base_calls, result.shortcut_calls) == (7, 8)
    with torch.no_grad():
        image = gen.decode(result.codes)
    assert image.shape == (1, 3, 512, 512) and torch.isfinite(image).all()
    print(f"full size: base call {result.base_call_ms:.0f} ms, shortcut call {result.shortcut_call_ms:.0f} ms")
