"""Lumina-DiMOO backend (issue 7): our LLaDA / DiMOO-Shortcut code against the official code's golden fixtures,
and the whole path (folder -> tokens -> sampler -> image) on a tiny random DiMOO-shaped folder.

Tolerances, and where they come from:
* ``SINGLE`` (atol 1e-5, rtol 1e-5): fixture README / meta.json ``tolerance.single_call`` -- one fp32 CPU call fed
  the recorded inputs (base forward, one shortcut call, their intermediates, the sliced image head).
* ``CHAINED`` (atol 1e-4, rtol 1e-4): meta.json ``tolerance.cfg_logits_and_chained_rollout`` -- CFG logits
  ((1+4)c - 4u amplifies differences ~9x) and shortcut features fed our own previous outputs.
* ``PAD`` (atol 1e-5, rtol 0): padded batch vs. the same row alone, both ours. Masked keys get exactly zero
  weight, but a longer padded reduction and other GEMM shapes round differently (observed ~1e-6), so exact
  equality of floats is not guaranteed; 1e-5 is the single-call budget.
* integers, bools and sampled tokens: exact.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from shortcut_core import cli
from shortcut_core.files import safetensors_files
from shortcut_core.backends import dimoo
from shortcut_core.backends.dimoo import (DimooGenerator, DimooShortcut, DimooTokens, check_memory, load_bytes,
                                          load_llada_transformer)
from shortcut_core.generator import Condition, NewTokens, ShortcutError
from shortcut_core.registry import load_generator
from shortcut_core.sampler import SamplerSettings, sample
from shortcut_core.schedules import full_steps, tokens_per_step
from shortcut_core.shortcut import build_shortcut, shortcut_class
from shortcut_core.weights import load_shortcut, save_shortcut

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("SHORTCUT_FIXTURES_DIMOO", REPO / "tests" / "fixtures" / "upstream_dimoo"))
SINGLE = dict(atol=1e-5, rtol=1e-5)
CHAINED = dict(atol=1e-4, rtol=1e-4)
PAD = dict(atol=1e-5, rtol=0.0)
PROMPT = "fixture prompt"  # the stub tokenizer maps its template text to the recorded prompt ids

needs_fixtures = pytest.mark.skipif(not (FIXTURES / "meta.json").is_file(),
                                    reason=f"DiMOO fixtures not found at {FIXTURES} (set SHORTCUT_FIXTURES_DIMOO)")


def close(actual, expected, tol, what):
    actual, expected = actual.detach().float(), expected.detach().float()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, **tol), f"{what}: max abs error {err:.3g} beyond {tol}"
    return err


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest and immune to OpenMP stalls on a busy machine (the fixtures were
    recorded with one thread too). Restored afterwards for other test files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------------------
# golden fixtures from the official code


@pytest.fixture(scope="module")
def meta():
    return json.loads((FIXTURES / "meta.json").read_text())


@pytest.fixture(scope="module")
def tensors():
    return {name: load_file(str(FIXTURES / f"{name}_io.safetensors")) for name in ("base", "shortcut", "trajectory")}


@pytest.fixture(scope="module")
def base(meta):
    return load_llada_transformer(FIXTURES / meta["base_checkpoint"]["folder"], "cpu", torch.float32)


@pytest.fixture(scope="module")
def shortcut_net(meta):
    state = torch.load(str(FIXTURES / "dimoo_shortcut_tiny.pth"), map_location="cpu", weights_only=True)
    config = DimooShortcut.config_from_state_dict(state, num_heads=meta["shortcut_config"]["n_heads"])
    net = build_shortcut(config)
    net.load_state_dict(state, strict=True)
    return net.eval()


class StubTokenizer:
    """Maps the exact prompt texts the generator builds to the fixture's recorded ids (no tokenizer files there)."""

    def __init__(self, table):
        self.table = table

    def __call__(self, text):
        return {"input_ids": list(self.table[text])}


def fixture_tokens(meta) -> DimooTokens:
    t = meta["tokens"]
    return DimooTokens(mask=t["mask_token"], newline=t["newline_token"], boi=t["boi"], eoi=t["eoi"],
                       boa=t["answer_start"], eoa=t["answer_end"], uncondition=t["uncondition"],
                       image_token_offset=t["image_token_offset"], pad=t["eos_pad"])


