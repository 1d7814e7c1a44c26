"""aMUSEd backend (issue 8) on a tiny random aMUSEd built with diffusers' and transformers' own classes (as diffusers'
tests/pipelines/amused/test_amused.py builds them) and saved in the diffusers folder layout; nothing is downloaded.

What is checked:
* the folder loads through the registry's PATH_LOADERS (fp32 files and an fp16-variant copy, same identity);
* feature + head = ``UVit2DModel``'s logits, bit for bit on the full grid (same tensors, same memory layout, same
  1x1-conv calls). On masked positions only, the head runs the same convs on an [1, C, n, 1] map: a different GEMM
  shape may change summation order, so that path is allowed atol 1e-6 (observed 0 on CPU);
* the ``amused_cosine`` token counts equal what ``AmusedScheduler.step`` leaves masked, for many (N, L);
* a replay of diffusers' ``AmusedPipeline`` (text encoding, micro-conditioning, CFG ``u + g (c - u)``, scheduler)
  fed our sampler's draws (``torch.multinomial`` returns our tokens, ``gumbel_noise`` our confidence noise) masks
  the same positions at every step and ends on the same tokens;
* budget = steps with shortcut weights is the vanilla sampler token for token;
* record -> ``train/fit_shortcut.py`` (subprocess) -> sample with budget < steps, and the fitted shortcut beats
  "reuse the last feature" on held-out trajectories (validation MSE of the fit report).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import AmusedScheduler, UVit2DModel, VQModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection  # noqa: E402

from shortcut_core import sampler as sampler_module  # noqa: E402
from shortcut_core.backends import PATH_LOADERS  # noqa: E402
from shortcut_core.backends.amused import (AmusedGenerator, AmusedShortcut, GridNewTokens,  # noqa: E402
                                           grid_position_embedding, load_amused_path)
from shortcut_core.generator import Condition, Context, ShortcutError  # noqa: E402
from shortcut_core.recording import record  # noqa: E402
from shortcut_core.registry import load_generator  # noqa: E402
from shortcut_core.sampler import SamplerSettings, sample  # noqa: E402
from shortcut_core.schedules import tokens_per_step  # noqa: E402
from shortcut_core.shortcut import ShortcutConfig, ShortcutNetwork, build_shortcut  # noqa: E402
from shortcut_core.weights import ShortcutWeights, load_shortcut  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MASK_ID = 39  # vocab 40, codebook 32 (aMUSEd: vocab 8256, codebook 8192, mask 8255 = vocab - 1)
PROMPTS = ["a red cat", "blue sky", "a dog on grass", "green tree", "an old car", "snow", "a tall tower", "sea",
           "yellow bird", "a small house", "dark forest", "a big ship", "fire", "a white horse", "moon", "a bridge"]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_tokenizer(folder: Path) -> None:
    """A tiny CLIP BPE tokenizer: single letters (inside and at the end of a word), no merges."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: 2 + i for i, c in enumerate(letters)})
    vocab.update({c + "</w>": 2 + len(letters) + i for i, c in enumerate(letters)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16,
                                                              "tokenizer_class": "CLIPTokenizer"}))


def build_tiny_amused(folder: Path, seed: int = 0) -> Path:
    """transformer/ (UVit2DModel with down/upsampling like amused-512), vqvae/, text_encoder/, tokenizer/,
    scheduler/ in the diffusers layout. 8 x 8 token grid, 16 x 16 px images, feature width C = 32."""
    torch.manual_seed(seed)
    UVit2DModel(hidden_size=32, use_bias=False, cond_embed_dim=16, micro_cond_encode_dim=4, micro_cond_embed_dim=20,
                encoder_hidden_size=16, vocab_size=40, codebook_size=32, in_channels=24, block_out_channels=32,
                num_res_blocks=1, downsample=True, upsample=True, block_num_heads=2, num_hidden_layers=1,
                num_attention_heads=2, intermediate_size=48, sample_size=8).save_pretrained(folder / "transformer")
    VQModel(act_fn="silu", block_out_channels=[8, 8], down_block_types=["DownEncoderBlock2D"] * 2, in_channels=3,
            latent_channels=8, layers_per_block=1, norm_num_groups=8, num_vq_embeddings=32, out_channels=3,
            sample_size=16, up_block_types=["UpDecoderBlock2D"] * 2, mid_block_add_attention=False,
            lookup_from_codebook=True).save_pretrained(folder / "vqvae")
    CLIPTextModelWithProjection(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=2, vocab_size=64, projection_dim=16, max_position_embeddings=16,
    )).save_pretrained(folder / "text_encoder")
    AmusedScheduler(mask_token_id=MASK_ID).save_pretrained(folder / "scheduler")
    write_tokenizer(folder / "tokenizer")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_amused(tmp_path_factory.mktemp("amused") / "tiny-amused")


