"""Lumina-DiMOO (LLaDA-8B architecture) as a text-to-image ``MaskedGenerator``, and the DiMOO shortcut network.

Base model (own implementation of the LLaDA "llama" block as Lumina-DiMOO uses it): token embedding ``wte`` (no
scaling), blocks of ``x += attn_out(SDPA(rope(q), rope(k), v))`` with q/k/v from ``attn_norm(x)`` and
``x += ff_out(silu(ff_proj(h)) * up_proj(h))`` with ``h = ff_norm(x)``, final ``ln_f`` (RMSNorm computed in fp32),
untied LM head ``ff_out``, no biases. Attention is bidirectional and unmasked (padding rows of a batch are masked
here; the reference only runs batch 1). RoPE is the half-split form with theta from config.json, in fp32.

Sequence (text to image): ``<system>Generate an image according to the text prompt.</system><user>{prompt}</user>``
tokens, ``BOA BOI``, H rows of (W mask tokens + newline), ``EOI EOA``; H, W = size / 16. The unconditional
sequence uses ``<uncondition>`` (or a negative prompt) as the user text. Feature = ``ln_f`` output; head = the
image-code rows of ``ff_out`` only. Image code k is token ``image_token_offset + k``.

Loading reads a Hugging Face folder (config.json, single or sharded safetensors with keys ``model.transformer.*``,
tokenizer files, ``vqvae/`` diffusers VQModel) shard by shard straight onto the target device and dtype; the
model is first built on the meta device so no full-size copy is ever made. The VQ decoder stays in float32.

Shortcut (``DimooShortcut``): parameter names of the official ``MDMShortcut`` state dict (``dimoo-shortcut.pth``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..generator import Condition, Context, GeneratorCard, MaskedGenerator, NewTokens, ShortcutError
from ..shortcut import ShortcutConfig, TimestepEmbedder, masked_attention

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "Generate an image according to the text prompt."
UNCONDITION_TEXT = "<uncondition>"
TOKENS_FILE = "dimoo_tokens.json"  # optional sidecar in the model folder overriding token ids (tiny test models)
SHORTCUT_FILE = "dimoo-shortcut.pth"
DEFAULT_IMAGE_SIZE = (1024, 1024)  # (width, height), as the reference inference
PREFIXES = ("model.transformer.", "transformer.")


# ----------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class DimooTokens:
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DimooTokens":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ShortcutError(f"unknown DiMOO token names {sorted(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: int(v) for k, v in data.items()})


@dataclass
class LLaDAConfig:
    """The fields of a LLaDA ``config.json`` this implementation uses (others must keep LLaDA-8B's values)."""

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int = 32
    n_layers: int = 32
    mlp_hidden_size: int = 12288
    embedding_size: int = 134548
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    include_bias: bool = False
    include_qkv_bias: bool = False
    weight_tying: bool = False
    input_emb_norm: bool = False
    scale_logits: bool = False
    mask_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_hf(cls, data: dict) -> "LLaDAConfig":
        """From a Hugging Face ``config.json`` of model type "llada"; refuses variants this code does not run."""
        def want(name, allowed, default):
            value = data.get(name, default)
            if value not in allowed:
                raise ShortcutError(f"config.json: {name} = {value!r} is not supported (Lumina-DiMOO uses "
                                    f"{allowed[0]!r})")
        want("block_type", ("llama",), "llama")
        want("layer_norm_type", ("rms",), "rms")
        want("activation_type", ("silu",), "silu")
        want("rope", (True,), True)
        want("alibi", (False,), False)
        want("attention_layer_norm", (False,), False)
        want("block_group_size", (1,), 1)
        want("layer_norm_with_affine", (True,), True)
        want("bias_for_layer_norm", (False, None), False)
        try:
            d_model = int(data["d_model"])
            n_heads = int(data["n_heads"])
            n_layers = int(data["n_layers"])
        except KeyError as err:
            raise ShortcutError(f"config.json has no {err}: not a LLaDA config") from err
        kv = data.get("n_kv_heads")
        if data.get("multi_query_attention"):
            kv = 1
        mlp = data.get("mlp_hidden_size") or int(data.get("mlp_ratio", 4)) * d_model
        vocab = int(data.get("vocab_size", 0))
        emb = int(data.get("embedding_size") or vocab)
        cfg = cls(d_model=d_model, n_heads=n_heads, n_kv_heads=int(kv or n_heads), n_layers=n_layers,
                  mlp_hidden_size=int(mlp), embedding_size=emb, rope_theta=float(data.get("rope_theta", 10000.0)),
                  rms_norm_eps=float(data.get("rms_norm_eps", 1e-5)),
                  include_bias=bool(data.get("include_bias", False)),
                  include_qkv_bias=bool(data.get("include_qkv_bias", False)),
                  weight_tying=bool(data.get("weight_tying", False)),
                  input_emb_norm=bool(data.get("input_emb_norm", False)),
                  scale_logits=bool(data.get("scale_logits", False)),
                  mask_token_id=data.get("mask_token_id"), pad_token_id=data.get("pad_token_id"))
        if d_model % n_heads or n_heads % cfg.n_kv_heads or cfg.head_dim % 2:
            raise ShortcutError(f"config.json: d_model {d_model} / n_heads {n_heads} / n_kv_heads {cfg.n_kv_heads} "
                                "do not give a whole, even head size")
        return cfg

    def num_parameters(self) -> int:
        d, hd, mlp = self.d_model, self.head_dim, self.mlp_hidden_size
        kv = self.n_kv_heads * hd
        qkv_bias = self.include_bias or self.include_qkv_bias
        block = (d * d + 2 * d * kv + (d + 2 * kv if qkv_bias else 0)  # q, k, v
                 + d * d + (d if self.include_bias else 0)  # attn_out
                 + 2 * d * mlp + (2 * mlp if self.include_bias else 0)  # ff_proj, up_proj
                 + mlp * d + (d if self.include_bias else 0)  # ff_out
                 + 2 * d)  # attn_norm, ff_norm
        head = 0 if self.weight_tying else self.embedding_size * d + (self.embedding_size if self.include_bias else 0)
        return self.embedding_size * d + self.n_layers * block + d + head


# ----------------------------------------------------------------------------------------------------------------
# LLaDA building blocks (shared by the base model and the shortcut)


class RMSNorm(nn.Module):
    """LLaDA ``RMSLayerNorm``: normalise in fp32 (autocast off), cast back, then multiply by the weight."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = x.dtype
            h = x.to(torch.float32)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
            h = h.to(dtype)
        return self.weight * h


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [rows or 1, 1, n, head_dim] (fp32) for integer positions [n] or [rows, n]; half-split layout."""
    device = positions.device
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float) / head_dim))
    pos = positions.to(torch.float)
    if pos.dim() == 1:
        pos = pos[None]
    freqs = pos[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [R, heads, n, hd] rotated in fp32 (``x cos + rotate_half(x) sin``), returned in x's dtype."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        t = x.float()
        half = t.shape[-1] // 2
        rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
        return ((t * cos) + (rotated * sin)).to(x.dtype)


class LLaDABlock(nn.Module):
    """One LLaDA llama block. With ``kv`` given it is the shortcut's cross-attention: the same ``attn_norm``
    normalises the query stream and ``kv``, keys/values come from ``kv`` at ``kv_positions``."""

    def __init__(self, dim: int, heads: int, kv_heads: int, mlp: int, eps: float, theta: float,
                 bias: bool = False, qkv_bias: bool = False):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.theta = heads, kv_heads, dim // heads, theta
        self.attn_norm = RMSNorm(dim, eps)
        self.ff_norm = RMSNorm(dim, eps)
        kv_dim = kv_heads * self.head_dim
        self.q_proj = nn.Linear(dim, dim, bias=bias or qkv_bias)
        self.k_proj = nn.Linear(dim, kv_dim, bias=bias or qkv_bias)
        self.v_proj = nn.Linear(dim, kv_dim, bias=bias or qkv_bias)
        self.attn_out = nn.Linear(dim, dim, bias=bias)
        self.ff_proj = nn.Linear(dim, mlp, bias=bias)  # the gate (SiLU)
        self.up_proj = nn.Linear(dim, mlp, bias=bias)
        self.ff_out = nn.Linear(mlp, dim, bias=bias)

    def forward(self, x: torch.Tensor, rope_q: tuple[torch.Tensor, torch.Tensor],
                key_valid: Optional[torch.Tensor] = None, kv: Optional[torch.Tensor] = None,
                rope_k: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        rows, length, dim = x.shape
        h = self.attn_norm(x)
        kv_h = h if kv is None else self.attn_norm(kv)
        n = kv_h.shape[1]
        q = self.q_proj(h).view(rows, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(kv_h).view(rows, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(kv_h).view(rows, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, *rope_q)
        k = apply_rope(k, *(rope_q if rope_k is None else rope_k))
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        att = masked_attention(q, k, v, key_valid)
        x = x + self.attn_out(att.transpose(1, 2).reshape(rows, length, dim))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDATransformer(nn.Module):
    """``model.transformer`` of a Lumina-DiMOO checkpoint (same submodule names, without the prefix)."""

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.wte = nn.Embedding(cfg.embedding_size, d)
        self.blocks = nn.ModuleList(
            LLaDABlock(d, cfg.n_heads, cfg.n_kv_heads, cfg.mlp_hidden_size, cfg.rms_norm_eps, cfg.rope_theta,
                       cfg.include_bias, cfg.include_qkv_bias) for _ in range(cfg.n_layers))
        self.ln_f = RMSNorm(d, cfg.rms_norm_eps)
        if not cfg.weight_tying:
            self.ff_out = nn.Linear(d, cfg.embedding_size, bias=cfg.include_bias)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids)
        return x * (self.config.d_model ** 0.5) if self.config.input_emb_norm else x

    def features(self, ids: torch.Tensor, key_valid: Optional[torch.Tensor] = None,
                 hidden: Optional[list] = None) -> torch.Tensor:
        """ids [R, T] -> ``ln_f`` output [R, T, D]; ``key_valid`` [R, T] masks padded keys (right padding).
        ``hidden``, when a list, receives the embedding and every block's output (for checks)."""
        x = self.embed(ids)
        rope = rope_cos_sin(torch.arange(ids.shape[1], device=ids.device), self.config.head_dim,
                            self.config.rope_theta)
        if hidden is not None:
            hidden.append(x)
        for block in self.blocks:
            x = block(x, rope, key_valid)
            if hidden is not None:
                hidden.append(x)
        return self.ln_f(x)

    def head_params(self, start: int = 0, stop: Optional[int] = None):
        """(weight, bias) rows [start:stop] of the LM head (``ff_out``, or ``wte`` when tied)."""
        layer = self.wte if self.config.weight_tying else self.ff_out
        bias = getattr(layer, "bias", None)
        return layer.weight[start:stop], None if bias is None else bias[start:stop]

    def logits(self, feature: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        weight, bias = self.head_params(start, stop)
        out = F.linear(feature, weight, bias)
        return out * (1 / math.sqrt(self.config.d_model)) if self.config.scale_logits else out

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.features(ids)
        return feature, self.logits(feature)


# ----------------------------------------------------------------------------------------------------------------
# loading a Hugging Face folder


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ShortcutError(f"{path}: not readable JSON ({err})") from err


def is_llada_folder(path: Path) -> bool:
    path = Path(path)
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    archs = " ".join(data.get("architectures") or [])
    return data.get("model_type") == "llada" or "LLaDA" in archs


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (sharded via the index, or one ``model.safetensors``)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(_read_json(index).get("weight_map", {}).values()))
        files = [folder / n for n in names]
        missing = [str(f.name) for f in files if not f.is_file()]
        if missing:
            raise ShortcutError(f"{folder}: shards listed in model.safetensors.index.json are missing: "
                                f"{', '.join(missing[:5])} (download the whole folder)")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    if any(folder.glob("*.bin")):
        raise ShortcutError(f"{folder}: only pickle (.bin) weights found; this loader reads safetensors only")
    raise ShortcutError(f"{folder}: no model.safetensors or model.safetensors.index.json found")


def _safetensors_numel(path: Path) -> int:
    from safetensors import safe_open
    total = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            total += math.prod(handle.get_slice(key).get_shape())
    return total


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def load_bytes(config: dict | LLaDAConfig, dtype: torch.dtype = torch.bfloat16, vq_params: int = 0) -> dict:
    """Bytes placed on the device by loading: the LLaDA transformer in ``dtype`` plus the VQ in float32."""
    cfg = config if isinstance(config, LLaDAConfig) else LLaDAConfig.from_hf(config)
    params = cfg.num_parameters()
    transformer = params * dtype_size(dtype)
    vq = int(vq_params) * 4
    return {"transformer_parameters": params, "transformer_bytes": transformer, "vq_parameters": int(vq_params),
            "vq_bytes": vq, "total_bytes": transformer + vq, "dtype": str(dtype).replace("torch.", "")}


def folder_load_bytes(folder: Path, dtype: torch.dtype = torch.bfloat16) -> dict:
    """``load_bytes`` for a model folder: sizes from config.json, VQ size from the vqvae safetensors header."""
    folder = Path(folder)
    vq_params = 0
    for vq_file in sorted((folder / "vqvae").glob("*.safetensors")):
        vq_params += _safetensors_numel(vq_file)
    return load_bytes(_read_json(folder / "config.json"), dtype, vq_params)


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def available_bytes(device: torch.device) -> Optional[int]:
    """Free memory on ``device``: CUDA free memory, or available RAM for the CPU; None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            import psutil  # optional
            return int(psutil.virtual_memory().available)
        except ImportError:
            pass
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_memory(required: int, device: torch.device, what: str = "Lumina-DiMOO",
                 available: Optional[int] = None) -> None:
    """Refuse, with the numbers, when ``device`` cannot hold ``required`` bytes."""
    device = torch.device(device)
    free = available if available is not None else available_bytes(device)
    if free is None:
        log.warning("cannot tell how much memory %s has; %s needs %s", device, what, gib(required))
        return
    if required > free:
        place = "free GPU memory" if device.type == "cuda" else "available RAM"
        raise ShortcutError(f"{what} needs {gib(required)} on {device} but only {gib(free)} of {place} is left. "
                            "Use a device with more memory, or a smaller dtype (--dtype bf16 halves fp32), "
                            "or close other programs.")


def _set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    module._parameters[leaf] = nn.Parameter(value, requires_grad=False)


def load_llada_transformer(folder: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                           memory_check: bool = True) -> LLaDATransformer:
    """Build on the meta device, then fill it shard by shard, each tensor going straight to device and dtype."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    device = torch.device(device)
    cfg = LLaDAConfig.from_hf(_read_json(folder / "config.json"))
    if memory_check:
        report = load_bytes(cfg, dtype)
        log.info("LLaDA transformer: %.2f B parameters = %s in %s to place on %s",
                 report["transformer_parameters"] / 1e9, gib(report["transformer_bytes"]), report["dtype"], device)
        check_memory(report["total_bytes"], device, "the LLaDA transformer")
    files = weight_files(folder)
    with torch.device("meta"):
        model = LLaDATransformer(cfg)
    expected = {name: p.shape for name, p in model.named_parameters()}
    loaded, unexpected = set(), []
    where = str(device)
    if device.type == "cuda":
        where = f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    elif device.type != "cpu":
        where = "cpu"  # read on the CPU, then moved tensor by tensor
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device=where) as handle:
                for key in handle.keys():
                    name = next((key[len(p):] for p in PREFIXES if key.startswith(p)), None)
                    if name is None or name not in expected:
                        unexpected.append(key)
                        continue
                    tensor = handle.get_tensor(key)
                    if tuple(tensor.shape) != tuple(expected[name]):
                        raise ShortcutError(f"{file.name}: {key} has shape {tuple(tensor.shape)}, config.json "
                                            f"implies {tuple(expected[name])}")
                    _set_parameter(model, name, tensor.to(device=device, dtype=dtype))
                    loaded.add(name)
                    del tensor
        except (SafetensorError, OSError) as err:
            raise ShortcutError(f"{file}: not a valid safetensors file, it may be truncated ({err})") from err
    missing = sorted(set(expected) - loaded)
    if missing:
        raise ShortcutError(f"{folder}: weights missing for {len(missing)} tensors, e.g. "
                            f"{', '.join('model.transformer.' + m for m in missing[:4])}")
    if unexpected:
        log.warning("%s: ignored %d tensors this model does not use, e.g. %s", folder, len(unexpected),
                    ", ".join(unexpected[:4]))
    return model.eval().requires_grad_(False)


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


def load_vq(folder: Path, device: torch.device):
    """diffusers ``VQModel`` from ``vqvae/``, float32, eval, no grad."""
    folder = Path(folder)
    if not (folder / "vqvae" / "config.json").is_file():
        raise ShortcutError(f"{folder}: no vqvae/ subfolder with config.json; a Lumina-DiMOO folder has the image "
                            "tokenizer there (download the whole Alpha-VLLM/Lumina-DiMOO repository)")
    from diffusers import VQModel
    try:
        vq = VQModel.from_pretrained(str(folder), subfolder="vqvae", torch_dtype=torch.float32)
    except (OSError, ValueError, EnvironmentError) as err:
        raise ShortcutError(f"{folder}/vqvae: could not load the VQ model ({str(err).splitlines()[0]})") from err
    return vq.to(device).eval().requires_grad_(False)


def load_tokens(folder: Path, cfg: LLaDAConfig, codebook_size: int) -> DimooTokens:
    """Official ids, overridden by ``dimoo_tokens.json`` in the folder and by config.json's mask/pad ids."""
    data: dict[str, Any] = {}
    if cfg.mask_token_id is not None:
        data["mask"] = int(cfg.mask_token_id)
    if cfg.pad_token_id is not None:
        data["pad"] = int(cfg.pad_token_id)
    sidecar = Path(folder) / TOKENS_FILE
    if sidecar.is_file():
        data.update(_read_json(sidecar).get("tokens", {}))
    tokens = DimooTokens.from_dict({**DimooTokens().to_dict(), **data})
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
    for file in weight_files(folder):
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
        check_memory(report["total_bytes"], device)
    tokenizer = load_tokenizer(folder)
    transformer = load_llada_transformer(folder, device, dtype, memory_check=False)
    vq = load_vq(folder, device)
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
        negatives = list(condition.negative_prompts or [])
        if negatives and len(negatives) not in (1, batch_size):
            raise ShortcutError(f"give one negative prompt, or one per image ({batch_size}); got {len(negatives)}")
        prompts = [self.prompt_ids(str(p)) for p in condition.prompts]
        branches = 2 if guidance else 1
        if guidance:
            cache: dict = {}
            for b in range(batch_size):
                neg = negatives[b if len(negatives) > 1 else 0] if negatives else None
                key = neg or ""
                if key not in cache:
                    cache[key] = self.uncond_ids(neg)
                prompts.append(cache[key])
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
        return Context(batch_size=batch_size, branches=branches, device=device, padding=padding,
                       extra={"input_ids": input_ids.to(device), "image_index": image_index.to(device),
                              "lengths": lengths.tolist(), "prompt_new": prompt_new,
                              "prompt_lengths": [len(p) for p in prompts]})

    # -- model calls -----------------------------------------------------------------------------------------

    @staticmethod
    def _extra(ctx: Context, key: str):
        if key not in ctx.extra:
            raise ShortcutError("Lumina-DiMOO needs the Context built by its prepare() (prompts decide the sequence "
                                "layout); a bare Context cannot be used with this generator")
        return ctx.extra[key]

    def image_positions(self, ctx: Context) -> torch.Tensor:
        """Indices [L] of the image tokens in the feature sequence, when every row has the same prompt length;
        rows with different prompts place them differently (see ``ctx.extra['image_index']`` [R, L])."""
        index = self._extra(ctx, "image_index")
        if not bool((index == index[:1]).all()):
            raise ShortcutError("the rows of this Lumina-DiMOO context have prompts of different lengths, so their "
                                "image tokens sit at different positions; use ctx.extra['image_index'] [rows, L]")
        return index[0]

    def sequence_ids(self, codes: torch.Tensor, masked: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The token sequences [R, T] of the current state (mask id where ``masked``)."""
        values = torch.where(masked, torch.full_like(codes, self.tokens.mask), codes + self.tokens.image_token_offset)
        ids = self._extra(ctx, "input_ids").clone()
        return ids.scatter_(1, self._extra(ctx, "image_index"), values.repeat(ctx.branches, 1))

    def features(self, codes: torch.Tensor, masked: torch.Tensor, ctx: Context) -> torch.Tensor:
        ids = self.sequence_ids(codes, masked, ctx)
        lengths = ctx.extra["lengths"]
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
        index = self._extra(ctx, "image_index")
        rows = feature.shape[0]
        image_feat = feature.gather(1, index[..., None].expand(-1, -1, feature.shape[-1]))
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
        index = self._extra(ctx, "image_index")
        prompts = self._extra(ctx, "prompt_new")
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
        vq = self.vq
        if vq is None:
            raise ShortcutError(f"generator {self.identity!r} has no VQ decoder")
        device = self.device
        height, width = self.grid_size
        images = []
        with torch.autocast(device_type=device.type, enabled=False):
            for row in codes.to(device).long():
                idx = row.view(1, height, width).clamp(0, self.codebook_size - 1)
                shape = (1, height, width, int(vq.config.latent_channels))
                if vq.config.lookup_from_codebook:
                    out = vq.decode(idx, force_not_quantize=True, shape=shape).sample
                else:
                    quant = vq.quantize.get_codebook_entry(idx.reshape(-1), shape)
                    out = vq.decode(quant, force_not_quantize=True).sample
                images.append(out.float().clamp(0, 1))
        return torch.cat(images)

    def default_shortcut_config(self, bottleneck_ratio: float = 2, n_blocks: int = 1) -> ShortcutConfig:
        """The official DiMOO-Shortcut architecture for this base (half width, heads and MLP size unchanged)."""
        cfg = self.transformer.config
        return ShortcutConfig(feature_dim=cfg.d_model, bottleneck_ratio=bottleneck_ratio, n_blocks=n_blocks,
                              num_heads=cfg.n_heads, arch="dimoo",
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

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

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


# ----------------------------------------------------------------------------------------------------------------
# command line helpers (wired by shortcut_core/cli.py)


def add_text_arguments(parser) -> None:
    """``--prompt`` (repeatable), ``--negative-prompt``, ``--width``, ``--height`` for text-to-image generators."""
    parser.add_argument("--prompt", action="append", default=None,
                        help="text prompt (repeat for several images; text-to-image generators)")
    parser.add_argument("--negative-prompt", default=None,
                        help="negative prompt for the unconditional branch (default: <uncondition>)")
    parser.add_argument("--width", type=int, default=None, help="image width in px, a multiple of 16 (default 1024)")
    parser.add_argument("--height", type=int, default=None, help="image height in px, a multiple of 16 (default 1024)")


def text_condition_from_args(generator: MaskedGenerator, args, batch: Optional[int] = None) -> Condition:
    """Apply --width/--height to the generator and build the text ``Condition`` (prompts cycled to ``batch``)."""
    prompts = list(getattr(args, "prompt", None) or [])
    if not prompts:
        raise ShortcutError(f"generator {generator.identity!r} is text-to-image: give --prompt \"...\"")
    width, height = getattr(args, "width", None), getattr(args, "height", None)
    if width is not None or height is not None:
        if not hasattr(generator, "set_image_size"):
            raise ShortcutError(f"generator {generator.identity!r} has a fixed size; drop --width/--height")
        current_w, current_h = getattr(generator, "image_size", DEFAULT_IMAGE_SIZE)
        generator.set_image_size(width or current_w, height or current_h)
    count = batch or len(prompts)
    prompts = [prompts[i % len(prompts)] for i in range(count)]
    negative = getattr(args, "negative_prompt", None)
    return Condition(prompts=prompts, negative_prompts=[negative] * count if negative else None)