@pytest.fixture(scope="module")
def fixture_generator(meta, base):
    p = meta["prompt"]
    table = {DimooGenerator.prompt_text(PROMPT): p["con_prompt_token"],
             DimooGenerator.prompt_text("<uncondition>"): p["uncon_prompt_token"]}
    scale = 16
    gen = DimooGenerator(base, None, StubTokenizer(table), fixture_tokens(meta), identity="fixture",
                         image_size=(p["grid_W"] * scale, p["grid_H"] * scale),
                         codebook_size=meta["tokens"]["codebook_size"], vq_scale=scale)
    return gen.eval()


@needs_fixtures
def test_base_forward_matches_official(base, tensors, meta):
    io = tensors["base"]
    errors = {}
    for branch in ("cond", "uncond"):
        hidden = []
        feature = base.features(io[f"{branch}.input_ids"], hidden=hidden)
        logits = base.logits(feature)
        close(hidden[0], io[f"{branch}.embed"], SINGLE, f"{branch}.embed")
        for i in range(meta["llada_config"]["n_layers"]):
            close(hidden[i + 1], io[f"{branch}.block_out.{i}"], SINGLE, f"{branch}.block_out.{i}")
        errors[branch] = (close(feature, io[f"{branch}.last_hidden"], SINGLE, f"{branch}.last_hidden"),
                          close(logits, io[f"{branch}.logits"], SINGLE, f"{branch}.logits"))
    print("base max abs errors (last_hidden, logits):", errors)


def write_sharded(folder: Path, state: dict, shards: int = 2) -> None:
    """``state`` saved the way a full-size ``save_pretrained`` does: ``model-0000i-of-0000n.safetensors`` files and
    ``model.safetensors.index.json`` mapping every tensor to its file."""
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        names = keys[i * len(keys) // shards:(i + 1) * len(keys) // shards]
        save_file({k: state[k] for k in names}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in names})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@needs_fixtures
def test_sharded_and_single_file_load_the_same(base, meta, tmp_path):
    """The fixture's single-file checkpoint re-saved sharded here (so any fixture folder of this format works)."""
    single = FIXTURES / meta["base_checkpoint"]["folder"]
    sharded_dir = tmp_path / "sharded"
    sharded_dir.mkdir()
    for path in single.glob("*.json"):
        shutil.copy(path, sharded_dir / path.name)
    write_sharded(sharded_dir, load_file(str(single / "model.safetensors")))
    assert len(safetensors_files(sharded_dir)) > 1
    sharded = load_llada_transformer(sharded_dir, "cpu", torch.float32)
    a, b = base.state_dict(), sharded.state_dict()
    assert a.keys() == b.keys()
    assert set(meta["base_checkpoint"]["state_dict_keys"]) == {"model.transformer." + k for k in a}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not any(p.is_meta for p in sharded.parameters())


@needs_fixtures
def test_generator_layout_and_padded_batch_match_official(fixture_generator, tensors, meta):
    """Our prompt layout gives the recorded sequences; cond + uncond run as ONE right-padded batch (uncond is 2
    tokens shorter) still give the official per-row features and image logits."""
    gen, io = fixture_generator, tensors["base"]
    ctx = gen.prepare(Condition(prompts=[PROMPT]), 1, guidance=True)
    length = gen.num_tokens
    codes = torch.zeros(1, length, dtype=torch.long)
    masked = torch.ones(1, length, dtype=torch.bool)
    ids = gen.sequence_ids(codes, masked, ctx)
    lengths = ctx.lengths
    assert torch.equal(ids[0, : lengths[0]], io["cond.input_ids"][0])
    assert torch.equal(ids[1, : lengths[1]], io["uncond.input_ids"][0])
    assert lengths[1] < lengths[0] and ctx.padding is not None
    assert torch.equal(ctx.padding, torch.arange(ids.shape[1])[None] >= torch.tensor(lengths)[:, None])
    assert ctx.prompt_lengths[0] + 2 == meta["prompt"]["code_start"]
    vq_mask = io["cond.input_ids"][0] == meta["tokens"]["mask_token"]
    single = gen.prepare(Condition(prompts=[PROMPT]), 1, guidance=False)
    assert torch.equal(gen.image_positions(single)[0], vq_mask.nonzero()[:, 0])
    positions = gen.image_positions(ctx)  # cond and uncond prompts differ in length: different positions per row
    assert torch.equal(positions[0] - positions[1], torch.full_like(positions[0], lengths[0] - lengths[1]))

    offset, k = meta["tokens"]["image_token_offset"], meta["tokens"]["codebook_size"]
    for mode in ("padded", "by_length"):  # one masked call, then one unmasked call per row length (official way)
        gen.row_batching = mode
        feature = gen.features(codes, masked, ctx)
        logits = gen.head(feature, ctx, masked)
        for r, branch in enumerate(("cond", "uncond")):
            close(feature[r, : lengths[r]], io[f"{branch}.last_hidden"][0], SINGLE, f"{branch} feature")
            vq_mask = io[f"{branch}.input_ids"][0] == meta["tokens"]["mask_token"]
            expected = io[f"{branch}.logits"][0][vq_mask][:, offset:offset + k]
            close(logits[r], expected, SINGLE, f"{branch} image logits")
    gen.row_batching = "auto"