@pytest.fixture(scope="module")
def generator(folder) -> AmusedGenerator:
    return load_generator(str(folder), device="cpu", dtype="fp32")


def settings_for(generator, **overrides) -> SamplerSettings:
    fields = SamplerSettings.__dataclass_fields__
    base = {k: v for k, v in generator.default_settings.items() if k in fields}
    return SamplerSettings(**{**base, **overrides})


# ------------------------------------------------------------------------------------------------------------
# loading


def test_folder_loads_through_path_loaders(folder, generator, tmp_path):
    assert isinstance(generator, AmusedGenerator) and generator.identity.startswith("amused/")
    assert (generator.feature_dim, generator.codebook_size, generator.mask_token_id) == (32, 32, MASK_ID)
    assert generator.grid_size == (8, 8) and generator.image_size == (16, 16)
    assert generator.default_settings["steps"] == 12 and generator.default_settings["cfg_scale"] == 9.0
    assert next(generator.vq.parameters()).dtype == torch.float32
    assert load_amused_path(tmp_path, "cpu", torch.float32) is None  # not this layout: other loaders go on
    assert any(loader(folder, torch.device("cpu"), torch.float32) is not None for loader in PATH_LOADERS)

    # the fp16 variant files of the same weights: accepted, and they name the same generator
    half = tmp_path / "fp16"
    for name, cls in (("transformer", UVit2DModel), ("vqvae", VQModel)):
        cls.from_pretrained(str(folder), subfolder=name, low_cpu_mem_usage=False).half().save_pretrained(
            half / name, variant="fp16")
    CLIPTextModelWithProjection.from_pretrained(str(folder / "text_encoder")).half().save_pretrained(
        half / "text_encoder", variant="fp16")
    for name in ("tokenizer", "scheduler"):
        (half / name).mkdir(parents=True)
        for file in (folder / name).iterdir():
            (half / name / file.name).write_bytes(file.read_bytes())
    assert not list((half / "transformer").glob("diffusion_pytorch_model.safetensors"))
    loaded = load_generator(str(half), device="cpu", dtype="fp32")
    assert loaded.identity == generator.identity

    # an incomplete folder is refused with what is missing
    for file in (half / "tokenizer").iterdir():
        file.unlink()
    (half / "tokenizer").rmdir()
    with pytest.raises(ShortcutError, match="tokenizer/"):
        load_generator(str(half), device="cpu", dtype="fp32")


# ------------------------------------------------------------------------------------------------------------
# feature + head = UVit2DModel


def test_feature_and_head_reproduce_uvit_logits(generator):
    torch.manual_seed(1)
    batch, length = 2, generator.num_tokens
    ctx = generator.prepare(Condition(prompts=["a red cat", "blue sky"], negative_prompts=["dark"]), batch, True)
    codes = torch.randint(0, generator.codebook_size, (batch, length))
    masked = torch.rand(batch, length) < 0.6
    ids = torch.where(masked, torch.full_like(codes, MASK_ID), codes).repeat(2, 1).view(4, 8, 8)
    with torch.no_grad():
        reference = generator.transformer(ids, encoder_hidden_states=ctx.encoder_hidden_states,
                                          pooled_text_emb=ctx.pooled_text_emb,
                                          micro_conds=ctx.micro_conds)
        feature = generator.features(codes, masked, ctx)
        full = generator.head(feature, ctx, torch.ones_like(masked))
        partial = generator.head(feature, ctx, masked)
    expected = reference.permute(0, 2, 3, 1).reshape(4, length, -1)
    assert feature.shape == (4, length, 32)
    assert torch.equal(full, expected)
    where = masked.repeat(2, 1)
    assert torch.allclose(partial[where], expected[where], atol=1e-6, rtol=0)
    assert bool((partial[~where] == 0).all())
    # micro-conditioning as the pipeline: [width, height, crop 0, 0, aesthetic 6]
    assert ctx.micro_conds[0].tolist() == [16.0, 16.0, 0.0, 0.0, 6.0]


