"""``to_dict`` / ``from_dict`` for the dataclass configurations that travel in file metadata."""
from __future__ import annotations

from dataclasses import asdict, fields

from .generator import ShortcutError


class DictConfig:
    """Mixin for a dataclass: ``to_dict`` is ``asdict``; ``from_dict`` ignores unknown keys (files written by a
    later version), or refuses them with ``strict``, naming what is known."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, strict: bool = False):
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if strict and unknown:
            raise ShortcutError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in data.items() if k in known})