@needs_fixtures
def test_shortcut_matches_official(shortcut_net, base, tensors, meta):
    sc = tensors["shortcut"]
    net = shortcut_net
    cfg = meta["shortcut_config"]
    assert net.config.arch == "dimoo" and net.config.hidden_dim == cfg["reduced_d_model"]
    assert net.config.extra["mlp_hidden_size"] == cfg["mlp_hidden_size"]
    assert net.time_embedder.mlp[0].out_features == cfg["time_embedder"]["mid_size"]
    names = ["proj_in", "new_token_proj_in", "blocks.0.cross_attn", "blocks.0.self_attn", "ln_f", "time_embedder",
             "adaLN_modulation", "proj_out"]
    seen = {}
    hooks = [net.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o)) for n in names]
    offset, k = meta["tokens"]["image_token_offset"], meta["tokens"]["codebook_size"]
    head_w = base.ff_out.weight[offset:offset + k]
    errors, mask_logits = {}, {}
    try:
        for branch in ("cond", "uncond"):
            new_map = sc[f"{branch}.new_token_map"]
            ids = sc[f"{branch}.new_token_ids"]
            assert torch.equal(base.wte(ids), sc[f"{branch}.new_token"])
            new = NewTokens(sc[f"{branch}.new_token"], new_map.nonzero()[:, 1][None],
                            torch.ones_like(ids, dtype=torch.bool))
            out = net(sc[f"{branch}.prev_feat"], new, sc["mask_ratio"])
            errors[branch] = close(out, sc[f"{branch}.next_feat"], SINGLE, f"{branch}.next_feat")
            for n in names:
                close(seen[n], sc[f"{branch}.dbg.{n}"], SINGLE, f"{branch}.dbg.{n}")
            vq_mask = sc[f"{branch}.vq_mask"]
            mask_logits[branch] = F.linear(out[vq_mask].view(1, -1, out.shape[-1]), head_w)
            close(mask_logits[branch], sc[f"{branch}.mask_logits"], SINGLE, f"{branch}.mask_logits")
            if branch == "cond":
                half = net(sc["cond.prev_feat"], new, torch.tensor([0.5]))
                close(half, sc["cond.next_feat_at_mask_ratio_0.5"], SINGLE, "cond next_feat at mask ratio 0.5")
    finally:
        for h in hooks:
            h.remove()
    w = meta["trajectory"]["cfg_scale"]
    cfg_logits = (1 + w) * mask_logits["cond"] - w * mask_logits["uncond"]
    errors["cfg_logits"] = close(cfg_logits, sc["cfg_logits"], CHAINED, "cfg_logits")
    print("shortcut max abs errors:", errors)

    # the same two calls as ONE padded batch: feature padding masks self-attention keys, new-token padding
    # masks cross-attention keys (uncond has 1 new token, cond 12)
    prev = [sc["cond.prev_feat"][0], sc["uncond.prev_feat"][0]]
    news = [sc["cond.new_token"][0], sc["uncond.new_token"][0]]
    maps = [sc["cond.new_token_map"][0], sc["uncond.new_token_map"][0]]
    t, n = max(len(p) for p in prev), max(len(e) for e in news)
    prev_b = torch.zeros(2, t, prev[0].shape[-1])
    emb_b = torch.zeros(2, n, news[0].shape[-1])
    pos_b = torch.zeros(2, n, dtype=torch.long)
    valid_b = torch.zeros(2, n, dtype=torch.bool)
    padding = torch.ones(2, t, dtype=torch.bool)
    for r in range(2):
        prev_b[r, : len(prev[r])] = prev[r]
        emb_b[r, : len(news[r])] = news[r]
        pos_b[r, : len(news[r])] = maps[r].nonzero()[:, 0]
        valid_b[r, : len(news[r])] = True
        padding[r, : len(prev[r])] = False
    for split in (False, True):  # masked batch (CPU default), then per-row unpadded calls (CUDA default)
        net.row_split = split
        out = net(prev_b, NewTokens(emb_b, pos_b, valid_b), sc["mask_ratio"].repeat(2), padding)
        close(out[0, : len(prev[0])], sc["cond.next_feat"][0], SINGLE, f"padded batch cond (split {split})")
        close(out[1, : len(prev[1])], sc["uncond.next_feat"][0], SINGLE, f"padded batch uncond (split {split})")
    net.row_split = "auto"


