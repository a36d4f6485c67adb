"""Splat files through gsplat's exporter (``gsplat.exporter.export_splats``): ``.splat`` and compressed ``.ply``.

``.splat`` (antimatter15's WebGL viewer format, also read by SuperSplat and PlayCanvas): 32 bytes per
Gaussian, no header: position 3 x float32, ACTIVATED scale exp(log-scale) 3 x float32, RGBA 4 x uint8
(the DC colour SH_C0 * sh0 + 0.5 and the sigmoid opacity, x 255), rotation 4 x uint8 (the unit quaternion
w, x, y, z mapped from [-1, 1] as q * 128 + 128). Higher SH bands are dropped; rows are in Morton order.

Compressed ``.ply`` (PlayCanvas/SuperSplat ``.compressed.ply``): chunks of 256 Gaussians in Morton order,
each with float min/max bounds of position, log-scale and colour; per Gaussian position 11-10-11 bits,
rotation "smallest three" 2+10+10+10 bits, log-scale 11-10-11 bits, colour and opacity 8 bits each, and
the higher SH coefficients 8 bits each (value / 8 + 0.5 in [0, 1]). Gaussians with opacity <= 1/255 are
left out (gsplat's rule; they are invisible), with a warning that counts them.

Both writers take our parameter layout as is (sh0 [N,1,3], shN [N,K-1,3], raw log-scales and logit
opacities, quaternions wxyz) on CPU tensors. Two things of gsplat 1.5.3 are handled here: its non-finite
filter drops every row when one opacity is NaN (we drop non-finite rows before calling it), and with SH
degree 0 its compressed writer declares an ``sh`` element without properties, which PlayCanvas refuses to
read (we leave that empty element out of the header; it has no data).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from fsd_gs.errors import UserError
from fsd_gs.finite import ExportWarning, drop_non_finite, subset
from fsd_gs.gaussians import Gaussians
from fsd_gs.io.atomic import atomic_write_bytes

COMPRESSED_MIN_OPACITY = 1.0 / 255.0
"""The compressed .ply keeps Gaussians with sigmoid(opacity) above this (gsplat's threshold)."""


def _export_bytes(gaussians: Gaussians, fmt: str) -> bytes:
    """gsplat's exporter on CPU float32 copies of the raw parameters (sh0 [N,1,3], shN [N,K-1,3])."""
    from gsplat.exporter import export_splats

    p = {k: v.detach().to("cpu", torch.float32) for k, v in gaussians.params.items()}
    return export_splats(p["means"], p["scales"], p["quats"], p["opacities"], p["sh0"], p["shN"], format=fmt)


def write_splat(gaussians: Gaussians, path: str | Path) -> Path:
    """Write ``gaussians`` as a ``.splat`` file (see the module doc), atomically; returns ``path``.

    Non-finite rows are dropped with a :class:`~fsd_gs.finite.NonFiniteWarning`.
    Raises:
        UserError: nothing to write (empty or all non-finite), or the file cannot be written.
    """
    path = Path(path)
    gaussians = drop_non_finite(gaussians, path.name)
    return atomic_write_bytes(path, _export_bytes(gaussians, "splat"))


def write_ply_compressed(gaussians: Gaussians, path: str | Path) -> Path:
    """Write ``gaussians`` as a PlayCanvas compressed ``.ply`` (see the module doc), atomically; returns ``path``.

    Non-finite rows are dropped with a NonFiniteWarning, invisible ones (opacity <= 1/255) with an
    :class:`~fsd_gs.finite.ExportWarning`.
    Raises:
        UserError: nothing to write (empty, all non-finite or all invisible), or the file cannot be written.
    """
    path = Path(path)
    gaussians = drop_non_finite(gaussians, path.name)
    visible = torch.sigmoid(gaussians.params["opacities"].detach().float()) > COMPRESSED_MIN_OPACITY
    n, kept = len(gaussians), int(visible.sum())
    if kept == 0:
        raise UserError(f"not writing {path}: all {n} Gaussians have opacity <= 1/255 (nothing visible to export)")
    if kept < n:
        warnings.warn(f"left out {n - kept} of {n} Gaussians with opacity <= 1/255 (invisible) from {path.name}",
                      ExportWarning, stacklevel=2)
        gaussians = subset(gaussians, visible)
    data = _export_bytes(gaussians, "ply_compressed")
    if gaussians.params["shN"].shape[1] == 0:  # gsplat 1.5.3 declares an empty "sh" element; PlayCanvas rejects it
        head, sep, body = data.partition(b"end_header\n")
        data = head.replace(f"element sh {kept}\n".encode(), b"") + sep + body
    return atomic_write_bytes(path, data)
