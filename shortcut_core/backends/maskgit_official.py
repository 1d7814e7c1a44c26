"""The real MaskGIT files in their original formats: MaskGIT transformer ``.pth``, taming VQGAN ``last.ckpt``
(+ ``model.yaml``), the official ``maskgit-shortcut.pth``, and our safetensors conversions of all three.

Files (Hugging Face ``llvictorll/Maskgit-pytorch``, folder ``pretrained_maskgit/``):

- ``MaskGIT/MaskGIT_ImageNet_256.pth`` / ``_512.pth``: ``torch.save({"iter", "global_epoch", "model_state_dict",
  "optimizer_state_dict"})``. Sizes come from tensor shapes (256 px -> 16x16 token grid, 512 px -> 32x32); the
  head count cannot be read from shapes and is 16 in the released files (``heads=`` overrides it, and a
  converted file records it). The optimizer state is never materialised: zip checkpoints are memory-mapped,
  so only the model tensors are read, and the rest is dropped as soon as the model state is picked out.
- ``VQGAN/last.ckpt``: a PyTorch Lightning checkpoint ``{"state_dict": ..., ...}``; ``loss.*`` keys (the
  discriminator and LPIPS) and, for sampling, the encoder are ignored. Its config is ``model.yaml`` beside it
  (taming format, ``model.params.ddconfig``, read with ``yaml.safe_load``) when present, else the standard
  ImageNet f16 config (the ``VQConfig`` defaults). Lightning checkpoints of that era also pickle training
  metadata (e.g. the ``ModelCheckpoint`` callback class as a dict key), which ``weights_only`` loading refuses:
  such globals are replaced by an inert placeholder of ours, never imported or run, and then dropped.
- ``maskgit-shortcut.pth`` (HF ``Kaiwen-Zhu/MIGM-Shortcut``, ``MaskGIT-Shortcut/``): through the core's
  ``load_shortcut``. It carries no generator identity, so it is accepted on any MaskGIT with feature size 768.

Every pickle is read with ``torch.load(weights_only=True)``: a file that needs code to unpickle is refused with
a ``ShortcutError``, and so is a truncated or corrupted one (the message names the file).

Path rule (``load_path``, registered in ``backends.PATH_LOADERS``):

1. A folder laid out like the official ``pretrained_maskgit/`` (or a folder containing ``pretrained_maskgit/``):
   ``MaskGIT/<transformer>`` + ``VQGAN/<vqgan>``. Transformer: ``*.safetensors`` before ``*.pth``/``*.pt`` of
   the same name; with several, the name containing ``512`` wins, then ``256`` (give the file path to choose).
2. A single MaskGIT transformer file (``.pth``/``.pt``, or ``.safetensors`` from ``convert``): its VQGAN is the
   first that exists of ``VQGAN/``, ``../VQGAN/`` (the official layout) and the file's own folder, each tried
   for ``last.safetensors``, ``vqgan.safetensors``, ``last.ckpt``, ``vqgan.ckpt``.

A ``.ckpt`` VQGAN takes its config from ``model.yaml`` (or ``<name>.yaml``) in its folder. For a 32x32 model,
released shortcut weights found at ``MaskGIT-Shortcut/maskgit-shortcut.{safetensors,pth}`` (or
``maskgit-shortcut.*``) in that folder or up to two folders above become the default ``shortcut`` setting.

Generator identity: ``maskgit<px>-<12 hex>`` where px = grid * VQ downsampling and the hash covers a few
transformer tensors (as float32), their shapes and the head count. It depends only on the weights, so it is
the same for the ``.pth`` and its converted safetensors and survives renaming; it ignores the VQGAN, which does
not change the features a shortcut is fitted to.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..generator import GeneratorCard, ShortcutError
from ..files import PICKLE_SUFFIXES, read_metadata, read_pickle, read_safetensors, safetensors_shapes, save_safetensors
from ..weights import ShortcutWeights, load_shortcut
from .maskgit import MaskGITConfig, MaskGITGenerator, MaskTransformer
from .vqgan import VQConfig, VQModel

log = logging.getLogger(__name__)

OFFICIAL_FORMAT = "migm-official"  # metadata "format" of our conversions of the official transformer / VQGAN
KIND_TRANSFORMER = "maskgit-transformer"
KIND_VQGAN = "taming-vqgan"
KIND_SHORTCUT = "maskgit-shortcut"
DEFAULT_HEADS = 16
DEFAULT_CODEBOOK = 1024
TRANSFORMER_SUFFIXES = (".safetensors", ".pth", ".pt")
VQGAN_NAMES = ("last.safetensors", "vqgan.safetensors", "last.ckpt", "vqgan.ckpt")
SHORTCUT_NAMES = ("maskgit-shortcut.safetensors", "maskgit-shortcut.pth")
HF_MASKGIT = "llvictorll/Maskgit-pytorch"
HF_SHORTCUT = "Kaiwen-Zhu/MIGM-Shortcut"

# Sampler settings of the reference code (valeoai/Maskgit-pytorch; MIGM-Shortcut infer.py for 512 px):
# arccos schedule, linear CFG ramp, softmax temperature 1, Gumbel confidence noise r_temp decaying to 0.
REFERENCE_SETTINGS = {
    256: {"steps": 8, "cfg_scale": 3.0, "r_temp": 4.5, "sm_temp": 1.0, "schedule": "arccos", "cfg_ramp": True},
    512: {"steps": 15, "cfg_scale": 2.8, "r_temp": 7.0, "sm_temp": 1.0, "schedule": "arccos", "cfg_ramp": True},
}

def _strip_prefixes(state: dict) -> dict:
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _only_tensors(state: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not state:
        raise ShortcutError(f"{path}: expected a {what} state dict, found {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ShortcutError(f"{path}: the {what} state dict holds non-tensor entries ({', '.join(map(str, bad[:3]))})")
    return state


def _kind_of_keys(keys, metadata: Optional[dict] = None) -> Optional[str]:
    metadata = metadata or {}
    if metadata.get("format") == OFFICIAL_FORMAT and metadata.get("kind") in (KIND_TRANSFORMER, KIND_VQGAN):
        return metadata["kind"]
    if metadata.get("format") == "migm-shortcut":
        return KIND_SHORTCUT
    keys = set(keys)
    if "model_state_dict" in keys:
        return KIND_TRANSFORMER
    if "state_dict" in keys:
        return KIND_VQGAN
    if "tok_emb.weight" in keys and "pos_emb" in keys:
        return KIND_TRANSFORMER
    if "quantize.embedding.weight" in keys:
        return KIND_VQGAN
    if any(k.startswith("blocks.") for k in keys) and ("proj_out.weight" in keys or "last_layer.1.weight" in keys):
        return KIND_SHORTCUT
    return None


def sniff(path: Path) -> Optional[str]:
    """What an official-format file is: ``KIND_TRANSFORMER``, ``KIND_VQGAN``, ``KIND_SHORTCUT`` or None.

    Safetensors: from the header only. Pickles: from the top-level keys (memory-mapped, cheap for zip files).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return _kind_of_keys(safetensors_shapes(path), read_metadata(path))
    if path.suffix in PICKLE_SUFFIXES:
        obj = read_pickle(path)
        return _kind_of_keys(obj.keys()) if isinstance(obj, dict) else None
    return None


