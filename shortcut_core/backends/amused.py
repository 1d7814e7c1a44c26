"""aMUSEd (HF amused/amused-256, amused/amused-512) through diffusers' public classes, and its shortcut network.

Base model: diffusers ``UVit2DModel`` (token grid in, logits [B, codebook, h, w] out), ``VQModel`` (``vqvae/``, kept
in float32), transformers ``CLIPTextModelWithProjection`` + ``CLIPTokenizer``. No fork of diffusers and no remote
code: a forward pre-hook on ``transformer.mlm_layer`` takes its input and stops the forward there.

* Feature = input of ``mlm_layer`` (the up-block output [R, C, h, w], C = ``block_out_channels``, 768 for both
  released models), flattened row-major to [R, L, C]; image_positions = arange(L). For amused-512 the transformer
  runs on a 16 x 16 grid between a down- and an up-sampling block, but the feature lives on the 32 x 32 token grid.
* Head = ``mlm_layer`` (1x1 conv, RMSNorm, 1x1 conv to the codebook) applied to the feature put back on the grid
  with the same memory layout as in the model's forward, so feature + head gives ``UVit2DModel``'s logits exactly.
* Conditioning as the aMUSEd pipeline: CLIP ``text_embeds`` as pooled embedding, ``hidden_states[-2]`` as encoder
  states (prompt padded to ``model_max_length``), micro-conditioning ``[width, height, 0, 0, 6]``. With guidance the
  unconditional branch uses the empty prompt "" or the negative prompt. Rows are [cond; uncond] (our order).
* Sampling: the pipeline's ``u + g (c - u)`` is our ``(1 + w) c - w u`` with w = g - 1 (default g = 10 -> w = 9, no
  ramp), 12 steps, ``schedule="amused_cosine"`` (``AmusedScheduler``'s token counts), confidence = log p(sampled)
  + temperature x Gumbel with temperature = linspace(2, 0, N)[i], which is our "maskgit" confidence with
  ``sm_temp=1``, ``r_temp=2`` (r_temp (1 - i/(N-1))). Tokens are drawn by Gumbel-max from our generator instead of
  ``torch.multinomial``: the same distribution, other draws.

New-token embedding (aMUSEd has no position table): ``transformer.embed`` (the UVit2D input embedding: embedding
table, RMSNorm, 1x1 conv, output width = ``block_out_channels`` = C, the feature width, so no projection is needed)
of the new codes, plus a fixed 2-D sine-cosine embedding of their grid cell (row frequencies in the first half of
the channels, column frequencies in the second) scaled to the RMS of the token embeddings. The shortcut
(``AmusedShortcut``, arch "amused") is the MaskGIT-Shortcut network plus one learned ``query_pos_proj`` that adds the
same 2-D position code of every feature position to its query stream: aMUSEd's features carry no explicit
position, and the cross-attention must relate a feature position to the cells of the new tokens. Its output layer
starts at zero (the untrained network is "reuse the last feature"). No official aMUSEd shortcut exists: fit one
with train/record_trajectories.py and train/fit_shortcut.py (README_amused.md).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from ..files import read_json, weight_variant
from ..generator import (Condition, Context, GeneratorCard, MaskedGenerator, NewTokens, ShortcutError,
                         gather_new_tokens, per_row)
from ..shortcut import ShortcutConfig, ShortcutNetwork, config_from_state_dict
from .diffusers_vq import decode_vq, load_vq

log = logging.getLogger(__name__)

SHORTCUT_FILE = "amused-shortcut.safetensors"  # fitted weights found in the model folder become the default
# The pipeline's defaults: 12 steps, guidance 10 (w = 9), cosine masking, temperature (2, 0).
DEFAULT_SETTINGS = {"steps": 12, "cfg_scale": 9.0, "cfg_ramp": False, "schedule": "amused_cosine",
                    "confidence": "maskgit", "sm_temp": 1.0, "r_temp": 2.0}
SUBFOLDERS = {"transformer": "diffusion_pytorch_model", "vqvae": "diffusion_pytorch_model",
              "text_encoder": "model", "tokenizer": None}
AESTHETIC_SCORE = 6
CROP_COORDS = (0, 0)


class _FeatureReady(Exception):
    """Raised by the pre-hook on ``mlm_layer`` once the feature is taken (the head is not run on full steps)."""

    def __init__(self, feature: torch.Tensor):
        super().__init__()
        self.feature = feature


def grid_position_embedding(positions: torch.Tensor, grid: Sequence[int], dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine code [..., dim] (float32) of flat row-major grid indices ``positions`` [...].

    Channels: sin(row w_k), cos(row w_k), sin(col w_k), cos(col w_k) with w_k = 10000^(-k / (dim // 4)),
    k < dim // 4; channels beyond 4 (dim // 4) are zero.
    """
    width = int(grid[1])
    quarter = dim // 4
    pos = positions.to(torch.float32)
    row, col = torch.div(pos, width, rounding_mode="floor"), torch.remainder(pos, width)
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float32, device=positions.device) / max(quarter, 1)))
    r, c = row[..., None] * omega, col[..., None] * omega
    emb = torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], dim=-1)
    if emb.shape[-1] < dim:
        emb = torch.cat([emb, emb.new_zeros(*emb.shape[:-1], dim - emb.shape[-1])], dim=-1)
    return emb


