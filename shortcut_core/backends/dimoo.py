"""Lumina-DiMOO as a text-to-image ``MaskedGenerator``, and the DiMOO shortcut network.

Base model: the LLaDA-8B transformer (``llada.py``).

Sequence (text to image): ``<system>Generate an image according to the text prompt.</system><user>{prompt}</user>``
tokens, ``BOA BOI``, H rows of (W mask tokens + newline), ``EOI EOA``; H, W = size / 16. The unconditional
sequence uses ``<uncondition>`` (or a negative prompt) as the user text. Feature = ``ln_f`` output; head = the
image-code rows of ``ff_out`` only. Image code k is token ``image_token_offset + k``.

Loading reads a Hugging Face folder: the transformer (``llada.load_llada_transformer``), the tokenizer files, the
``vqvae/`` diffusers VQModel (``diffusers_vq``, kept in float32), after checking the device can hold them.

Shortcut (``DimooShortcut``): parameter names of the official ``MDMShortcut`` state dict (``dimoo-shortcut.pth``).
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import DictConfig
from ..files import check_memory, gib, read_json, safetensors_files, safetensors_numel
from ..generator import (Condition, Context, GeneratorCard, MaskedGenerator, NewTokens, ShortcutError, per_row,
                         take_positions)
from ..shortcut import ShortcutConfig, TimestepEmbedder
from .diffusers_vq import decode_vq, load_vq
from .llada import (LLaDABlock, LLaDAConfig, LLaDATransformer, RMSNorm, is_llada_folder, load_bytes,
                    load_llada_transformer, rope_cos_sin)

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "Generate an image according to the text prompt."
UNCONDITION_TEXT = "<uncondition>"
TOKENS_FILE = "dimoo_tokens.json"  # optional sidecar in the model folder overriding token ids (tiny test models)
SHORTCUT_FILE = "dimoo-shortcut.pth"
DEFAULT_IMAGE_SIZE = (1024, 1024)  # (width, height), as the reference inference


# ----------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class DimooTokens(DictConfig):
    """Special token ids. Defaults are Lumina-DiMOO's (``DiMOO-Shortcut/config.py`` and its tokenizer)."""

    mask: int = 126336
    newline: int = 126084
    boi: int = 126349
    eoi: int = 126350
    boa: int = 126354
    eoa: int = 126355
    uncondition: int = 126351
    image_token_offset: int = 126356
    pad: int = 126081

    def __post_init__(self):
        for name, value in self.to_dict().items():
            setattr(self, name, int(value))


# ----------------------------------------------------------------------------------------------------------------
# loading a Hugging Face folder


def folder_load_bytes(folder: Path, dtype: torch.dtype = torch.bfloat16) -> dict:
    """``load_bytes`` for a model folder: sizes from config.json, VQ size from the vqvae safetensors header."""
    folder = Path(folder)
    vq_params = 0
    for vq_file in sorted((folder / "vqvae").glob("*.safetensors")):
        vq_params += safetensors_numel(vq_file)
    return load_bytes(read_json(folder / "config.json"), dtype, vq_params)


