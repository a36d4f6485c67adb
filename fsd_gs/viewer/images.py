"""Small numpy image helpers for the viewer's panels (all pure functions on [H,W,3] uint8 images)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image

WINDOW_COLOR = (255, 40, 40)
"""Outline colour of the current camera's window on the world noise map."""


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float image [H,W,3] in [0,1] -> uint8 [H,W,3]."""
    return (np.clip(np.nan_to_num(rgb, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def channel_stats(noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per channel of the (up to) first 3 channels of [C,H,W] noise, each [c]."""
    shown = noise[: min(3, noise.shape[0])].reshape(min(3, noise.shape[0]), -1).astype(np.float64)
    return shown.mean(axis=1), np.maximum(shown.std(axis=1), 1e-8)


def noise_to_rgb(noise: np.ndarray, stats: Optional[tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """Noise [C,H,W] -> uint8 RGB [H,W,3]: its first 3 channels (grey for C < 3), mean +- 3 std mapped to [0,1].

    ``stats`` (from :func:`channel_stats`) lets a window be shown with the scale of its whole map.
    """
    if noise.ndim != 3:
        raise ValueError(f"noise must be [C,H,W], got shape {noise.shape}")
    mean, std = stats if stats is not None else channel_stats(noise)
    c = min(3, noise.shape[0])
    shown = (noise[:c].astype(np.float64) - mean[:c, None, None]) / (6.0 * std[:c, None, None]) + 0.5
    if c < 3:
        shown = np.repeat(shown[:1], 3, axis=0)
    return to_uint8(shown.transpose(1, 2, 0))


def resize_to_height(image: np.ndarray, height: int, nearest: bool = False) -> np.ndarray:
    """Resize uint8 [H,W,3] to ``height`` rows keeping the aspect ratio (nearest keeps noise pixels crisp)."""
    h, w = image.shape[:2]
    if h == height:
        return image
    width = max(1, round(w * height / h))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 6, gap_color: int = 255) -> np.ndarray:
    """Two uint8 images of equal height next to each other with a ``gap``-pixel separator."""
    if left.shape[0] != right.shape[0]:
        raise ValueError("side_by_side needs images of equal height")
    spacer = np.full((left.shape[0], gap, 3), gap_color, dtype=np.uint8)
    return np.concatenate([left, spacer, right], axis=1)


def outline_window(
    image: np.ndarray,
    origin: tuple[int, int],
    size: tuple[int, int],
    map_shape: tuple[int, int],
    color: tuple[int, int, int] = WINDOW_COLOR,
    thickness: int = 2,
) -> np.ndarray:
    """A copy of ``image`` (the map drawn at any scale) with the window outlined (a ``color`` frame with a
    white rim inside it, visible on any noise).

    Args:
        origin: (row0, col0) of the window in map cells.
        size: (h, w) of the window in map cells.
        map_shape: (rows, cols) of the map in cells; columns wrap around (the map is periodic in azimuth).
    """
    out = image.copy()
    img_h, img_w = out.shape[:2]
    sy, sx = img_h / map_shape[0], img_w / map_shape[1]
    r0 = max(0, min(int(np.floor(origin[0] * sy)), img_h - 1))
    r1 = max(r0 + 1, min(img_h, int(np.ceil((origin[0] + size[0]) * sy))))
    cols = np.arange(int(np.floor(origin[1] * sx)), int(np.ceil((origin[1] + size[1]) * sx))) % img_w
    t = max(1, thickness)
    for inset, paint in ((t, (255, 255, 255)), (0, color)):
        width = t if inset == 0 else 1
        top, bottom = r0 + inset, r1 - inset
        inner = cols[inset : len(cols) - inset] if inset else cols
        if bottom <= top or len(inner) == 0:
            continue
        out[top : min(img_h, top + width), inner] = paint
        out[max(top, bottom - width) : bottom, inner] = paint
        out[top:bottom, inner[:width]] = paint
        out[top:bottom, inner[-width:]] = paint
    return out