@needs_fixtures
def test_official_shortcut_file_loads_through_load_shortcut(fixture_generator, meta, tmp_path):
    net = load_shortcut(FIXTURES / "dimoo_shortcut_tiny.pth", fixture_generator,
                        num_heads=fixture_generator.shortcut_num_heads)
    assert isinstance(net.network, DimooShortcut) and shortcut_class("dimoo") is DimooShortcut
    assert net.config.num_heads == meta["shortcut_config"]["n_heads"]
    # our own safetensors format keeps the full config (heads included) in its metadata
    path = tmp_path / "dimoo_shortcut.safetensors"
    net.generator_info = fixture_generator.describe()
    save_shortcut(path, net)
    again = load_shortcut(path, fixture_generator)
    assert again.config.to_dict() == net.config.to_dict()
    for (ka, va), (kb, vb) in zip(net.network.state_dict().items(), again.network.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def _gumbel(shape, rng):
    u = torch.rand(shape, generator=rng)
    return -torch.log(-torch.log(u + 1e-20) + 1e-20)


@needs_fixtures
def test_official_trajectory_replayed_with_our_components(fixture_generator, shortcut_net, tensors, meta):
    """The official loop (RNG drawn in its order) driven by OUR sequence building, features, new tokens,
    shortcut and head reproduces every recorded step and the final tokens exactly."""
    gen, net, tr, info = fixture_generator, shortcut_net, tensors["trajectory"], meta["trajectory"]
    steps, budget, w, temp = info["timesteps"], info["budget"], info["cfg_scale"], info["temperature"]
    full = full_steps(steps, budget, "official")
    assert full == info["refresh_steps"]
    for key, expected in meta["official_refresh_steps"].items():
        n, b = map(int, key.split(","))
        assert full_steps(n, b, "official") == expected
    length = gen.num_tokens
    counts = tokens_per_step(steps, length, "dimoo_cosine")
    assert [s["n_masked_at_start"] - s["keep_n"] for s in info["steps"]] == counts

    ctx = gen.prepare(Condition(prompts=[PROMPT]), 1, guidance=True)
    len_u = ctx.lengths[1]
    rng = torch.Generator().manual_seed(info["sampling_seed"])
    codes = torch.zeros(1, length, dtype=torch.long)
    masked = torch.ones(1, length, dtype=torch.bool)
    new_map = torch.zeros_like(masked)
    feature = None
    worst = {"base": 0.0, "shortcut": 0.0, "cfg": 0.0}
    for s in range(steps):
        ids = gen.sequence_ids(codes, masked, ctx)
        assert torch.equal(ids[0], tr[f"step{s}.x"][0]), f"step {s} cond sequence"
        assert torch.equal(ids[1, :len_u], tr[f"step{s}.uncond_x"][0]), f"step {s} uncond sequence"
        if s in full:
            feature = gen.features(codes, masked, ctx)
            for r, branch in enumerate(("cond", "uncond")):
                ref = tr[f"step{s}.{branch}.last_hidden"][0]
                worst["base"] = max(worst["base"], close(feature[r, : len(ref)], ref, SINGLE, f"step {s} {branch}"))
        else:
            new = gen.new_tokens(codes, new_map, ctx)
            ratio = masked.float().mean(dim=1)
            assert torch.equal(ratio, tr[f"step{s}.mask_ratio"])
            for r, branch in enumerate(("cond", "uncond")):
                ref_ids = tr[f"step{s}.{branch}.new_token_ids"][0]
                count = int(new.valid[r].sum())
                assert count == len(ref_ids) and bool(new.valid[r, :count].all())
                assert torch.equal(new.positions[r, :count], tr[f"step{s}.{branch}.new_token_map"][0].nonzero()[:, 0])
                assert torch.equal(new.embeddings[r, :count], tr[f"step{s}.{branch}.new_token"][0])
                # one call fed the recorded inputs: single-call tolerance
                rec = net(tr[f"step{s}.{branch}.prev_feat"], NewTokens(new.embeddings[r:r + 1, :count],
                          new.positions[r:r + 1, :count], new.valid[r:r + 1, :count]), ratio)
                close(rec, tr[f"step{s}.{branch}.next_feat"], SINGLE, f"step {s} {branch} shortcut call")
            feature = net(feature, new, ratio.repeat(ctx.branches), ctx.padding)  # chained on our own outputs
            for r, branch in enumerate(("cond", "uncond")):
                ref = tr[f"step{s}.{branch}.next_feat"][0]
                worst["shortcut"] = max(worst["shortcut"],
                                        close(feature[r, : len(ref)], ref, CHAINED, f"step {s} {branch} chained"))
        logits = gen.head(feature, ctx, masked)
        cond, uncond = logits[0][masked[0]], logits[1][masked[0]]
        cfg = ((1 + w) * cond - w * uncond)[None]
        worst["cfg"] = max(worst["cfg"], close(cfg, tr[f"step{s}.cfg_logits"], CHAINED, f"step {s} cfg_logits"))
        # the official sampling rule, generator consumed in the official order
        sampled = (cfg / temp + _gumbel(cfg.shape, rng)).argmax(dim=-1)
        assert torch.equal(sampled, tr[f"step{s}.sampled"]), f"step {s} sampled codes"
        conf = torch.softmax(cfg, dim=-1).gather(-1, sampled[..., None])[..., 0]
        score = torch.log(conf.clamp_min(1e-20)) + temp * _gumbel(conf.shape, rng)
        keep = int(masked.sum()) - counts[s]
        assert keep == int(tr[f"step{s}.keep_n"])
        remask = torch.zeros_like(score, dtype=torch.bool)
        remask.scatter_(1, torch.topk(score, k=keep, dim=-1, largest=False).indices, True)
        assert torch.equal(remask, tr[f"step{s}.mask_sel"]), f"step {s} re-masked positions"
        positions = masked[0].nonzero()[:, 0]
        decoded = positions[~remask[0]]
        new_map = torch.zeros_like(masked)
        new_map[0, decoded] = True
        codes[0, decoded] = sampled[0][~remask[0]]
        masked = masked & ~new_map
    assert not bool(masked.any())
    assert torch.equal(codes + meta["tokens"]["image_token_offset"], tr["final.vq_ids"])
    print("trajectory max abs errors:", worst)


# ------------------------------------------------------------------------------------------------------------
# a tiny random DiMOO-shaped folder, through the whole path


TINY_TOKENS = {"newline": 30, "pad": 31, "mask": 36, "boi": 37, "eoi": 38, "uncondition": 39, "boa": 40, "eoa": 41,
               "image_token_offset": 42}
TINY_SPECIAL = {"<system>": 32, "</system>": 33, "<user>": 34, "</user>": 35, "<uncondition>": 39}
TINY_WORDS = ["[UNK]", "Generate", "an", "image", "according", "to", "the", "text", "prompt", ".", "a", "red",
              "cat", "blue", "dog", "sitting", "on", "green", "grass", "photo", "of", "small", "house"]
TINY_CODEBOOK = 16


def build_tiny_folder(folder: Path, n_layers: int = 2) -> Path:
    from diffusers import VQModel
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    embedding = TINY_TOKENS["image_token_offset"] + TINY_CODEBOOK
    config = {"model_type": "llada", "architectures": ["LLaDAForMultiModalGeneration"], "d_model": 32,
              "n_heads": 4, "n_kv_heads": 4, "n_layers": n_layers, "mlp_hidden_size": 64, "vocab_size": embedding,
              "embedding_size": embedding, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "block_type": "llama",
              "layer_norm_type": "rms", "activation_type": "silu", "rope": True, "alibi": False,
              "include_bias": False, "include_qkv_bias": False, "weight_tying": False,
              "mask_token_id": TINY_TOKENS["mask"], "pad_token_id": TINY_TOKENS["pad"]}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / dimoo.TOKENS_FILE).write_text(json.dumps({"tokens": TINY_TOKENS}))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in dimoo.LLaDATransformer(dimoo.LLaDAConfig.from_hf(config)).state_dict().items()}
    g = torch.Generator().manual_seed(7)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight") or name == "ln_f.weight":
            value = 1 + 0.2 * torch.randn(shape, generator=g)
        elif name == "wte.weight":
            value = torch.randn(shape, generator=g)
        else:
            value = torch.randn(shape, generator=g) / math.sqrt(shape[1])
        state["model.transformer." + name] = value.to(torch.bfloat16)  # stored bf16, loaded as fp32: casts per tensor
    write_sharded(folder, state)

    vocab = {w: i for i, w in enumerate(TINY_WORDS)}
    for i in range(len(TINY_WORDS), embedding):
        vocab.setdefault(f"<unused{i}>", i)
    for token, i in TINY_SPECIAL.items():
        vocab.pop(f"<unused{i}>", None)
        vocab[token] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_SPECIAL])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(folder))

    torch.manual_seed(11)
    vq = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 5,
                 up_block_types=("UpDecoderBlock2D",) * 5, block_out_channels=(8,) * 5, layers_per_block=1,
                 latent_channels=4, num_vq_embeddings=TINY_CODEBOOK, norm_num_groups=4, vq_embed_dim=4,
                 lookup_from_codebook=True)
    vq.save_pretrained(str(folder / "vqvae"))
    return folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_folder(tmp_path_factory.mktemp("dimoo") / "Lumina-DiMOO-tiny")