def load_tokenizer(folder: Path):
    """The text tokenizer through ``AutoTokenizer`` without remote code (``tokenizer.json`` as a fallback)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # silences "model of type llada" (transformers does not know LLaDA configs)
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (ValueError, OSError, KeyError, TypeError) as err:
        first = err
    finally:
        hf_logging.set_verbosity(verbosity)
    if (folder / "tokenizer.json").is_file():
        try:
            tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
            log.warning("%s: AutoTokenizer refused this folder (%s); using tokenizer.json directly, no remote code",
                        folder, str(first).splitlines()[0] if str(first) else type(first).__name__)
            return tok
        except (ValueError, OSError) as err:
            first = err
    message = str(first).splitlines()[0] if str(first) else type(first).__name__
    if "remote" in message.lower() or "custom code" in message.lower():
        raise ShortcutError(f"{folder}: its tokenizer needs remote code (custom Python from the model repository), "
                            "which this pack never runs. Put the standard tokenizer files (tokenizer.json and "
                            f"tokenizer_config.json from Hugging Face Alpha-VLLM/Lumina-DiMOO) in the folder. ({message})")
    raise ShortcutError(f"{folder}: could not load the text tokenizer ({message}); download tokenizer.json and "
                        "tokenizer_config.json with the model")


def load_tokens(folder: Path, cfg: LLaDAConfig, codebook_size: int) -> DimooTokens:
    """Official ids, overridden by ``dimoo_tokens.json`` in the folder and by config.json's mask/pad ids."""
    data: dict[str, Any] = {}
    if cfg.mask_token_id is not None:
        data["mask"] = int(cfg.mask_token_id)
    if cfg.pad_token_id is not None:
        data["pad"] = int(cfg.pad_token_id)
    sidecar = Path(folder) / TOKENS_FILE
    if sidecar.is_file():
        data.update(read_json(sidecar).get("tokens", {}))
    tokens = DimooTokens.from_dict({**DimooTokens().to_dict(), **data}, strict=True)
    check_tokens(tokens, cfg.embedding_size, codebook_size)
    return tokens


def check_tokens(tokens: DimooTokens, embedding_size: int, codebook_size: int) -> None:
    bad = {k: v for k, v in tokens.to_dict().items() if not 0 <= v < embedding_size}
    if bad or tokens.image_token_offset + codebook_size > embedding_size:
        raise ShortcutError(f"token ids {bad or {'image_token_offset': tokens.image_token_offset}} do not fit the "
                            f"embedding size {embedding_size} with {codebook_size} image codes; for a non-official "
                            f"model give the ids in {TOKENS_FILE} ({{\"tokens\": {{...}}}})")


def folder_identity(folder: Path) -> str:
    """Names the weights: config.json plus the safetensors headers (names, shapes, offsets), hashed."""
    digest = hashlib.sha256((Path(folder) / "config.json").read_bytes())
    for file in safetensors_files(folder):
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            digest.update(handle.read(min(size, 50_000_000)))
    return f"lumina-dimoo/{digest.hexdigest()[:16]}"


def load_dimoo(folder: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               memory_check: bool = True) -> "DimooGenerator":
    """A ``DimooGenerator`` from a Lumina-DiMOO Hugging Face folder."""
    folder = Path(folder).expanduser()
    device = torch.device(device)
    if not is_llada_folder(folder):
        raise ShortcutError(f"{folder}: not a Lumina-DiMOO folder (needs config.json with model_type 'llada')")
    if not (folder / "vqvae").is_dir():
        raise ShortcutError(f"{folder}: this LLaDA folder has no vqvae/ subfolder, so it is not a Lumina-DiMOO "
                            "text-to-image checkpoint (download Alpha-VLLM/Lumina-DiMOO)")
    if memory_check:
        report = folder_load_bytes(folder, dtype)
        log.info("Lumina-DiMOO: %.2f B parameters = %s in %s, plus the VQ %s in float32, to place on %s",
                 report["transformer_parameters"] / 1e9, gib(report["transformer_bytes"]), report["dtype"],
                 gib(report["vq_bytes"]), device)
        check_memory(report["total_bytes"], device, "Lumina-DiMOO")
    tokenizer = load_tokenizer(folder)
    transformer = load_llada_transformer(folder, device, dtype, memory_check=False)
    vq = load_vq(folder, "Alpha-VLLM/Lumina-DiMOO").to(device)
    tokens = load_tokens(folder, transformer.config, int(vq.config.num_vq_embeddings))
    settings = dict(DEFAULT_SETTINGS)
    for candidate in (folder / SHORTCUT_FILE, folder.parent / "DiMOO-Shortcut" / SHORTCUT_FILE):
        if candidate.is_file():
            settings["shortcut"] = str(candidate)
            break
    return DimooGenerator(transformer, vq, tokenizer, tokens, identity=folder_identity(folder),
                          default_settings=settings)