# --------------------------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------------------------

def read_transformer_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, info) of a MaskGIT transformer file; info has ``source``, ``heads``/``codebook_size`` when
    a converted file recorded them, and ``iter``/``global_epoch`` of the training run."""
    path = Path(path)
    obj, metadata = read_of_kind(path, KIND_TRANSFORMER)
    if path.suffix == ".safetensors":
        config = metadata.get("config") if isinstance(metadata.get("config"), dict) else {}
        info = {"source": str(metadata.get("source", path.name)), "heads": config.get("heads"),
                "codebook_size": config.get("codebook_size"), "iter": metadata.get("iter"),
                "global_epoch": metadata.get("global_epoch")}
        return _strip_prefixes(obj), info
    info: dict = {"source": path.name, "heads": None, "codebook_size": None}
    if "model_state_dict" in obj:
        info["iter"], info["global_epoch"] = obj.get("iter"), obj.get("global_epoch")
        state = obj["model_state_dict"]
    else:
        state = obj
    del obj  # the optimizer state goes now (with mmap it was never read)
    return _strip_prefixes(_only_tensors(state, path, "MaskGIT transformer")), info


def read_of_kind(path: Path, wanted: str) -> tuple[Any, dict]:
    """(tensors, metadata) of a converted safetensors file, or (object, {}) of a pickle, that holds ``wanted``."""
    if path.suffix == ".safetensors":
        obj, metadata = read_safetensors(path)
        kind = _kind_of_keys(obj.keys(), metadata)
    else:
        obj, metadata = read_pickle(path), {}
        kind = _kind_of_keys(obj.keys()) if isinstance(obj, dict) else None
    if kind != wanted:
        raise ShortcutError(_wrong_kind(path, kind, wanted))
    return obj, metadata


def _wrong_kind(path: Path, kind: Optional[str], wanted: str) -> str:
    hints = {
        KIND_VQGAN: "it is a VQGAN (taming) checkpoint",
        KIND_SHORTCUT: "it holds shortcut weights (give them as the shortcut, not the generator)",
        KIND_TRANSFORMER: "it is a MaskGIT transformer checkpoint",
        None: "its keys match no MaskGIT, VQGAN or shortcut checkpoint",
    }
    wants = {KIND_TRANSFORMER: "a MaskGIT transformer (MaskGIT_ImageNet_256.pth / _512.pth)",
             KIND_VQGAN: "a taming VQGAN checkpoint (VQGAN/last.ckpt)",
             KIND_SHORTCUT: "MaskGIT-Shortcut weights (maskgit-shortcut.pth)"}
    return f"{path}: expected {wants[wanted]}, but {hints.get(kind, hints[None])}"


def _materialise(tensor: torch.Tensor) -> torch.Tensor:
    """A private in-memory float32 copy (detaches it from a memory-mapped file)."""
    if tensor.is_floating_point():
        return tensor.to(torch.float32, copy=True)
    return tensor.clone()


def _check_fits(module: torch.nn.Module, state: dict, path: Path, what: str, hint: str = "") -> dict:
    """Keys and shapes of ``state`` against ``module``; returns the state restricted to the module's keys."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or wrong:
        detail = (f"missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}" if missing
                  else f"shape mismatch {'; '.join(wrong[:3])}")
        raise ShortcutError(f"{path}: the {what} weights do not fit the expected architecture ({detail}).{hint}")
    extra = [k for k in state if k not in expected]
    if extra:
        log.warning("%s: ignoring %d unexpected %s tensors (%s...)", path.name, len(extra), what, extra[0])
    return {k: state[k] for k in expected}


