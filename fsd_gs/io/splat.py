"""Compact ``.splat`` export (antimatter15's WebGL viewer format; also read by SuperSplat and others).

32 bytes per Gaussian, no header, little-endian:

    position  3 x float32   means
    scale     3 x float32   ACTIVATED standard deviations, exp(log-scale)
    rgba      4 x uint8     colour from the DC term (SH_C0 * sh0 + 0.5) and the activated opacity, x 255
    rotation  4 x uint8     unit quaternion w, x, y, z mapped from [-1, 1] to [0, 255] as q * 128 + 128

Lossy: higher SH bands are dropped and colour, opacity and rotation are quantised to 8 bits. Rows
are sorted by importance, volume x opacity = exp(sum of log-scales) * sigmoid(opacity), largest
first, so a viewer that streams the file shows the bulk of the object first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fsd_gs.errors import UserError
from fsd_gs.gaussians import Gaussians, sh0_to_rgb
from fsd_gs.io.atomic import atomic_open

SPLAT_DTYPE = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rotation", "u1", (4,))])
"""One row of a .splat file (32 bytes)."""


def splat_rows(gaussians: Gaussians) -> np.ndarray:
    """The Gaussians as a structured array of :data:`SPLAT_DTYPE` [N], sorted by importance (see the module doc)."""
    p = {k: v.detach().to("cpu", torch.float32) for k, v in gaussians.params.items()}
    opacity = torch.sigmoid(p["opacities"])
    importance = torch.exp(p["scales"].sum(dim=1)) * opacity
    order = torch.argsort(importance, descending=True, stable=True)
    rgb = sh0_to_rgb(p["sh0"][:, 0]).clamp(0.0, 1.0)
    rgba = torch.cat([rgb, opacity[:, None]], dim=1)
    quats = torch.nn.functional.normalize(p["quats"], dim=1)
    rows = np.empty(len(order), dtype=SPLAT_DTYPE)
    rows["position"] = p["means"][order].numpy()
    rows["scale"] = torch.exp(p["scales"][order]).numpy()
    rows["rgba"] = torch.round(rgba[order] * 255.0).clamp(0, 255).to(torch.uint8).numpy()
    rows["rotation"] = torch.round(quats[order] * 128.0 + 128.0).clamp(0, 255).to(torch.uint8).numpy()
    return rows


def write_splat(gaussians: Gaussians, path: str | Path) -> Path:
    """Write ``gaussians`` as a ``.splat`` file (see the module doc), atomically; returns ``path``.

    Raises:
        UserError: the set is empty, or the file cannot be written.
    """
    path = Path(path)
    if len(gaussians) == 0:
        raise UserError(f"not writing {path}: the Gaussian set is empty (nothing to export)")
    rows = splat_rows(gaussians)
    with atomic_open(path) as f:
        f.write(rows.tobytes())
    return path