def load_dimoo_path(path, device, dtype) -> Optional["DimooGenerator"]:
    """``PATH_LOADERS`` entry: None when ``path`` is not a LLaDA/DiMOO folder."""
    path = Path(path)
    if not is_llada_folder(path):
        return None
    return load_dimoo(path, device, dtype or torch.float32)


def describe_dimoo_path(path) -> Optional[GeneratorCard]:
    """``PATH_DESCRIBERS`` entry: a text-to-image card for a LLaDA/DiMOO folder (its config only), else None."""
    if not is_llada_folder(Path(path)):
        return None
    return GeneratorCard("text", default_settings=dict(DEFAULT_SETTINGS))


# ----------------------------------------------------------------------------------------------------------------
# the generator


# Reference sampling (DiMOO-Shortcut/infer.py): 64 steps, CFG 4 without ramp, temperature 1 (sm_temp = 1/t,
# r_temp = t with the "dimoo" confidence), keep floor(L cos(pi/2 (s+1)/N)) tokens masked after step s.
DEFAULT_SETTINGS = {"steps": 64, "cfg_scale": 4.0, "cfg_ramp": False, "schedule": "dimoo_cosine",
                    "confidence": "dimoo", "sm_temp": 1.0, "r_temp": 1.0}


@dataclass
class DimooContext(Context):
    """The prompt layout of every row (``image_index`` and ``lengths`` are the base ``Context``'s)."""

    input_ids: Optional[torch.Tensor] = per_row()  # [R, T] the sequences with every image token masked
    prompt_new: Optional[list] = per_row()  # per row: prompt ids the cond rows re-feed as new tokens (else empty)
    prompt_lengths: Optional[list] = per_row()  # per row: tokens before <boa>