def transformer_config(state: dict, codebook_size: int, heads: int, path: Path) -> MaskGITConfig:
    try:
        cfg = MaskGITConfig.from_state_dict(state, codebook_size, heads)
    except (KeyError, ValueError, IndexError) as err:
        raise ShortcutError(f"{path}: not a MaskGIT transformer state dict (missing {err})") from err
    if cfg.nclass < 1:
        raise ShortcutError(f"{path}: an embedding table of {state['tok_emb.weight'].shape[0]} rows is too small "
                            f"for a codebook of {codebook_size} codes: the VQGAN does not belong to this transformer")
    if cfg.grid * cfg.grid + 1 != state["pos_emb"].shape[1]:
        raise ShortcutError(f"{path}: position embedding of {state['pos_emb'].shape[1]} entries is not a square "
                            "token grid plus one class token")
    if cfg.hidden_dim % heads:
        raise ShortcutError(f"{path}: {heads} heads do not divide the hidden size {cfg.hidden_dim}")
    return cfg


def build_transformer(state: dict, codebook_size: int, heads: int, path: Path, check_only: bool = False
                      ) -> MaskTransformer:
    """The transformer with ``state`` copied in (float32). ``check_only``: validate keys and shapes, keep it on
    the meta device (no memory used)."""
    cfg = transformer_config(state, codebook_size, heads, path)
    with torch.device("meta"):
        model = MaskTransformer(cfg)
    hint = (f" The codebook size {codebook_size} (from the VQGAN) splits the embedding table: check that the "
            "VQGAN belongs to this transformer.")
    fitted = _check_fits(model, state, path, "MaskGIT transformer", hint)
    if not check_only:
        model.load_state_dict({k: _materialise(v) for k, v in fitted.items()}, assign=True)
    return model.eval()