def _square_grid(length: int) -> tuple[int, int]:
    side = math.isqrt(length)
    if side * side != length:
        raise ShortcutError(f"cannot tell the token grid of {length} positions; pass new tokens from the aMUSEd "
                            "generator (they carry the grid)")
    return side, side


@dataclass
class AmusedContext(Context):
    encoder_hidden_states: Optional[torch.Tensor] = per_row()  # [R, 77, E] CLIP hidden_states[-2]
    pooled_text_emb: Optional[torch.Tensor] = per_row()  # [R, P] CLIP text_embeds
    micro_conds: Optional[torch.Tensor] = per_row()  # [R, 5] width, height, crop, aesthetic score
    grid: Optional[tuple] = None  # (h, w) token grid of the run


@dataclass
class GridNewTokens(NewTokens):
    """``NewTokens`` that also say the token grid (h, w), so the shortcut can place its queries."""

    grid: Optional[tuple] = None


# ----------------------------------------------------------------------------------------------------------------
# the generator


class AmusedGenerator(MaskedGenerator):
    """aMUSEd text-to-image as a ``MaskedGenerator`` (see the module docstring for feature, head, new tokens)."""

    condition_kind = "text"
    shortcut_arch = "amused"
    family = "aMUSEd"  # the model family named in messages (subclasses of the same design name theirs)
    prompt_tokens: Optional[int] = None  # prompts are padded to this many tokens; None: the tokenizer's maximum

    def __init__(self, transformer, vq, text_encoder, tokenizer, identity: str, mask_token_id: Optional[int] = None,
                 default_settings: Optional[dict] = None, image_size: Optional[Sequence[int]] = None):
        super().__init__()
        cfg = transformer.config
        # One plain container for the parts that follow the model dtype (``generator.dtype`` is the transformer's):
        # casting it never calls diffusers' ``ModelMixin.to``, which warns on every dtype cast.
        self.base = nn.ModuleDict({"transformer": transformer, "text_encoder": text_encoder})
        self.vq = vq  # the registry keeps a child named "vq" in float32
        self.tokenizer = tokenizer
        self.identity = identity
        self.feature_dim = int(cfg.block_out_channels)
        self.codebook_size = int(cfg.codebook_size)
        self.mask_token_id = int(cfg.vocab_size - 1 if mask_token_id is None else mask_token_id)
        if not self.codebook_size <= self.mask_token_id < int(cfg.vocab_size):
            raise ShortcutError(f"mask token id {self.mask_token_id} must lie in {self.codebook_size}.."
                                f"{int(cfg.vocab_size) - 1} (codebook size .. vocab size - 1)")
        if vq is not None and int(vq.config.num_vq_embeddings) != self.codebook_size:
            raise ShortcutError(f"the VQ model has {vq.config.num_vq_embeddings} codes but the transformer predicts "
                                f"{self.codebook_size}: vqvae/ and transformer/ are not from the same {self.family} "
                                "model")
        self.vq_scale = 2 ** (len(vq.config.block_out_channels) - 1) if vq is not None else 16
        self.cell = self.vq_scale * (2 if cfg.downsample else 1)  # the down/up blocks halve/double the grid
        self.default_settings = dict(DEFAULT_SETTINGS if default_settings is None else default_settings)
        self._pos_scale: Optional[float] = None
        if image_size is None:
            native = int(cfg.sample_size) * self.vq_scale
            image_size = (native, native)
        self.set_image_size(*image_size)

    @property
    def transformer(self):
        return self.base["transformer"]

    @property
    def text_encoder(self):
        return self.base["text_encoder"]

    # -- size ------------------------------------------------------------------------------------------------

    def set_image_size(self, width: int, height: int) -> None:
        """Output size in px: multiples of the VQ scale (16), of twice that for amused-512 (down/up-sampling)."""
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or value < self.cell or value % self.cell:
                raise ShortcutError(f"{name} must be a positive multiple of {self.cell} px for this {self.family} "
                                    f"model, got {value!r}")
        self.image_size = (width, height)
        self.grid_size = (height // self.vq_scale, width // self.vq_scale)

    def _grid(self, ctx: Context, length: Optional[int] = None) -> tuple[int, int]:
        grid = tuple(ctx.grid) if isinstance(ctx, AmusedContext) else self.grid_size
        if length is not None and grid[0] * grid[1] != length:
            raise ShortcutError(f"{length} token positions do not fit the {grid[0]} x {grid[1]} grid of "
                                f"{self.image_size[0]} x {self.image_size[1]} px: trajectories and shortcut fitting "
                                "must use the generator's native size (set_image_size only for sampling)")
        return grid

    # -- prompts ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled ``text_embeds`` [n, P], encoder states ``hidden_states[-2]`` [n, 77, E]) as the pipeline."""
        ids = self.tokenizer(list(prompts), return_tensors="pt", padding="max_length", truncation=True,
                             max_length=self.prompt_tokens or self.tokenizer.model_max_length,
                             ).input_ids.to(self.text_encoder.device)
        out = self.text_encoder(ids, return_dict=True, output_hidden_states=True)
        return out.text_embeds, out.hidden_states[-2]

    def prepare(self, condition: Condition, batch_size: int, guidance: bool) -> Context:
        self.check_condition(condition, batch_size)
        negatives = condition.negatives(batch_size)
        texts = [str(p) for p in condition.prompts]
        if guidance:
            texts += [negative or "" for negative in negatives]
        unique = list(dict.fromkeys(texts))
        pooled, states = self.encode_prompts(unique)
        pick = torch.tensor([unique.index(t) for t in texts], device=pooled.device)
        pooled, states = pooled[pick], states[pick]
        width, height = self.image_size
        micro = torch.tensor([width, height, CROP_COORDS[0], CROP_COORDS[1], AESTHETIC_SCORE],
                             device=states.device, dtype=states.dtype)
        return AmusedContext(batch_size=batch_size, branches=2 if guidance else 1, device=self.device,
                             encoder_hidden_states=states, pooled_text_emb=pooled,
                             micro_conds=micro[None].expand(len(texts), -1), grid=self.grid_size)

    # -- model calls -----------------------------------------------------------------------------------------

    def _input_ids(self, codes: torch.Tensor, masked: torch.Tensor, ctx: Context) -> torch.Tensor:
        height, width = self._grid(ctx, codes.shape[1])
        ids = torch.where(masked, torch.full_like(codes, self.mask_token_id), codes)
        return ids.repeat(ctx.branches, 1).view(-1, height, width)

    def _conditioning(self, ctx: Context) -> dict:
        if not isinstance(ctx, AmusedContext):
            raise ShortcutError(f"{self.family} needs the Context built by its prepare() (prompts condition the base "
                                "model); a bare Context only serves new_tokens and head")
        return {"encoder_hidden_states": ctx.encoder_hidden_states, "pooled_text_emb": ctx.pooled_text_emb,
                "micro_conds": ctx.micro_conds}

    def feature_map(self, input_ids: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The input of ``mlm_layer`` [R, C, h, w] for token ids [R, h, w] (the transformer stops there)."""
        taken = {}

        def hook(module, args):
            raise _FeatureReady(args[0])

        handle = self.transformer.mlm_layer.register_forward_pre_hook(hook)
        try:
            self.transformer(input_ids, **self._conditioning(ctx))
        except _FeatureReady as ready:
            taken["feature"] = ready.feature
        finally:
            handle.remove()
        if "feature" not in taken:
            raise ShortcutError("UVit2DModel.forward did not reach mlm_layer; this diffusers version is not supported")
        return taken["feature"]

    def features(self, codes: torch.Tensor, masked: torch.Tensor, ctx: Context) -> torch.Tensor:
        fmap = self.feature_map(self._input_ids(codes, masked, ctx), ctx)
        rows, channels = fmap.shape[:2]
        return fmap.permute(0, 2, 3, 1).reshape(rows, -1, channels)

    def head(self, feature: torch.Tensor, ctx: Context, masked: torch.Tensor) -> torch.Tensor:
        """Logits [R, L, K] from ``mlm_layer``. With every position masked it runs on the grid exactly as the model's
        forward does (same logits bit for bit); otherwise only on the masked positions (zeros elsewhere)."""
        rows, length, channels = feature.shape
        height, width = self._grid(ctx, length)
        mlm = self.transformer.mlm_layer
        where = masked.repeat(rows // masked.shape[0], 1)
        if bool(where.all()):
            logits = mlm(feature.view(rows, height, width, channels).permute(0, 3, 1, 2))
            return logits.permute(0, 2, 3, 1).reshape(rows, length, -1)
        picked = feature[where]  # [n, C]
        logits = mlm(picked[None, :, None, :].permute(0, 3, 1, 2))  # as a [1, C, n, 1] map: 1x1 convs only
        out = logits.new_zeros(rows, length, logits.shape[1])
        out[where] = logits[0, :, :, 0].t()
        return out

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """``transformer.embed`` of code ids [B, n] -> [B, n, C] (the UVit2D input embedding, width C)."""
        emb = self.transformer.embed(ids[:, :, None])  # [B, C, n, 1]
        return emb[:, :, :, 0].transpose(1, 2)

    def position_scale(self) -> float:
        """RMS of the token embeddings over the codebook / RMS of the sine-cosine code (1/sqrt 2), computed once."""
        if self._pos_scale is None:
            with torch.no_grad():
                ids = torch.arange(self.codebook_size, device=self.device)[None]
                rms = float(self.token_embedding(ids).float().pow(2).mean().sqrt())
            self._pos_scale = rms * math.sqrt(2.0)
        return self._pos_scale

    def new_tokens(self, codes: torch.Tensor, new_map: torch.Tensor, ctx: Context) -> NewTokens:
        """Token embedding (``transformer.embed``) + scaled 2-D sine-cosine code of the grid cell, for every branch
        row. Works with a bare ``Context`` (the grid then is the generator's current size)."""
        grid = self._grid(ctx, codes.shape[1])
        ids, positions, valid = gather_new_tokens(new_map, codes)
        emb = self.token_embedding(ids)
        pos = grid_position_embedding(positions, grid, emb.shape[-1]) * self.position_scale()
        emb = emb + pos.to(emb.dtype)
        reps = ctx.branches
        return GridNewTokens(emb.repeat(reps, 1, 1), positions.repeat(reps, 1), valid.repeat(reps, 1), grid=grid)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        if self.vq is None:
            raise ShortcutError(f"generator {self.identity!r} has no VQ decoder")
        grid = self.grid_size
        if codes.shape[1] != grid[0] * grid[1]:
            grid = _square_grid(codes.shape[1])
        return decode_vq(self.vq, codes, grid, self.codebook_size)

    def sequence_length(self, ctx: Context) -> int:
        return self.num_tokens  # the feature lives on the token grid

    def describe(self) -> dict:
        info = super().describe()
        info.update(backend=self.shortcut_arch, transformer_config=self.transformer_config(),
                    mask_token_id=self.mask_token_id, image_size=list(self.image_size))
        return json.loads(json.dumps(info, default=str))

    def transformer_config(self) -> dict:
        """The transformer's config as recorded with trajectories and shortcut weights."""
        return dict(self.transformer.config)


# ----------------------------------------------------------------------------------------------------------------
# the shortcut network


class AmusedShortcut(ShortcutNetwork):
    """MaskGIT-Shortcut network + ``query_pos_proj`` (Linear C -> d'): the fixed 2-D sine-cosine code of every feature
    position, projected, is added to the query stream after ``proj_in``. Everything else (names, blocks, adaLN,
    residual) is ``ShortcutNetwork``'s. The grid comes from ``new.grid`` (``GridNewTokens``), else a square."""

    family, arch = "aMUSEd", "amused"  # what a plain state dict of it is read as (subclasses name theirs)

    def __init__(self, config: ShortcutConfig):
        super().__init__(config)
        self.query_pos_proj = nn.Linear(config.feature_dim, config.hidden_dim)
        # Zero-initialised output (unlike the official MaskGIT-Shortcut): the untrained network is exactly "reuse the
        # last feature" and fitting only has to learn the change. On the tiny test model this reaches a lower
        # held-out MSE in the same number of steps (about -10 % vs about -1 % with the default init).
        with torch.no_grad():
            if isinstance(self.proj_out, nn.Linear):
                self.proj_out.weight.zero_()
                self.proj_out.bias.zero_()
            else:  # bottleneck ratio 1: no proj_out; zero the last LayerNorm's affine and the adaLN shift/scale
                for module in (self.last_layer[-1], getattr(self, "adaLN_modulation", None)):
                    if module is not None:
                        module.weight.zero_()
                        module.bias.zero_()

    def embed_query(self, prev_feature: torch.Tensor, new: NewTokens) -> torch.Tensor:
        """aMUSEd features carry no explicit position: add the grid cell's 2-D code to the query stream."""
        length = prev_feature.shape[1]
        grid = getattr(new, "grid", None) or _square_grid(length)
        pos = grid_position_embedding(torch.arange(length, device=prev_feature.device), grid, self.config.feature_dim)
        return self.proj_in(prev_feature) + self.query_pos_proj(pos.to(prev_feature.dtype))[None]

    @classmethod
    def config_from_state_dict(cls, state: dict, num_heads: Optional[int] = None) -> ShortcutConfig:
        """A plain state dict of this network (no official aMUSEd shortcut exists; fitted files carry metadata)."""
        if "query_pos_proj.weight" not in state:
            raise ShortcutError(f"not {cls.family} shortcut weights (no 'query_pos_proj.weight'); no official "
                                f"{cls.family} shortcut exists: fit one with train/fit_shortcut.py (its safetensors "
                                "carry metadata)")
        hidden = int(state["query_pos_proj.weight"].shape[0])
        return config_from_state_dict(state, num_heads=num_heads or max(1, hidden // 32), arch=cls.arch)


# ----------------------------------------------------------------------------------------------------------------
# loading a diffusers folder


def is_amused_folder(path: Path) -> bool:
    """A diffusers folder whose ``transformer/config.json`` is a ``UVit2DModel`` (aMUSEd's transformer)."""
    config = Path(path) / "transformer" / "config.json"
    if not (Path(path).is_dir() and config.is_file()):
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "UVit2DModel"
    except (OSError, json.JSONDecodeError):
        return False


def _weight_file(folder: Path, stem: str) -> Path:
    variant = weight_variant(folder, stem)
    path = Path(folder) / (f"{stem}.safetensors" if variant is None else f"{stem}.{variant}.safetensors")
    if not path.is_file():
        raise ShortcutError(f"{folder}: sharded weights are not supported for identity hashing ({path.name} missing)")
    return path


def folder_identity(folder: Path, family: str = "amused") -> str:
    """Names the transformer weights whatever their precision: config.json without bookkeeping keys, every tensor's
    name and shape, and the values of the small norm weights and ``mlm_layer.conv1`` rounded to float16 (so the fp16
    variant of a checkpoint gets the identity of its fp32 file and a fine-tune another one)."""
    from safetensors import safe_open

    sub = Path(folder) / "transformer"
    config = {k: v for k, v in read_json(sub / "config.json").items() if not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    with safe_open(str(_weight_file(sub, "diffusion_pytorch_model")), framework="pt") as handle:
        for key in sorted(handle.keys()):
            shape = handle.get_slice(key).get_shape()
            digest.update(f"{key}:{list(shape)};".encode())
            if key.endswith("norm.weight") or key == "mlm_layer.conv1.weight":
                digest.update(handle.get_tensor(key).to(torch.float16).numpy().tobytes())
    return f"{family}/{digest.hexdigest()[:16]}"


def load_amused(folder: Path, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> AmusedGenerator:
    """An ``AmusedGenerator`` from a diffusers aMUSEd folder (transformer/, vqvae/, text_encoder/, tokenizer/,
    optionally scheduler/ for the mask id); fp16 variant files are accepted. Only safetensors are read."""
    folder = Path(folder).expanduser()
    if not is_amused_folder(folder):
        raise ShortcutError(f"{folder}: not an aMUSEd folder (needs transformer/config.json of a UVit2DModel)")
    check_subfolders(folder, "amused/amused-256 or amused/amused-512")
    from diffusers import UVit2DModel

    try:
        transformer = UVit2DModel.from_pretrained(
            str(folder), subfolder="transformer", use_safetensors=True, torch_dtype=dtype,
            low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
            variant=weight_variant(folder / "transformer", SUBFOLDERS["transformer"]))
    except (OSError, ValueError) as err:
        raise ShortcutError(f"{folder}: could not load the aMUSEd transformer ({str(err).splitlines()[0]})") from err
    return assemble(AmusedGenerator, folder, transformer, folder_identity(folder), DEFAULT_SETTINGS, SHORTCUT_FILE,
                    device, dtype)


def check_subfolders(folder: Path, repository: str) -> None:
    missing = [name for name in SUBFOLDERS if not (folder / name).is_dir()]
    if missing:
        raise ShortcutError(f"{folder}: missing {', '.join(m + '/' for m in missing)}; download the whole Hugging Face "
                            f"repository ({repository})")


def assemble(cls, folder: Path, transformer, identity: str, default_settings: dict, shortcut_file: str,
             device: str | torch.device, dtype: torch.dtype) -> AmusedGenerator:
    """A ``cls`` generator (aMUSEd's design) from its ``transformer`` and the rest of a diffusers-layout ``folder``:
    ``VQModel`` (float32), ``CLIPTextModelWithProjection``, ``CLIPTokenizer``, the mask id of scheduler/, and
    ``shortcut_file`` in the folder as the default shortcut; moved to ``device``, ``dtype``."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    try:
        text_encoder = CLIPTextModelWithProjection.from_pretrained(
            str(folder / "text_encoder"), use_safetensors=True,
            variant=weight_variant(folder / "text_encoder", SUBFOLDERS["text_encoder"]))
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    except (OSError, ValueError) as err:
        raise ShortcutError(f"{folder}: could not load the {cls.family} parts ({str(err).splitlines()[0]})") from err
    vq = load_vq(folder, cls.family)
    scheduler_config = folder / "scheduler" / "scheduler_config.json"
    mask_id = read_json(scheduler_config).get("mask_token_id") if scheduler_config.is_file() else None
    if mask_id is None:
        log.warning("%s: no scheduler/scheduler_config.json; using mask id vocab_size - 1 = %d", folder,
                    transformer.config.vocab_size - 1)
    settings = dict(default_settings)
    if (folder / shortcut_file).is_file():
        settings["shortcut"] = str(folder / shortcut_file)
    generator = cls(transformer, vq, text_encoder, tokenizer, identity, mask_token_id=mask_id,
                    default_settings=settings)
    generator.base.to(device=device, dtype=dtype)
    generator.vq.to(device)
    return generator.eval().requires_grad_(False)


def load_amused_path(path, device, dtype) -> Optional[AmusedGenerator]:
    """``PATH_LOADERS`` entry: None when ``path`` is not an aMUSEd diffusers folder."""
    path = Path(path)
    if not is_amused_folder(path):
        return None
    return load_amused(path, device, dtype or torch.float32)


def describe_amused_path(path) -> Optional[GeneratorCard]:
    """``PATH_DESCRIBERS`` entry: a text-to-image card for an aMUSEd diffusers folder (its config only), else None."""
    if not is_amused_folder(Path(path)):
        return None
    return GeneratorCard("text", default_settings=dict(DEFAULT_SETTINGS))
