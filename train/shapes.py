"""Procedural "shapes" images for the embedded demo: one coloured shape per 64x64 picture, the class is the shape.

Rendered here from a seed (no download, nothing to license): 4x supersampled masks, anti-aliased by averaging,
random colour, size, position, rotation and a soft background gradient.
"""
from __future__ import annotations

import math

import numpy as np

CLASS_NAMES = ["circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon", "crescent", "heart"]
ROTATES = {"square", "triangle", "diamond", "cross", "star", "hexagon", "crescent"}

FOREGROUND = np.array([[220, 40, 40], [245, 140, 20], [240, 210, 30], [40, 170, 60], [20, 170, 170],
                       [40, 90, 220], [140, 60, 200], [230, 80, 160]], dtype=np.float32)
BACKGROUND = np.array([[245, 245, 240], [215, 220, 225], [250, 238, 210], [30, 35, 60], [45, 45, 45],
                       [200, 230, 245]], dtype=np.float32)


def _star(u: np.ndarray, v: np.ndarray, points: int = 5, inner: float = 0.45) -> np.ndarray:
    rho = np.hypot(u, v)
    sector = 2 * math.pi / points
    phi = np.mod(np.arctan2(u, -v), sector)
    phi = np.where(phi > sector / 2, sector - phi, phi)
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    bx, by = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    # inside when p is on the origin's side of the edge from the outer vertex (1, 0) to the inner one (bx, by)
    edge = (bx - 1) * (py - 0) - by * (px - 1)
    return edge >= 0


def shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u right, v down, unit circumradius) in the named shape."""
    if name == "circle":
        return u * u + v * v <= 1
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if name == "triangle":
        w = -v
        return (w >= -0.55) & (math.sqrt(3) * u + w <= 1) & (-math.sqrt(3) * u + w <= 1)
    if name == "diamond":
        return np.abs(u) / 0.7 + np.abs(v) <= 1
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1) & (r2 >= 0.55 ** 2)
    if name == "star":
        return _star(u, v)
    if name == "hexagon":
        c = math.cos(math.pi / 6)
        return ((np.abs(u) <= c) & (np.abs(0.5 * u + c * v) <= c) & (np.abs(0.5 * u - c * v) <= c))
    if name == "crescent":
        return (u * u + v * v <= 1) & ((u - 0.45) ** 2 + (v + 0.15) ** 2 >= 0.8 ** 2)
    if name == "heart":
        x, y = 1.15 * u, -1.15 * v + 0.25
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(CLASS_NAMES)}")


def render(label: int, rng: np.random.Generator, size: int = 64, supersample: int = 4) -> np.ndarray:
    """One image [size, size, 3] uint8 of class ``label``."""
    name = CLASS_NAMES[label]
    hi = size * supersample
    coords = (np.arange(hi, dtype=np.float32) + 0.5) / supersample
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    radius = rng.uniform(0.28, 0.40) * size
    cx = size / 2 + rng.uniform(-0.1, 0.1) * size
    cy = size / 2 + rng.uniform(-0.1, 0.1) * size
    angle = rng.uniform(-0.3, 0.3) if name in ROTATES else 0.0
    du, dv = (xx - cx) / radius, (yy - cy) / radius
    u = math.cos(angle) * du + math.sin(angle) * dv
    v = -math.sin(angle) * du + math.cos(angle) * dv
    mask = shape_mask(name, u, v).astype(np.float32)
    mask = mask.reshape(size, supersample, size, supersample).mean(axis=(1, 3))[..., None]
    fg = np.clip(FOREGROUND[rng.integers(len(FOREGROUND))] + rng.normal(0, 12, 3), 0, 255)
    bg_top = BACKGROUND[rng.integers(len(BACKGROUND))] + rng.normal(0, 6, 3)
    bg_bottom = bg_top * rng.uniform(0.85, 1.0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    background = bg_top * (1 - ramp) + bg_bottom * ramp
    image = background * (1 - mask) + fg * mask
    return np.clip(image, 0, 255).round().astype(np.uint8)


def render_dataset(count: int, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images [N, size, size, 3] uint8 and balanced labels [N], reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(CLASS_NAMES)
    rng.shuffle(labels)
    images = np.stack([render(int(label), rng, size) for label in labels])
    return images, labels.astype(np.int64)