def load_transformer(path: Path, codebook_size: Optional[int] = None, heads: Optional[int] = None
                     ) -> tuple[MaskTransformer, dict]:
    """A ``MaskTransformer`` from an official ``.pth`` or a converted safetensors, and its info.

    ``codebook_size`` (from the VQGAN) splits the embedding table into codes / mask / classes / null class;
    ``heads`` defaults to what a converted file recorded, else 16 (the released models).
    """
    path = Path(path)
    state, info = read_transformer_state(path)
    recorded_codebook = info.get("codebook_size")
    if codebook_size is not None and recorded_codebook not in (None, codebook_size):
        raise ShortcutError(f"{path}: converted for a codebook of {recorded_codebook} codes, but the VQGAN has "
                            f"{codebook_size}: the VQGAN does not belong to this transformer")
    codebook = int(codebook_size or recorded_codebook or DEFAULT_CODEBOOK)
    heads = int(heads or info.get("heads") or DEFAULT_HEADS)
    model = build_transformer(state, codebook, heads, path)
    info.update(heads=heads, codebook_size=codebook, identity_hash=weights_hash(state, heads))
    return model, info


def weights_hash(state: dict, heads: int) -> str:
    """12 hex digits of a sha256 over a few transformer tensors (float32), their shapes and the head count."""
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.layers."))
    keys = ["tok_emb.weight", "pos_emb", "bias", "first_layer.2.weight", "last_layer.2.weight",
            f"transformer.layers.{depth - 1}.1.fn.net.3.weight"]
    digest = hashlib.sha256(f"maskgit heads={heads}".encode())
    for key in keys:
        if key not in state:
            continue
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:12]


# --------------------------------------------------------------------------------------------------------------
# VQGAN
# --------------------------------------------------------------------------------------------------------------

def read_vqgan_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict without ``loss.*``, metadata) of a taming VQGAN ``.ckpt`` or a converted safetensors."""
    path = Path(path)
    state, metadata = read_of_kind(path, KIND_VQGAN)
    if path.suffix != ".safetensors":
        obj = state
        lightning = "state_dict" in obj
        state = obj["state_dict"] if lightning else obj
        metadata = {"global_step": obj.get("global_step"), "epoch": obj.get("epoch")} if lightning else {}
        del obj  # optimizer states and callbacks go now (with mmap they were never read)
        if isinstance(state, dict):
            state = {k: v for k, v in _strip_prefixes(state).items() if not str(k).startswith("loss.")}
        state = _only_tensors(state, path, "VQGAN")
    return {k: v for k, v in state.items() if not k.startswith("loss.")}, metadata


def read_taming_yaml(path: Path) -> VQConfig:
    """``VQConfig`` from a taming ``model.yaml`` (``model.params.ddconfig``, ``n_embed``, ``embed_dim``)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ShortcutError(f"{path}: not a readable YAML file ({err})") from err
    params = None
    if isinstance(data, dict):
        model = data.get("model", data)
        params = model.get("params", model) if isinstance(model, dict) else None
    if not isinstance(params, dict) or "ddconfig" not in params or "n_embed" not in params:
        raise ShortcutError(f"{path}: not a taming VQGAN config (expected model.params.ddconfig, n_embed, embed_dim)")
    try:
        return VQConfig.from_taming(params)
    except (KeyError, TypeError, ValueError) as err:
        raise ShortcutError(f"{path}: invalid taming VQGAN config ({err})") from err


