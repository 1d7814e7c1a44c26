"""Backends: one module per model family. Heavy ones are imported only when a path of theirs is loaded.

``PATH_LOADERS`` are tried in order by ``registry.load_generator`` for paths that are not our own generator
files. Each takes (path, device, dtype) and returns a generator, or None when the path is not its format.
"""
from __future__ import annotations

PATH_LOADERS: list = []