class DimooGenerator(MaskedGenerator):
    """Lumina-DiMOO text-to-image as a ``MaskedGenerator``.

    Rows are branch-major [cond prompts; uncond prompts]; sequences are right-padded to the longest row and
    ``Context.padding`` marks the padding. ``row_batching`` says how the base model runs them: "padded" = all rows
    in one call, padded keys masked; "by_length" = one call per group of equal-length rows, no mask at all (the
    reference's way, which keeps flash attention on GPU and never builds a [rows, heads, T, T] mask bias);
    "auto" = "by_length" on CUDA, "padded" elsewhere. Both give the same rows up to float rounding.
    """

    condition_kind = "text"
    shortcut_arch = "dimoo"
    per_row_context = True  # the prompt decides where each row's image tokens sit

    def __init__(self, transformer: LLaDATransformer, vq, tokenizer, tokens: DimooTokens, identity: str,
                 default_settings: Optional[dict] = None, image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
                 codebook_size: Optional[int] = None, vq_scale: Optional[int] = None):
        super().__init__()
        cfg = transformer.config
        self.transformer = transformer
        self.vq = vq  # a child module, so model management moves and counts it; the registry keeps "vq" in fp32
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.identity = identity
        self.feature_dim = cfg.d_model
        if codebook_size is None:
            codebook_size = int(vq.config.num_vq_embeddings)
        self.codebook_size = int(codebook_size)
        if vq_scale is None:
            vq_scale = 2 ** (len(vq.config.block_out_channels) - 1) if vq is not None else 16
        self.vq_scale = int(vq_scale)
        self.shortcut_num_heads = cfg.n_heads
        self.default_settings = dict(DEFAULT_SETTINGS if default_settings is None else default_settings)
        self.row_batching = "auto"
        self.feed_prompt = True  # cond rows re-feed the whole prompt as new tokens (official no_prompt=False)
        check_tokens(tokens, cfg.embedding_size, self.codebook_size)
        self.set_image_size(*image_size)

    def set_image_size(self, width: int, height: int) -> None:
        """Output size in pixels; both must be positive multiples of the VQ scale (16 for Lumina-DiMOO)."""
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or value < self.vq_scale or value % self.vq_scale:
                raise ShortcutError(f"{name} must be a positive multiple of {self.vq_scale} px, got {value!r}")
        self.image_size = (width, height)
        self.grid_size = (height // self.vq_scale, width // self.vq_scale)

    # -- prompts ---------------------------------------------------------------------------------------------

    def encode_text(self, text: str) -> list[int]:
        encoded = self.tokenizer(text)
        ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
        if torch.is_tensor(ids):
            ids = ids.view(-1).tolist()
        return [int(i) for i in ids]

    @staticmethod
    def prompt_text(user: str) -> str:
        return f"<system>{SYSTEM_PROMPT}</system><user>{user}</user>"

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.encode_text(self.prompt_text(prompt))

    def uncond_ids(self, negative: Optional[str] = None) -> list[int]:
        return self.encode_text(self.prompt_text(negative if negative else UNCONDITION_TEXT))

    def image_block(self) -> list[int]:
        t = self.tokens
        height, width = self.grid_size
        return [t.boa, t.boi] + ([t.mask] * width + [t.newline]) * height + [t.eoi, t.eoa]

    def prepare(self, condition: Condition, batch_size: int, guidance: bool) -> Context:
        self.check_condition(condition, batch_size)
        device = self.device
        negatives = condition.negatives(batch_size)
        prompts = [self.prompt_ids(str(p)) for p in condition.prompts]
        branches = 2 if guidance else 1
        if guidance:
            cache: dict = {}
            for negative in negatives:
                if negative not in cache:
                    cache[negative] = self.uncond_ids(negative)
                prompts.append(cache[negative])
        block = self.image_block()
        height, width = self.grid_size
        rows = len(prompts)
        lengths = torch.tensor([len(p) + len(block) for p in prompts], dtype=torch.long)
        total = int(lengths.max())
        input_ids = torch.full((rows, total), self.tokens.pad, dtype=torch.long)
        grid = torch.arange(height * width)
        offsets = (grid // width) * (width + 1) + grid % width
        image_index = torch.empty(rows, height * width, dtype=torch.long)
        for r, ids in enumerate(prompts):
            input_ids[r, : len(ids) + len(block)] = torch.tensor(ids + block)
            image_index[r] = len(ids) + 2 + offsets
        padding = None
        if bool((lengths != total).any()):
            padding = (torch.arange(total)[None, :] >= lengths[:, None]).to(device)
        prompt_new = [torch.tensor(p, dtype=torch.long, device=device) if r < batch_size and self.feed_prompt
                      else torch.zeros(0, dtype=torch.long, device=device) for r, p in enumerate(prompts)]
        return DimooContext(batch_size=batch_size, branches=branches, device=device, padding=padding,
                            lengths=lengths.tolist(), image_index=image_index.to(device),
                            input_ids=input_ids.to(device), prompt_new=prompt_new,
                            prompt_lengths=[len(p) for p in prompts])

    # -- model calls -----------------------------------------------------------------------------------------

    @staticmethod
    def _layout(ctx: Context) -> DimooContext:
        if not isinstance(ctx, DimooContext) or ctx.image_index is None:
            raise ShortcutError("Lumina-DiMOO needs the Context built by its prepare() (prompts decide the sequence "
                                "layout); a bare Context cannot be used with this generator")
        return ctx

    def sequence_length(self, ctx: Context) -> int:
        return int(self._layout(ctx).input_ids.shape[1])

    def sequence_ids(self, codes: torch.Tensor, masked: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The token sequences [R, T] of the current state (mask id where ``masked``)."""
        layout = self._layout(ctx)
        values = torch.where(masked, torch.full_like(codes, self.tokens.mask), codes + self.tokens.image_token_offset)
        return layout.input_ids.clone().scatter_(1, layout.image_index, values.repeat(ctx.branches, 1))

    def features(self, codes: torch.Tensor, masked: torch.Tensor, ctx: Context) -> torch.Tensor:
        ids = self.sequence_ids(codes, masked, ctx)
        lengths = ctx.lengths
        mode = self.row_batching
        if mode == "auto":
            mode = "by_length" if ids.device.type == "cuda" else "padded"
        if mode not in ("padded", "by_length"):
            raise ShortcutError(f"row_batching must be 'auto', 'padded' or 'by_length', got {self.row_batching!r}")
        if mode == "padded" or len(set(lengths)) == 1:
            valid = None if ctx.padding is None else ~ctx.padding
            return self.transformer.features(ids, valid)
        out = None
        for length in sorted(set(lengths)):
            rows = torch.tensor([r for r, n in enumerate(lengths) if n == length], device=ids.device)
            feat = self.transformer.features(ids[rows, :length])
            if out is None:
                out = feat.new_zeros(ids.shape[0], ids.shape[1], feat.shape[-1])
            out[rows, :length] = feat
        return out

    def head(self, feature: torch.Tensor, ctx: Context, masked: torch.Tensor) -> torch.Tensor:
        """Image-code logits [R, L, K]; computed only where ``masked`` (zeros elsewhere)."""
        index = self._layout(ctx).image_index
        rows = feature.shape[0]
        image_feat = take_positions(feature, index)
        offset = self.tokens.image_token_offset
        weight, bias = self.transformer.head_params(offset, offset + self.codebook_size)
        scale = 1 / math.sqrt(self.feature_dim) if self.transformer.config.scale_logits else None
        where = masked.repeat(rows // masked.shape[0], 1)
        if bool(where.all()):
            out = F.linear(image_feat, weight, bias)
        else:
            picked = F.linear(image_feat[where], weight, bias)
            out = picked.new_zeros(rows, index.shape[1], self.codebook_size)
            out[where] = picked
        return out * scale if scale is not None else out

    def new_tokens(self, codes: torch.Tensor, new_map: torch.Tensor, ctx: Context) -> NewTokens:
        """Cond rows: the whole prompt (positions 0..P-1) then the new image tokens; uncond rows: only the new image
        tokens at their own sequence positions. Embeddings from the base ``wte`` only (no positions added)."""
        batch = ctx.batch_size
        layout = self._layout(ctx)
        index, prompts = layout.image_index, layout.prompt_new
        ids_rows, pos_rows = [], []
        for r in range(ctx.rows):
            chosen = new_map[r % batch]
            ids = codes[r % batch][chosen] + self.tokens.image_token_offset
            pos = index[r][chosen]
            prompt = prompts[r]
            if prompt.numel():
                ids = torch.cat([prompt, ids])
                pos = torch.cat([torch.arange(prompt.numel(), device=pos.device), pos])
            ids_rows.append(ids)
            pos_rows.append(pos)
        width = max(1, max(len(i) for i in ids_rows))
        device = codes.device
        ids = torch.zeros(ctx.rows, width, dtype=torch.long, device=device)
        positions = torch.zeros_like(ids)
        valid = torch.zeros(ctx.rows, width, dtype=torch.bool, device=device)
        for r, (i, p) in enumerate(zip(ids_rows, pos_rows)):
            ids[r, : len(i)] = i
            positions[r, : len(p)] = p
            valid[r, : len(i)] = True
        return NewTokens(self.transformer.wte(ids), positions, valid)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """One image at a time: a 1024 x 1024 decode is large."""
        if self.vq is None:
            raise ShortcutError(f"generator {self.identity!r} has no VQ decoder")
        return torch.cat([decode_vq(self.vq, row[None], self.grid_size, self.codebook_size) for row in codes])

    def default_shortcut_config(self, bottleneck_ratio: float = 2, n_blocks: int = 1,
                                num_heads: Optional[int] = None) -> ShortcutConfig:
        """The official DiMOO-Shortcut architecture for this base (half width, heads and MLP size unchanged)."""
        cfg = self.transformer.config
        return ShortcutConfig(feature_dim=cfg.d_model, bottleneck_ratio=bottleneck_ratio, n_blocks=n_blocks,
                              num_heads=num_heads or cfg.n_heads, arch="dimoo",
                              extra={"mlp_hidden_size": cfg.mlp_hidden_size, "n_kv_heads": cfg.n_kv_heads,
                                     "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
                                     "include_bias": cfg.include_bias, "include_qkv_bias": cfg.include_qkv_bias})

    def describe(self) -> dict:
        info = super().describe()
        info.update(backend="dimoo", llada_config=self.transformer.config.to_dict(), tokens=self.tokens.to_dict(),
                    image_size=list(self.image_size))
        return info


# ----------------------------------------------------------------------------------------------------------------
# the DiMOO shortcut network


SHORTCUT_DEFAULTS = {"rope_theta": 500000.0, "rms_norm_eps": 1e-5, "include_bias": False,
                     "include_qkv_bias": False, "frequency_dim": 256}


class DimooShortcutBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, mlp: int, eps: float, theta: float, bias: bool,
                 qkv_bias: bool, cross_attention: bool):
        super().__init__()
        self.cross_attention = cross_attention
        self.cross_attn = LLaDABlock(dim, heads, kv_heads, mlp, eps, theta, bias, qkv_bias)
        self.self_attn = LLaDABlock(dim, heads, kv_heads, mlp, eps, theta, bias, qkv_bias)

    def forward(self, x, rope_x, x_valid, new, rope_new, new_valid):
        if self.cross_attention:
            x = self.cross_attn(x, rope_x, new_valid, kv=new, rope_k=rope_new)
        else:
            x = self.cross_attn(x, rope_x, x_valid)
        return self.self_attn(x, rope_x, x_valid)


class DimooShortcut(nn.Module):
    """DiMOO-Shortcut (official ``MDMShortcut``): f_{t+1} = f_t + proj_out(adaLN(ln_f(blocks(proj_in(f_t), new))))

    Width d' = D / bottleneck_ratio, heads and MLP size as the base. Cross-attention: one ``attn_norm`` on both
    streams, queries at RoPE positions 0..T-1, keys at the new tokens' absolute positions (``new.positions``).
    ``padding`` [R, T] (True = padded feature position, right padding) masks self-attention keys; ``new.valid``
    (valid entries first) the new tokens. Padded output positions hold arbitrary values.
    """

    def __init__(self, config: ShortcutConfig):
        super().__init__()
        config.validate()
        extra = {**SHORTCUT_DEFAULTS, **(config.extra or {})}
        extra.setdefault("mlp_hidden_size", 3 * config.feature_dim)
        extra.setdefault("n_kv_heads", config.num_heads)
        config.extra = extra
        self.config = config
        # ragged rows (padding): "auto" = one unpadded call per row on CUDA (flash attention, no mask bias),
        # one masked call on CPU; True / False force either way. Same results up to float rounding.
        self.row_split: bool | str = "auto"
        dim, hidden = config.feature_dim, config.hidden_dim
        self.head_dim = hidden // config.num_heads
        self.theta = float(extra["rope_theta"])
        if config.bottleneck_ratio != 1:
            self.proj_in = nn.Linear(dim, hidden)
            self.proj_out = nn.Linear(hidden, dim)
            self.new_token_proj_in = nn.Linear(dim, hidden) if config.cross_attention else nn.Identity()
        else:
            self.proj_in = self.proj_out = self.new_token_proj_in = nn.Identity()
        self.blocks = nn.ModuleList(
            DimooShortcutBlock(hidden, config.num_heads, int(extra["n_kv_heads"]), int(extra["mlp_hidden_size"]),
                               float(extra["rms_norm_eps"]), self.theta, bool(extra["include_bias"]),
                               bool(extra["include_qkv_bias"]), config.cross_attention)
            for _ in range(config.n_blocks))
        self.ln_f = RMSNorm(hidden, float(extra["rms_norm_eps"]))
        if config.embed_time:
            self.time_embedder = TimestepEmbedder(hidden, int(extra["frequency_dim"]))
            self.adaLN_modulation = nn.Linear(hidden, 2 * hidden)

    def forward(self, prev_feature: torch.Tensor, new: NewTokens, mask_ratio: torch.Tensor,
                padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows = prev_feature.shape[0]
        ratio = mask_ratio.float().reshape(-1)
        if ratio.numel() == 1 and rows > 1:
            ratio = ratio.expand(rows)
        split = self.row_split if self.row_split != "auto" else prev_feature.device.type == "cuda"
        ragged = padding is not None or not bool(new.valid.all())
        if split and ragged and rows > 1:
            return self._forward_rows(prev_feature, new, ratio, padding)
        return self._forward(prev_feature, new, ratio, padding)

    def _forward_rows(self, prev_feature, new: NewTokens, ratio, padding) -> torch.Tensor:
        """Each row on its own unpadded length (no attention mask): right padding of features and new tokens."""
        out = prev_feature.clone()
        for r in range(prev_feature.shape[0]):
            t = prev_feature.shape[1] if padding is None else int((~padding[r]).sum())
            n = max(int(new.valid[r].sum()), 1)  # a row without new tokens keeps one invalid key (zero attention)
            one = NewTokens(new.embeddings[r:r + 1, :n], new.positions[r:r + 1, :n], new.valid[r:r + 1, :n])
            out[r:r + 1, :t] = self._forward(prev_feature[r:r + 1, :t], one, ratio[r:r + 1], None)
        return out

    def _forward(self, prev_feature: torch.Tensor, new: NewTokens, ratio: torch.Tensor,
                 padding: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.proj_in(prev_feature)
        rows, length = x.shape[:2]
        nt = self.new_token_proj_in(new.embeddings.to(x.dtype))
        rope_x = rope_cos_sin(torch.arange(length, device=x.device), self.head_dim, self.theta)
        rope_new = rope_cos_sin(new.positions, self.head_dim, self.theta)
        x_valid = None if padding is None else ~padding
        for block in self.blocks:
            x = block(x, rope_x, x_valid, nt, rope_new, new.valid)
        x = self.ln_f(x)
        if self.config.embed_time:
            emb = self.time_embedder(ratio * 1000)
            scale, shift = self.adaLN_modulation(emb).unsqueeze(1).chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        return self.proj_out(x) + prev_feature

    @classmethod
    def config_from_state_dict(cls, state: dict, num_heads: Optional[int] = None) -> ShortcutConfig:
        """Architecture of an official ``dimoo-shortcut.pth`` state dict. Heads, RoPE theta and the RMSNorm eps
        are not in the tensors: heads default to 32 and theta/eps to LLaDA-8B's (what the released file uses)."""
        probe = "blocks.0.self_attn.q_proj.weight"
        if probe not in state:
            raise ShortcutError("not DiMOO-Shortcut weights (no 'blocks.0.self_attn.q_proj.weight')")
        hidden = int(state[probe].shape[0])
        if "proj_in.weight" in state:
            dim = int(state["proj_in.weight"].shape[1])
            ratio = dim / hidden
        else:
            dim, ratio = hidden, 1
        heads = int(num_heads or 32)
        if hidden % heads:
            raise ShortcutError(f"num_heads {heads} does not divide the shortcut width {hidden}")
        head_dim = hidden // heads
        blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
        extra = {"mlp_hidden_size": int(state["blocks.0.self_attn.ff_proj.weight"].shape[0]),
                 "n_kv_heads": int(state["blocks.0.self_attn.k_proj.weight"].shape[0]) // head_dim,
                 "rope_theta": SHORTCUT_DEFAULTS["rope_theta"], "rms_norm_eps": SHORTCUT_DEFAULTS["rms_norm_eps"],
                 "include_bias": "blocks.0.self_attn.attn_out.bias" in state,
                 "include_qkv_bias": "blocks.0.self_attn.q_proj.bias" in state,
                 "frequency_dim": int(state["time_embedder.mlp.0.weight"].shape[1])
                 if "time_embedder.mlp.0.weight" in state else 256}
        cross = "new_token_proj_in.weight" in state or ratio == 1
        return ShortcutConfig(feature_dim=dim, bottleneck_ratio=ratio, n_blocks=max(blocks) + 1, num_heads=heads,
                              embed_time="adaLN_modulation.weight" in state, cross_attention=cross, arch="dimoo",
                              extra=extra)