def find_vq_yaml(vqgan_path: Path) -> Optional[Path]:
    folder = Path(vqgan_path).parent
    for name in ("model.yaml", f"{Path(vqgan_path).stem}.yaml", "config.yaml"):
        if (folder / name).is_file():
            return folder / name
    return None


def vq_config_for(path: Path, state: dict, metadata: dict, config: Optional[VQConfig | dict | str | Path] = None
                  ) -> tuple[VQConfig, str]:
    """The VQGAN config and where it came from: given, recorded by ``convert``, ``model.yaml``, or the default."""
    if isinstance(config, VQConfig):
        return config, "given"
    if isinstance(config, dict):
        return (VQConfig.from_taming(config) if "ddconfig" in config else VQConfig(**config)), "given"
    if isinstance(config, (str, Path)):
        return read_taming_yaml(Path(config)), str(config)
    recorded = metadata.get("config")
    if metadata.get("format") == OFFICIAL_FORMAT and isinstance(recorded, dict):
        return VQConfig(**recorded), "recorded"
    yaml_path = find_vq_yaml(path)
    if yaml_path is not None:
        return read_taming_yaml(yaml_path), str(yaml_path)
    cfg = VQConfig()
    if "quantize.embedding.weight" in state:
        cfg.n_embed, cfg.embed_dim = (int(s) for s in state["quantize.embedding.weight"].shape)
    if "post_quant_conv.weight" in state:
        cfg.z_channels = int(state["post_quant_conv.weight"].shape[0])
    return cfg, "default"


def load_vqgan(path: Path, config: Optional[VQConfig | dict | str | Path] = None, with_encoder: bool = False
               ) -> tuple[VQModel, dict]:
    """A taming ``VQModel`` (decoder side unless ``with_encoder``) and info (``config_source``, ``source``)."""
    path = Path(path)
    state, metadata = read_vqgan_state(path)
    cfg, origin = vq_config_for(path, state, metadata, config)
    model = build_vqgan(state, cfg, path, with_encoder, origin)
    info = {"source": str(metadata.get("source", path.name)), "config_source": origin}
    return model, info


def build_vqgan(state: dict, cfg: VQConfig, path: Path, with_encoder: bool = False, origin: str = "given") -> VQModel:
    """The VQModel with ``state`` copied in (float32), after a key/shape check with an actionable message."""
    if not with_encoder:
        state = {k: v for k, v in state.items() if not k.startswith(("encoder.", "quant_conv."))}
    with torch.device("meta"):
        model = VQModel(cfg, with_encoder=with_encoder)
    hint = ("" if origin != "default" else
            " No model.yaml was found next to it, so the standard ImageNet f16 config was assumed: put the "
            "taming model.yaml of this VQGAN in the same folder (pretrained_maskgit/VQGAN/model.yaml).")
    fitted = _check_fits(model, state, path, "VQGAN", hint)
    model.load_state_dict({k: _materialise(v) for k, v in fitted.items()}, assign=True)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------------------

def reference_settings(grid: int) -> dict:
    """Sampler settings of the reference for a token grid: 32 -> the 512 px ones, otherwise the 256 px ones."""
    return dict(REFERENCE_SETTINGS[512 if grid >= 32 else 256])