def test_bare_context_serves_new_tokens_and_head(generator):
    """fit_shortcut builds Context(batch, branches=1, device) with an empty ``extra``."""
    torch.manual_seed(2)
    ctx = Context(batch_size=3, branches=1, device=torch.device("cpu"))
    codes = torch.randint(0, 32, (3, 64))
    new_map = torch.rand(3, 64) < 0.2
    new = generator.new_tokens(codes, new_map, ctx)
    assert isinstance(new, GridNewTokens) and new.grid == (8, 8)
    assert new.embeddings.shape[:2] == new.positions.shape == new.valid.shape and new.embeddings.shape[2] == 32
    assert torch.equal(new.valid.sum(1), new_map.sum(1))
    # token part = transformer.embed of the ids, position part = the scaled 2-D code of the cell
    row, k = 0, 0
    pos = int(new.positions[row, k])
    expected = generator.transformer.embed(codes[row, pos].view(1, 1, 1))[0, :, 0, 0]
    expected = expected + grid_position_embedding(torch.tensor(pos), (8, 8), 32) * generator.position_scale()
    assert torch.allclose(new.embeddings[row, k], expected, atol=1e-6)
    feature = torch.randn(3, 64, 32)
    assert generator.head(feature, ctx, torch.ones(3, 64, dtype=torch.bool)).shape == (3, 64, 32)
    with pytest.raises(ShortcutError, match="prepare"):
        generator.features(codes, new_map, ctx)


# ------------------------------------------------------------------------------------------------------------
# schedule and confidence = AmusedScheduler


@pytest.mark.parametrize("length", [16, 64, 256, 1024])
def test_amused_cosine_counts_match_amused_scheduler(length):
    torch.manual_seed(3)
    for steps in (1, 2, 3, 5, 8, 12, 16, 32):
        scheduler = AmusedScheduler(mask_token_id=MASK_ID)
        scheduler.set_timesteps(steps)
        sample_ids = torch.full((1, length), MASK_ID)
        before = length
        decoded = []
        for timestep in scheduler.timesteps:
            logits = torch.randn(1, length, 32)
            sample_ids = scheduler.step(logits, int(timestep), sample_ids).prev_sample
            now = int((sample_ids == MASK_ID).sum())
            decoded.append(before - now)
            before = now
        assert decoded == tokens_per_step(steps, length, "amused_cosine"), (steps, length)


def test_sampler_replays_amused_pipeline(generator, monkeypatch):
    """Our sampler with the aMUSEd defaults vs diffusers' AmusedPipeline fed the same draws: same masks, same tokens."""
    try:
        from diffusers import AmusedPipeline  # deprecated since diffusers 0.33, still shipped in 0.42
    except ImportError:
        pytest.skip("this diffusers has no AmusedPipeline; the AmusedScheduler count test still runs")
    from diffusers.schedulers import scheduling_amused

    steps, batch, guidance = 6, 2, 10.0
    prompts, negative = ["a red cat", "a big ship"], "dark"
    gumbels, head_logits, states = [], [], []
    real_gumbel, real_head = sampler_module._gumbel, generator.head

    def recording_gumbel(shape, rng, device):
        noise = real_gumbel(shape, rng, device)
        gumbels.append(noise)
        return noise

    def recording_head(feature, ctx, masked):
        out = real_head(feature, ctx, masked)
        head_logits.append(out)
        return out

    settings = settings_for(generator, steps=steps, cfg_scale=guidance - 1, seed=7)
    monkeypatch.setattr(sampler_module, "_gumbel", recording_gumbel)
    monkeypatch.setattr(generator, "head", recording_head)
    ours = sample(generator, Condition(prompts=prompts, negative_prompts=[negative]), settings,
                  callback=lambda info: states.append(torch.where(info.masked, MASK_ID, info.codes).view(batch, 8, 8)))
    monkeypatch.undo()
    assert ours.steps_run == steps and len(gumbels) == 2 * steps

    # our sampled tokens at every position and step (the sampler's own arithmetic, repeated)
    sampled = []
    w = settings.cfg_scale
    for i in range(steps):
        logits = head_logits[i].float()
        logits = (1 + w) * logits[:batch] - w * logits[batch:]
        sampled.append((logits * settings.sm_temp + gumbels[2 * i]).argmax(-1))
    draws = iter(range(steps))
    current = {}

    def replay_multinomial(probs, num_samples, generator=None):
        i = next(draws)
        current["i"] = i
        return sampled[i].reshape(-1, 1)

    def replay_gumbel(t, generator=None):
        return gumbels[2 * current["i"] + 1].to(t.dtype)

    monkeypatch.setattr(torch, "multinomial", replay_multinomial)
    monkeypatch.setattr(scheduling_amused, "gumbel_noise", replay_gumbel)
    pipe = AmusedPipeline(vqvae=generator.vq, tokenizer=generator.tokenizer, text_encoder=generator.text_encoder,
                          transformer=generator.transformer,
                          scheduler=AmusedScheduler(mask_token_id=MASK_ID))
    pipe.set_progress_bar_config(disable=True)
    theirs_states = []
    out = pipe(prompts, negative_prompt=[negative] * batch, height=16, width=16, num_inference_steps=steps,
               guidance_scale=guidance, output_type="latent",
               callback=lambda step, timestep, latents: theirs_states.append(latents.clone()))
    monkeypatch.undo()
    for i, (mine, theirs) in enumerate(zip(states, theirs_states)):
        assert torch.equal(mine, theirs), f"step {i}: masked positions or tokens differ"
    assert torch.equal(out.images, ours.codes.view(batch, 8, 8))
    # decoding as the pipeline does (row-major grid, VQ lookup, clip to 0..1)
    with torch.no_grad():
        pixels = generator.vq.decode(out.images, force_not_quantize=True, shape=(batch, 8, 8, 8)).sample.clip(0, 1)
    assert torch.equal(generator.decode(ours.codes), pixels)


