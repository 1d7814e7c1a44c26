"""The LLaDA-8B transformer as Lumina-DiMOO uses it (own implementation, ``model.transformer.*`` names), and its
loading from a Hugging Face folder.

Token embedding ``wte`` (no scaling), blocks of ``x += attn_out(SDPA(rope(q), rope(k), v))`` with q/k/v from
``attn_norm(x)`` and ``x += ff_out(silu(ff_proj(h)) * up_proj(h))`` with ``h = ff_norm(x)``, final ``ln_f``
(RMSNorm computed in fp32), untied LM head ``ff_out``, no biases. Attention is bidirectional and unmasked (padded
keys of a batch are masked here; the reference only runs batch 1). RoPE is the half-split form with theta from
config.json, in fp32.

Loading reads config.json and single or sharded safetensors (keys ``model.transformer.*``) shard by shard straight
onto the target device and dtype; the model is first built on the meta device so no full-size copy is ever made.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from safetensors import SafetensorError, safe_open

from ..configs import DictConfig
from ..files import check_memory, dtype_size, gib, read_json, safetensors_files
from ..generator import ShortcutError
from ..shortcut import masked_attention

log = logging.getLogger(__name__)

PREFIXES = ("model.transformer.", "transformer.")



@dataclass
class LLaDAConfig(DictConfig):
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
# building blocks (shared by the base model and the DiMOO shortcut)


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


def load_bytes(config: dict | LLaDAConfig, dtype: torch.dtype = torch.bfloat16, vq_params: int = 0) -> dict:
    """Bytes placed on the device by loading: the LLaDA transformer in ``dtype`` plus the VQ in float32."""
    cfg = config if isinstance(config, LLaDAConfig) else LLaDAConfig.from_hf(config)
    params = cfg.num_parameters()
    transformer = params * dtype_size(dtype)
    vq = int(vq_params) * 4
    return {"transformer_parameters": params, "transformer_bytes": transformer, "vq_parameters": int(vq_params),
            "vq_bytes": vq, "total_bytes": transformer + vq, "dtype": str(dtype).replace("torch.", "")}


def _set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    module._parameters[leaf] = nn.Parameter(value, requires_grad=False)


def load_llada_transformer(folder: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                           memory_check: bool = True) -> LLaDATransformer:
    """Build on the meta device, then fill it shard by shard, each tensor going straight to device and dtype."""
    folder = Path(folder)
    device = torch.device(device)
    cfg = LLaDAConfig.from_hf(read_json(folder / "config.json"))
    if memory_check:
        report = load_bytes(cfg, dtype)
        log.info("LLaDA transformer: %.2f B parameters = %s in %s to place on %s",
                 report["transformer_parameters"] / 1e9, gib(report["transformer_bytes"]), report["dtype"], device)
        check_memory(report["total_bytes"], device, "the LLaDA transformer")
    files = safetensors_files(folder)
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


