"""Backends: one module per model family. Heavy ones are imported only when a path of theirs is loaded.

``PATH_LOADERS`` are tried in order by ``registry.load_generator`` for paths that are not our own generator
files. Each takes (path, device, dtype) and returns a generator, or None when the path is not its format.
``PATH_DESCRIBERS`` are tried by ``registry.describe_generator``: each takes a path and returns its
``GeneratorCard`` read from configs and headers only (no weights), or None when the path is not its format.
"""
from __future__ import annotations

PATH_LOADERS: list = []
PATH_DESCRIBERS: list = []


def _load_dimoo_folder(path, device, dtype):
    """Lumina-DiMOO Hugging Face folder (config.json with model_type 'llada'); imports the backend only when called."""
    from .dimoo import load_dimoo_path
    return load_dimoo_path(path, device, dtype)


PATH_LOADERS.append(_load_dimoo_folder)


def _describe_dimoo_folder(path):
    from .dimoo import describe_dimoo_path
    return describe_dimoo_path(path)


PATH_DESCRIBERS.append(_describe_dimoo_folder)


def _load_maskgit_official(path, device, dtype):
    """Official MaskGIT files: a pretrained_maskgit/ folder or a MaskGIT_ImageNet_*.pth / converted transformer
    file with its VQGAN beside it (rule in maskgit_official); imports the backend only when called."""
    from .maskgit_official import load_path
    return load_path(path, device, dtype)


PATH_LOADERS.append(_load_maskgit_official)


def _describe_maskgit_official(path):
    from .maskgit_official import describe_path
    return describe_path(path)


PATH_DESCRIBERS.append(_describe_maskgit_official)


def _load_amused_folder(path, device, dtype):
    """aMUSEd diffusers folder (transformer/config.json of a UVit2DModel, vqvae/, text_encoder/, tokenizer/);
    imports the backend (and diffusers) only when called."""
    from .amused import load_amused_path
    return load_amused_path(path, device, dtype)


PATH_LOADERS.append(_load_amused_folder)


def _describe_amused_folder(path):
    from .amused import describe_amused_path
    return describe_amused_path(path)


PATH_DESCRIBERS.append(_describe_amused_folder)


def _load_meissonic_folder(path, device, dtype):
    """Meissonic model folder (transformer/config.json of Meissonic's Transformer2DModel, vqvae/, text_encoder/,
    tokenizer/, scheduler/); imports the backend (and diffusers) only when called."""
    from .meissonic import load_meissonic_path
    return load_meissonic_path(path, device, dtype)


PATH_LOADERS.append(_load_meissonic_folder)


def _describe_meissonic_folder(path):
    from .meissonic import describe_meissonic_path
    return describe_meissonic_path(path)


PATH_DESCRIBERS.append(_describe_meissonic_folder)