@pytest.fixture(scope="module")
def tiny_generator(tiny_folder):
    gen = load_generator(str(tiny_folder), device="cpu", dtype="fp32")
    gen.set_image_size(96, 64)  # grid 4 x 6 with the 16x VQ
    return gen


@pytest.fixture(scope="module")
def tiny_shortcut(tiny_generator, tmp_path_factory):
    """Random DiMOO-Shortcut weights saved like the official file (plain state dict) and loaded back."""
    torch.manual_seed(5)
    net = build_shortcut(tiny_generator.default_shortcut_config())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))  # RMSNorm weights start at ones; move them off
    path = tmp_path_factory.mktemp("sc") / "dimoo-shortcut.pth"
    torch.save(net.state_dict(), str(path))
    return load_shortcut(path, tiny_generator, num_heads=tiny_generator.shortcut_num_heads)


def tiny_settings(gen, **overrides) -> SamplerSettings:
    base = {k: v for k, v in gen.default_settings.items() if k in SamplerSettings.__dataclass_fields__}
    base.update(steps=8, seed=3)
    base.update(overrides)
    return SamplerSettings(**base)


def test_local_folder_loads_through_the_registry(tiny_folder, tiny_generator):
    gen = tiny_generator
    assert isinstance(gen, DimooGenerator) and gen.identity.startswith("lumina-dimoo/")
    assert gen.condition_kind == "text" and gen.shortcut_arch == "dimoo"
    assert gen.grid_size == (4, 6) and gen.codebook_size == TINY_CODEBOOK and gen.dtype == torch.float32
    assert gen.tokens.to_dict() == {**gen.tokens.to_dict(), **TINY_TOKENS}
    ids = gen.prompt_ids("a red cat")
    words = {w: i for i, w in enumerate(TINY_WORDS)}
    system = [words[w] for w in ["Generate", "an", "image", "according", "to", "the", "text", "prompt", "."]]
    assert ids == [32] + system + [33, 34] + [words["a"], words["red"], words["cat"]] + [35]
    assert gen.uncond_ids() == [32] + system + [33, 34, 39, 35]
    # meta-device build + per-shard fill: every parameter real, fp32, same values as the bf16 files
    stored = {}
    for f in safetensors_files(tiny_folder):
        stored.update(load_file(str(f)))
    for name, p in gen.transformer.named_parameters():
        assert not p.is_meta and p.dtype == torch.float32
        assert torch.equal(p, stored["model.transformer." + name].float()), name
    # bf16 load: transformer bf16, VQ untouched in fp32 (the registry's .to(dtype) must not round it)
    half = load_generator(str(tiny_folder), device="cpu", dtype="bf16")
    assert half.transformer.wte.weight.dtype == torch.bfloat16
    for a, b in zip(half.vq.parameters(), gen.vq.parameters()):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    assert dimoo.load_dimoo_path(tiny_folder / "vqvae", "cpu", torch.float32) is None  # not a LLaDA folder