# ------------------------------------------------------------------------------------------------------------
# the shortcut in the sampler


def test_budget_equal_steps_is_vanilla_and_shortcut_steps_run(generator):
    torch.manual_seed(4)
    net = build_shortcut(generator.default_shortcut_config()).eval()
    assert isinstance(net, AmusedShortcut) and isinstance(net, ShortcutNetwork)
    net = ShortcutWeights(net)
    condition = Condition(prompts=["a red cat", "snow"])
    vanilla = sample(generator, condition, settings_for(generator, steps=8, seed=3))
    same = sample(generator, condition, settings_for(generator, steps=8, budget=8, seed=3), shortcut=net)
    assert torch.equal(vanilla.codes, same.codes) and same.shortcut_calls == 0
    fast = sample(generator, condition, settings_for(generator, steps=8, budget=3, seed=3), shortcut=net)
    assert (fast.base_calls, fast.shortcut_calls) == (3, 5)
    assert fast.codes.shape == (2, 64) and int(fast.codes.max()) < 32
    images = generator.decode(fast.codes)
    assert images.shape == (2, 3, 16, 16) and 0 <= float(images.min()) and float(images.max()) <= 1


def test_official_maskgit_weights_are_refused(generator, tmp_path):
    """MaskGIT-Shortcut has the same width (768) in the real models: a plain state dict must not load on aMUSEd."""
    net = ShortcutNetwork(ShortcutConfig(feature_dim=32, num_heads=1))
    torch.save(net.state_dict(), tmp_path / "maskgit-shortcut.pth")
    with pytest.raises(ShortcutError, match="aMUSEd"):
        load_shortcut(tmp_path / "maskgit-shortcut.pth", generator)


# ------------------------------------------------------------------------------------------------------------
# record -> fit (train/fit_shortcut.py) -> sample


def test_record_fit_sample_end_to_end(folder, generator, tmp_path):
    steps = 8
    data = tmp_path / "trajectories"
    settings = settings_for(generator, steps=steps, seed=100)
    conditions = [Condition(prompts=PROMPTS[i:i + 4]) for i in range(0, len(PROMPTS), 4)]
    index = record(generator, data, conditions, settings, storage="fp32")
    assert index["trajectories"] == 2 * len(PROMPTS)  # cond and uncond branch of every image

    out = tmp_path / "amused-shortcut.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # the timeout below is generous for shared, loaded machines
    run = subprocess.run([sys.executable, str(ROOT / "train" / "fit_shortcut.py"), "--data", str(data),
                          "--generator", str(folder), "--out", str(out), "--steps", "300", "--batch-size", "16",
                          "--lr", "2e-3", "--lr-drop-step", "250", "--eval-every", "300", "--ema", "0.95",
                          "--val-fraction", "0.25", "--device", "cpu"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print("\naMUSEd fit report:", json.dumps({k: report[k] for k in (
        "train_trajectories", "val_trajectories", "val_pairs", "seconds", "val_mse", "val_baseline_mse",
        "val_agreement", "val_baseline_agreement")}))
    assert report["val_trajectories"] == 8
    assert report["val_mse"] < report["val_baseline_mse"]

    network = load_shortcut(out, generator)
    assert isinstance(network.network, AmusedShortcut) and network.config.arch == "amused"
    condition = Condition(prompts=["a red cat", "green tree"])
    vanilla = sample(generator, condition, settings_for(generator, steps=steps, seed=5))
    fast = sample(generator, condition, settings_for(generator, steps=steps, budget=4, seed=5), shortcut=network)
    assert (fast.base_calls, fast.shortcut_calls) == (4, 4)
    agreement = float((fast.codes == vanilla.codes).float().mean())
    print(f"aMUSEd tiny: tokens equal to vanilla at the same seed with budget 4/{steps}: {agreement:.3f}")
    assert generator.decode(fast.codes).shape == (2, 3, 16, 16)
