"""Meissonic (GitHub viiika/Meissonic, HF MeissonFlow/Meissonic): the transformer in ``meissonic_transformer.py``,
everything around it as aMUSEd, whose design Meissonic keeps (``MeissonicGenerator`` subclasses ``AmusedGenerator``).

Shared with aMUSEd: diffusers ``VQModel`` (``vqvae/``, float32, decoded with ``force_not_quantize`` and clipped to
0..1), transformers ``CLIPTextModelWithProjection`` + ``CLIPTokenizer`` (pooled ``text_embeds``, ``hidden_states[-2]``,
the tokenizer's own pad token: the transformer attends to every padded position, so the pad id matters),
micro-conditioning ``[width, height, 0, 0, 6]``, the token embedding ``transformer.embed`` and the head ``mlm_layer``.

* Feature = input of ``mlm_layer`` (the up-block output [R, C, H, W] on the latent grid, C = heads x head dim, 1024
  for the released model), flattened row-major to [R, L, C]. Head = ``mlm_layer`` on the masked positions only.
* What differs from aMUSEd: the transformer; prompts padded to 77 tokens whatever the tokenizer's maximum; the
  timestep fed to it is the step index counted down, N - 1 - i (the sampler says i and N in ``Context``); the base
  model runs its CFG batch in the pipeline's order [uncond; cond] (rows are put back in our [cond; uncond] after).
* Sizes: width and height multiples of 2 x the VQ scale (32 px for the released VQ with scale 16), 1024 x 1024 by
  default. The transformer's RoPE positions come from the grid it runs on (see ``meissonic_transformer``), so sizes
  other than a height of 1024 px work, where the official pipeline fails.
* Sampling defaults = the official ``inference.py``: 64 steps, guidance 9 (``cfg_scale`` w = g - 1 = 8: the sampler's
  ``(1 + w) c - w u`` is ``u + g (c - u)``), and ``confidence="meissonic"``: the official scheduler's draws and
  re-masking (multinomial at temperature 1, log p + linspace(2, 0)[i] x Gumbel), with ``schedule="amused_cosine"``,
  whose counts are the official keep-count rule (floor(L cos(pi/2 (i+1)/N)), at least 1, at most one less than
  before). The vanilla sampler then replays the official pipeline token for token on the same seed.

Shortcut: the aMUSEd network (``AmusedShortcut``: the MaskGIT-Shortcut network plus the grid-position code on its
queries) under the architecture name "meissonic". No official Meissonic shortcut exists: fit one with
train/record_trajectories.py and train/fit_shortcut.py (docs/meissonic.md).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..files import read_json
from ..generator import Context, GeneratorCard, ShortcutError
from .amused import AmusedGenerator, AmusedShortcut, _weight_file, assemble, check_subfolders, folder_identity
from .meissonic_transformer import TEXT_TOKENS, MeissonicConfig, MeissonicTransformer, require_diffusers

log = logging.getLogger(__name__)

SHORTCUT_FILE = "meissonic-shortcut.safetensors"  # fitted weights found in the model folder become the default
NATIVE_SIZE = 1024
REPOSITORY = "MeissonFlow/Meissonic"
# inference.py: 64 steps, guidance 9; the pipeline's temperature (2, 0) and cosine masking schedule.
DEFAULT_SETTINGS = {"steps": 64, "cfg_scale": 8.0, "cfg_ramp": False, "schedule": "amused_cosine",
                    "confidence": "meissonic", "sm_temp": 1.0, "r_temp": 2.0, "r_temp_end": 0.0}
# transformer/config.json keys that tell Meissonic's Transformer2DModel from diffusers' class of the same name
CONFIG_MARKERS = ("num_single_layers", "axes_dims_rope", "codebook_size", "vocab_size")


class MeissonicGenerator(AmusedGenerator):
    """Meissonic text-to-image as a ``MaskedGenerator`` (see the module docstring for what differs from aMUSEd)."""

    shortcut_arch = "meissonic"
    family = "Meissonic"
    prompt_tokens = TEXT_TOKENS

    def __init__(self, transformer: MeissonicTransformer, vq, text_encoder, tokenizer, identity: str,
                 mask_token_id: Optional[int] = None, default_settings: Optional[dict] = None,
                 image_size: Optional[Sequence[int]] = None):
        super().__init__(transformer, vq, text_encoder, tokenizer, identity, mask_token_id=mask_token_id,
                         default_settings=DEFAULT_SETTINGS if default_settings is None else default_settings,
                         image_size=image_size or (NATIVE_SIZE, NATIVE_SIZE))

    def features(self, codes: torch.Tensor, masked: torch.Tensor, ctx: Context) -> torch.Tensor:
        ids = self._input_ids(codes, masked, ctx)  # the same ids on every branch
        conditioning = self._conditioning(ctx)
        rows = pipeline_rows(ctx)
        timestep = torch.full((1,), ctx.steps - 1 - ctx.step, dtype=torch.long, device=ids.device)
        fmap = self.transformer.feature(ids, conditioning["encoder_hidden_states"][rows],
                                        conditioning["pooled_text_emb"][rows], conditioning["micro_conds"][rows],
                                        timestep)
        return fmap.permute(0, 2, 3, 1)[rows].reshape(ids.shape[0], -1, fmap.shape[1])

    def transformer_config(self) -> dict:
        return asdict(self.transformer.config)


def pipeline_rows(ctx: Context) -> torch.Tensor:
    """Row order of the official CFG batch, [uncond; cond], from ours, [cond; uncond] (the same swap both ways)."""
    rows = torch.arange(ctx.rows, device=ctx.device)
    return rows.roll(ctx.batch_size) if ctx.branches == 2 else rows


class MeissonicShortcut(AmusedShortcut):
    """The aMUSEd grid-position shortcut network, fitted on Meissonic's feature."""

    family, arch = "Meissonic", "meissonic"