def test_local_end_to_end_vanilla_shortcut_and_decode(tiny_generator, tiny_shortcut):
    gen, net = tiny_generator, tiny_shortcut
    condition = Condition(prompts=["a red cat sitting on green grass"])
    vanilla = sample(gen, condition, tiny_settings(gen))
    assert vanilla.base_calls == 8 and vanilla.shortcut_calls == 0
    assert vanilla.codes.shape == (1, 24) and int(vanilla.codes.min()) >= 0 and int(vanilla.codes.max()) < 16
    same = sample(gen, condition, tiny_settings(gen, budget=8), shortcut=net)  # B = N: the vanilla sampler
    assert torch.equal(same.codes, vanilla.codes) and same.shortcut_calls == 0
    fast = sample(gen, condition, tiny_settings(gen, budget=3), shortcut=net)
    assert fast.full_steps == [0, 3, 5] and fast.base_calls == 3 and fast.shortcut_calls == 5
    assert bool((fast.decode_order >= 0).all())
    images = gen.decode(torch.cat([vanilla.codes, fast.codes]))
    assert images.shape == (2, 3, 64, 96) and images.dtype == torch.float32
    assert bool(torch.isfinite(images).all()) and float(images.min()) >= 0 and float(images.max()) <= 1
    # the image is the diffusers VQ decode of exactly these codes
    ref = gen.vq.decode(vanilla.codes.view(1, 4, 6), force_not_quantize=True, shape=(1, 4, 6, 4)).sample
    assert torch.equal(images[:1], ref.clamp(0, 1))