def load_maskgit(transformer: Path, vqgan: Path, heads: Optional[int] = None,
                 vq_config: Optional[VQConfig | dict | str | Path] = None,
                 class_names: Optional[Sequence[str]] = None) -> MaskGITGenerator:
    """A ``MaskGITGenerator`` on CPU in float32 from a transformer file and a VQGAN file (official or converted).

    The codebook size comes from the VQGAN; ``heads`` defaults to the converted file's record, else 16.
    ``default_settings`` are the reference sampler settings for the model's resolution.
    """
    transformer, vqgan = Path(transformer), Path(vqgan)
    vq, vq_info = load_vqgan(vqgan, vq_config)
    model, info = load_transformer(transformer, codebook_size=vq.config.n_embed, heads=heads)
    cfg = model.config
    if class_names is None and cfg.nclass == 1000:
        from ..imagenet_classes import IMAGENET_CLASSES
        class_names = IMAGENET_CLASSES
    pixels = cfg.grid * vq.config.downsample_factor
    identity = f"maskgit{pixels}-{info['identity_hash']}"
    generator = MaskGITGenerator(model, vq, identity=identity, class_names=class_names,
                                 default_settings=reference_settings(cfg.grid))
    generator.sources = {"transformer": str(transformer), "vqgan": str(vqgan), "vq_config": vq_info["config_source"],
                         "transformer_source": info["source"]}
    generator.eval().requires_grad_(False)
    log.info("loaded MaskGIT %s: %dx%d tokens, %d classes, %d heads (VQ config: %s)", identity, cfg.grid, cfg.grid,
             cfg.nclass, cfg.heads, vq_info["config_source"])
    return generator


def load_official_shortcut(path: Path, generator: Optional[MaskGITGenerator] = None,
                           heads: Optional[int] = None) -> ShortcutWeights:
    """Official ``maskgit-shortcut.pth`` or its conversion, via the core's ``load_shortcut`` (16 heads default).

    The official file has no generator identity: it is accepted on any MaskGIT with the right feature size.
    """
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        read_of_kind(path, KIND_SHORTCUT)  # the clear refusal / wrong-kind messages, before the core loader reads it
    weights = load_shortcut(path, generator, num_heads=heads)
    if generator is not None and generator.grid_size != (32, 32) and not weights.generator:
        log.info("%s: the released MaskGIT-Shortcut weights were fitted on MaskGIT-512 (32x32 tokens); this "
                 "generator has %s", path.name, "x".join(map(str, generator.grid_size)))
    return weights


# --------------------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------------------

def official_root(folder: Path) -> Optional[Path]:
    """The ``pretrained_maskgit``-like folder in or at ``folder``, or None when it is not laid out like one."""
    folder = Path(folder)
    if (folder / "pretrained_maskgit").is_dir():
        folder = folder / "pretrained_maskgit"
    if (folder / "MaskGIT").is_dir() or (folder / "VQGAN").is_dir():
        return folder
    return None


def choose_transformer(folder: Path) -> Path:
    """The transformer file in an official ``MaskGIT/`` folder (safetensors first; 512 before 256)."""
    files = sorted(p for p in Path(folder).glob("*") if p.is_file() and p.suffix in TRANSFORMER_SUFFIXES)
    if not files:
        raise ShortcutError(
            f"{folder}: no MaskGIT transformer here. Download pretrained_maskgit/MaskGIT/MaskGIT_ImageNet_512.pth "
            f"(or _256.pth) from the Hugging Face repo {HF_MASKGIT} into this folder")
    by_stem: dict[str, Path] = {}
    for path in files:
        current = by_stem.get(path.stem)
        if current is None or TRANSFORMER_SUFFIXES.index(path.suffix) < TRANSFORMER_SUFFIXES.index(current.suffix):
            by_stem[path.stem] = path
    if len(by_stem) == 1:
        return next(iter(by_stem.values()))
    for tag in ("512", "256"):
        tagged = [p for s, p in sorted(by_stem.items()) if tag in s]
        if len(tagged) == 1:
            return tagged[0]
    raise ShortcutError(f"{folder}: several transformer files ({', '.join(sorted(by_stem))}); give the path of "
                        "the one to load")