# ----------------------------------------------------------------------------------------------------------------
# loading a model folder


def transformer_config_file(folder: Path) -> Path:
    return Path(folder) / "transformer" / "config.json"


def is_meissonic_config(config: dict) -> bool:
    return config.get("_class_name") == "Transformer2DModel" and all(key in config for key in CONFIG_MARKERS)


def is_meissonic_folder(path: Path) -> bool:
    """A model folder whose ``transformer/config.json`` is Meissonic's ``Transformer2DModel``."""
    config = transformer_config_file(path)
    if not (Path(path).is_dir() and config.is_file()):
        return False
    try:
        return is_meissonic_config(json.loads(config.read_text()))
    except (OSError, json.JSONDecodeError):
        return False


def read_meissonic_config(folder: Path) -> MeissonicConfig:
    """The transformer config of a Meissonic folder; refuses, naming what was found, a folder that is not one."""
    config_file = transformer_config_file(folder)
    if not config_file.is_file():
        raise ShortcutError(f"{folder}: not a Meissonic model folder (no transformer/config.json); download the "
                            f"whole Hugging Face repository {REPOSITORY}")
    config = read_json(config_file)
    if not is_meissonic_config(config):
        missing = [key for key in CONFIG_MARKERS if key not in config]
        found = config.get("_class_name", "no _class_name")
        raise ShortcutError(f"{folder}: not a Meissonic model: transformer/config.json describes a {found}"
                            + (f" without {', '.join(missing)}" if missing else "")
                            + f"; Meissonic's is a Transformer2DModel with {', '.join(CONFIG_MARKERS)} "
                            f"(Hugging Face repository {REPOSITORY})")
    return MeissonicConfig.from_dict(config, source=str(config_file))


def load_transformer(folder: Path, config: MeissonicConfig, dtype: torch.dtype) -> MeissonicTransformer:
    """The transformer of ``folder/transformer`` (safetensors, the fp16 variant where only it is present), built on
    the meta device and filled from the file, cast to ``dtype``."""
    from safetensors.torch import load_file

    sub = Path(folder) / "transformer"
    state = {k: v.to(dtype) for k, v in load_file(str(_weight_file(sub, "diffusion_pytorch_model"))).items()}
    with torch.device("meta"):
        model = MeissonicTransformer(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ShortcutError(f"{sub}: the weights do not match config.json (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}); download the transformer/ folder again")
    return model


def _check_text_encoder(folder: Path, text_encoder, config: MeissonicConfig) -> None:
    text = text_encoder.config
    if (int(text.hidden_size), int(text.projection_dim)) != (config.joint_attention_dim, config.pooled_projection_dim):
        raise ShortcutError(f"{folder}/text_encoder: CLIP hidden size {text.hidden_size} and projection "
                            f"{text.projection_dim} do not fit the transformer (joint_attention_dim "
                            f"{config.joint_attention_dim}, pooled_projection_dim {config.pooled_projection_dim}); "
                            f"use the text encoder of {REPOSITORY}")


def load_meissonic(folder: Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> MeissonicGenerator:
    """A ``MeissonicGenerator`` from a Meissonic folder as published (transformer/, vqvae/, text_encoder/,
    tokenizer/, scheduler/ for the mask id); fp16 variant files are accepted. Only safetensors are read."""
    folder = Path(folder).expanduser()
    config = read_meissonic_config(folder)
    check_subfolders(folder, REPOSITORY)
    require_diffusers()
    generator = assemble(MeissonicGenerator, folder, load_transformer(folder, config, dtype),
                         folder_identity(folder, "meissonic"), DEFAULT_SETTINGS, SHORTCUT_FILE, device, dtype)
    _check_text_encoder(folder, generator.text_encoder, config)
    return generator


def load_meissonic_path(path, device, dtype) -> Optional[MeissonicGenerator]:
    """``PATH_LOADERS`` entry: None when ``path`` is not a Meissonic model folder."""
    path = Path(path)
    if not is_meissonic_folder(path):
        return None
    return load_meissonic(path, device, dtype or torch.float32)


def describe_meissonic_path(path) -> Optional[GeneratorCard]:
    """``PATH_DESCRIBERS`` entry: a text-to-image card for a Meissonic folder (its config only), else None."""
    if not is_meissonic_folder(Path(path)):
        return None
    return GeneratorCard("text", default_settings=dict(DEFAULT_SETTINGS))