def test_batch_of_different_prompt_lengths_matches_each_prompt_alone(tiny_generator, tiny_shortcut):
    gen, weights = tiny_generator, tiny_shortcut
    net = weights.network
    prompts = ["a red cat", "a small blue dog sitting on green grass , photo of a house"]
    both = Condition(prompts=prompts, negative_prompts=["a photo", "a photo"])
    ctx = gen.prepare(both, 2, guidance=True)
    lengths = ctx.lengths
    assert len(set(lengths[:2])) == 2 and ctx.padding is not None  # cond rows differ, so everything is padded

    # (1) numbers: at a mid-run state, every row of the padded batch equals that row run alone (features, image
    # logits, one shortcut call). Exact float equality is not promised (see PAD at the top), 1e-5 is. Prompt 1
    # decoded nothing new, so its uncond row has no valid new token at all (zero cross-attention, no NaN).
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, gen.codebook_size, (2, gen.num_tokens), generator=g)
    masked = torch.rand(2, gen.num_tokens, generator=g) < 0.6
    new_map = ~masked & (torch.rand(2, gen.num_tokens, generator=g) < 0.5)
    new_map[1] = False
    ratio = masked.float().mean(dim=1).repeat(2)
    for mode, split in (("padded", False), ("by_length", True)):  # CPU defaults, then CUDA defaults
        gen.row_batching, net.row_split = mode, split
        feat = gen.features(codes, masked, ctx)
        logits = gen.head(feat, ctx, masked)
        new = gen.new_tokens(codes, new_map, ctx)
        assert int(new.valid[3].sum()) == 0
        out = net(feat, new, ratio, ctx.padding)
        for b in range(2):
            alone = Condition(prompts=[prompts[b]], negative_prompts=["a photo"])
            ctx1 = gen.prepare(alone, 1, guidance=True)
            assert ctx1.lengths == [lengths[b], lengths[2 + b]]
            f1 = gen.features(codes[b:b + 1], masked[b:b + 1], ctx1)
            l1 = gen.head(f1, ctx1, masked[b:b + 1])
            n1 = gen.new_tokens(codes[b:b + 1], new_map[b:b + 1], ctx1)
            o1 = net(f1, n1, ratio[b:b + 1].repeat(2), ctx1.padding)
            for branch in range(2):
                r, r1 = branch * 2 + b, branch
                t = lengths[r]
                assert int(new.valid[r].sum()) == int(n1.valid[r1].sum())
                assert bool(torch.isfinite(out[r, :t]).all())
                close(feat[r, :t], f1[r1, :t], PAD, f"{mode}: row {r} feature")
                close(logits[r][masked[b]], l1[r1][masked[b]], PAD, f"{mode}: row {r} logits")
                close(out[r, :t], o1[r1, :t], PAD, f"{mode}: row {r} shortcut")
    gen.row_batching, net.row_split = "auto", "auto"

    # (2) tokens: the sampler draws its noise for the whole batch, so a row's noise depends on the batch size
    # and a batch cannot be compared token for token with the same seed. With a noise-free setting (sm_temp huge
    # makes the Gumbel term negligible, r_temp 0, confidence from the unscaled logits) sampling is a function of
    # the logits only, and every row of the batch must give the tokens of its prompt alone.
    greedy = dict(sm_temp=1e6, r_temp=0.0, confidence="dimoo", steps=6)
    for budget, shortcut in ((None, None), (3, weights)):
        settings = tiny_settings(gen, budget=budget, **greedy)
        batch = sample(gen, both, settings, shortcut=shortcut).codes
        for b in range(2):
            alone = sample(gen, Condition(prompts=[prompts[b]], negative_prompts=["a photo"]), settings,
                           shortcut=shortcut).codes
            assert torch.equal(batch[b], alone[0]), f"prompt {b}, budget {budget}"