def find_vqgan(transformer: Path) -> Optional[Path]:
    """The VQGAN of a transformer file by the documented rule (``VQGAN/``, ``../VQGAN/``, own folder)."""
    here = Path(transformer).resolve().parent
    for folder in (here / "VQGAN", here.parent / "VQGAN", here):
        for name in VQGAN_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def find_official_shortcut(start: Path, levels: int = 2) -> Optional[Path]:
    folder = Path(start).resolve()
    for _ in range(levels + 1):
        for sub in (folder / "MaskGIT-Shortcut", folder):
            for name in SHORTCUT_NAMES:
                if (sub / name).is_file():
                    return sub / name
        folder = folder.parent
    return None


def resolve_pieces(path: Path) -> Optional[tuple[Path, Path, Path]]:
    """(transformer, vqgan, folder to search shortcuts from) for a path, None when it is not this format."""
    path = Path(path)
    if path.is_dir():
        root = official_root(path)
        if root is None:
            return None
        transformer = choose_transformer(root / "MaskGIT") if (root / "MaskGIT").is_dir() else None
        if transformer is None:
            raise ShortcutError(f"{root}: MaskGIT/ is missing. Download pretrained_maskgit/MaskGIT/"
                                f"MaskGIT_ImageNet_512.pth from the Hugging Face repo {HF_MASKGIT} into {root / 'MaskGIT'}")
        vqgan = next((root / "VQGAN" / n for n in VQGAN_NAMES if (root / "VQGAN" / n).is_file()), None)
        if vqgan is None:
            raise ShortcutError(f"{root}: no VQGAN. Download pretrained_maskgit/VQGAN/last.ckpt and model.yaml from "
                                f"the Hugging Face repo {HF_MASKGIT} into {root / 'VQGAN'} (or convert last.ckpt "
                                "to VQGAN/last.safetensors)")
        return transformer, vqgan, root
    if not path.is_file():
        return None
    kind = sniff(path)
    if kind is None:
        return None
    if kind != KIND_TRANSFORMER:
        raise ShortcutError(_wrong_kind(path, kind, KIND_TRANSFORMER) + "; a generator is the pretrained_maskgit "
                            "folder or its MaskGIT/MaskGIT_ImageNet_*.pth file")
    vqgan = find_vqgan(path)
    if vqgan is None:
        here = path.resolve().parent
        raise ShortcutError(
            f"{path}: no VQGAN found for this MaskGIT transformer. Looked for {', '.join(VQGAN_NAMES)} in "
            f"{here / 'VQGAN'}, {here.parent / 'VQGAN'} and {here}. Download pretrained_maskgit/VQGAN/last.ckpt "
            f"and model.yaml from the Hugging Face repo {HF_MASKGIT} (or a converted vqgan.safetensors) to one of them")
    return path, vqgan, path.resolve().parent


def load_path(path: Path, device: Any = None, dtype: Any = None) -> Optional[MaskGITGenerator]:
    """``PATH_LOADERS`` entry: a generator for an official folder or transformer file, else None.

    Loads on CPU in float32; the registry then moves and casts it (``device``/``dtype`` are not used here).
    """
    pieces = resolve_pieces(Path(path))
    if pieces is None:
        return None
    transformer, vqgan, search_from = pieces
    generator = load_maskgit(transformer, vqgan)
    if generator.grid_size == (32, 32):
        shortcut = find_official_shortcut(search_from)
        if shortcut is not None:
            generator.default_settings["shortcut"] = str(shortcut)
    return generator


def describe_path(path: Path) -> Optional[GeneratorCard]:
    """``PATH_DESCRIBERS`` entry: the card of a MaskGIT transformer file (grid and class count from tensor
    shapes, read from the header or a memory-mapped pickle), None for VQGANs, shortcuts and other files."""
    path = Path(path)
    if not path.is_file() or path.suffix not in TRANSFORMER_SUFFIXES or sniff(path) != KIND_TRANSFORMER:
        return None
    positions, vocab, codebook = _transformer_shapes(path)
    vqgan = find_vqgan(path)
    if vqgan is not None:
        codebook = _vqgan_codebook(vqgan)
    grid = round((positions - 1) ** 0.5)
    classes = vocab - codebook - 2  # codes, the mask token, the classes, the null class
    if classes == 1000:
        from ..imagenet_classes import IMAGENET_CLASSES
        names = tuple(IMAGENET_CLASSES)
    else:
        names = tuple(str(i) for i in range(max(classes, 0)))
    return GeneratorCard("class", names, reference_settings(grid))


def _transformer_shapes(path: Path) -> tuple[int, int, int]:
    """(positions incl. the class token, embedding rows, codebook size) of a transformer file."""
    if path.suffix == ".safetensors":
        config = read_metadata(path).get("config")
        config = config if isinstance(config, dict) else {}
        shapes = safetensors_shapes(path)
        positions = shapes[next(k for k in shapes if k.endswith("pos_emb"))][1]
        vocab = shapes[next(k for k in shapes if k.endswith("tok_emb.weight"))][0]
        return int(positions), int(vocab), int(config.get("codebook_size") or DEFAULT_CODEBOOK)
    obj = read_pickle(path)
    state = _strip_prefixes(obj.get("model_state_dict", obj))
    return int(state["pos_emb"].shape[1]), int(state["tok_emb.weight"].shape[0]), DEFAULT_CODEBOOK


def _vqgan_codebook(path: Path) -> int:
    """The codebook size of a VQGAN file (header or memory-mapped pickle), which fixes the transformer's classes."""
    key = "quantize.embedding.weight"
    if path.suffix == ".safetensors":
        shapes = safetensors_shapes(path)
        return int(shapes[next(k for k in shapes if k.endswith(key))][0])
    obj = read_pickle(path)
    state = obj.get("state_dict", obj)
    return int(state[next(k for k in state if k.endswith(key))].shape[0])


# --------------------------------------------------------------------------------------------------------------
# Writing converted files
# --------------------------------------------------------------------------------------------------------------

def save_converted_transformer(dst: Path, state: dict, info: dict, heads: int,
                               codebook_size: Optional[int] = None) -> dict:
    """Transformer tensors as they are, with shape config, heads and the source file name in the metadata."""
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.layers."))
    vocab, hidden = (int(s) for s in state["tok_emb.weight"].shape)
    config = {"grid": round((state["pos_emb"].shape[1] - 1) ** 0.5), "hidden_dim": hidden, "depth": depth,
              "heads": int(heads), "mlp_dim": int(state["transformer.layers.0.1.fn.net.0.weight"].shape[0]),
              "vocab_size": vocab}
    if codebook_size:
        config["codebook_size"] = int(codebook_size)
    metadata = {"format": OFFICIAL_FORMAT, "format_version": "1", "kind": KIND_TRANSFORMER,
                "source": info.get("source", ""), "config": config,
                "description": "MaskGIT transformer (valeoai/Maskgit-pytorch MaskTransformer state dict)"}
    for key in ("iter", "global_epoch"):
        if isinstance(info.get(key), (int, float)):
            metadata[key] = info[key]
    save_safetensors(Path(dst), state, metadata)
    return metadata


def save_converted_vqgan(dst: Path, state: dict, config: VQConfig, source: str, extra: Optional[dict] = None) -> dict:
    metadata = {"format": OFFICIAL_FORMAT, "format_version": "1", "kind": KIND_VQGAN, "source": source,
                "config": config.to_dict(), "description": "taming-transformers VQGAN (VQModel state dict, no loss.*)"}
    for key, value in (extra or {}).items():
        if isinstance(value, (int, float)):
            metadata[key] = value
    save_safetensors(Path(dst), state, metadata)
    return metadata