def test_memory_check_refuses_what_does_not_fit(tmp_path):
    real = {"model_type": "llada", "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
            "mlp_hidden_size": 12288, "vocab_size": 134548, "embedding_size": 134548, "rope_theta": 500000.0}
    report = load_bytes(real, torch.bfloat16)
    per_block = 4 * 4096 * 4096 + 3 * 4096 * 12288 + 2 * 4096
    expected = 2 * 134548 * 4096 + 32 * per_block + 4096  # wte + ff_out + blocks + ln_f
    assert report["transformer_parameters"] == expected == 8_081_805_312
    assert report["transformer_bytes"] == 2 * expected
    assert load_bytes(real, torch.float32)["transformer_bytes"] == 4 * expected
    with pytest.raises(ShortcutError, match="needs 15.05 GiB"):
        check_memory(report["total_bytes"], torch.device("cpu"), available=8 * 2 ** 30)
    check_memory(report["total_bytes"], torch.device("cpu"), available=24 * 2 ** 30)  # fits: no error
    # a folder whose config cannot fit is refused from config.json alone, before any weight is read
    huge = tmp_path / "huge"
    (huge / "vqvae").mkdir(parents=True)
    (huge / "config.json").write_text(json.dumps({**real, "n_layers": 20000}))
    with pytest.raises(ShortcutError, match="needs .* GiB on cpu"):
        load_generator(str(huge), device="cpu", dtype="fp32")


def test_tokenizer_needing_remote_code_is_refused_clearly(tiny_folder, tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_folder / "config.json").read_text())
    config = json.loads((tiny_folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="LLaDATokenizer", auto_map={"AutoTokenizer": ["tokenization_llada.LLaDATokenizer", None]})
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ShortcutError, match="needs remote code"):
        dimoo.load_tokenizer(folder)
    # with the standard tokenizer.json beside it, that file is used directly (no code is run)
    (folder / "tokenizer.json").write_text((tiny_folder / "tokenizer.json").read_text())
    assert dimoo.load_tokenizer(folder)("<user>")["input_ids"] == [TINY_SPECIAL["<user>"]]


def test_text_arguments_and_size(tiny_generator):
    gen = tiny_generator
    parser = argparse.ArgumentParser()
    cli.add_text_arguments(parser)
    args = parser.parse_args(["--prompt", "a red cat", "--prompt", "a blue dog", "--negative-prompt", "grass",
                              "--width", "64", "--height", "32"])
    condition = cli.text_condition(gen, args, batch=3)
    assert condition.prompts == ["a red cat", "a blue dog", "a red cat"]
    assert condition.negative_prompts == ["grass"] * 3
    assert gen.grid_size == (2, 4)
    with pytest.raises(ShortcutError, match="multiple of 16"):
        gen.set_image_size(100, 64)
    gen.set_image_size(96, 64)
    with pytest.raises(ShortcutError, match="--prompt"):
        cli.text_condition(gen, parser.parse_args([]))


def test_sampler_defaults_unchanged():
    settings = SamplerSettings()
    assert settings.confidence == "maskgit" and settings.schedule == "arccos" and settings.cfg_ramp
    with pytest.raises(ShortcutError, match="confidence"):
        SamplerSettings(confidence="nope").validate()
    assert tokens_per_step(64, 4096, "dimoo_cosine")[:3] == [2, 3, 7] and sum(tokens_per_step(64, 4096, "dimoo_cosine")) == 4096
