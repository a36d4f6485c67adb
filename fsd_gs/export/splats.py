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
from typing import Any, Literal

import torch

from fsd_gs.errors import UserError
from fsd_gs.export.base import ExportFormat
from fsd_gs.finite import ExportWarning, subset
from fsd_gs.gaussians import Gaussians

COMPRESSED_MIN_OPACITY = 1.0 / 255.0
"""The compressed .ply keeps Gaussians with sigmoid(opacity) above this (gsplat's threshold)."""


def _export_bytes(gaussians: Gaussians, fmt: Literal["splat", "ply_compressed"]) -> bytes:
    """gsplat's exporter on CPU float32 copies of the raw parameters (sh0 [N,1,3], shN [N,K-1,3])."""
    from gsplat.exporter import export_splats

    p = {k: v.detach().to("cpu", torch.float32) for k, v in gaussians.params.items()}
    return export_splats(p["means"], p["scales"], p["quats"], p["opacities"], p["sh0"], p["shN"], format=fmt)


def splat_bytes(gaussians: Gaussians, options: Any = None) -> bytes:
    """The ``.splat`` file of finite ``gaussians`` (see the module doc)."""
    return _export_bytes(gaussians, "splat")


def compressed_ply_bytes(gaussians: Gaussians, options: Any = None) -> bytes:
    """The PlayCanvas compressed ``.ply`` of finite ``gaussians``, invisible ones (opacity <= 1/255) left out.

    Warns with an :class:`~fsd_gs.finite.ExportWarning` that counts the invisible Gaussians left out.
    Raises:
        UserError: all Gaussians are invisible (nothing to write).
    """
    visible = torch.sigmoid(gaussians.params["opacities"].detach().float()) > COMPRESSED_MIN_OPACITY
    n, kept = len(gaussians), int(visible.sum())
    if kept == 0:
        raise UserError(f"not writing the compressed .ply: all {n} Gaussians have opacity <= 1/255 (nothing visible to export)")
    if kept < n:
        warnings.warn(
            f"left out {n - kept} of {n} Gaussians with opacity <= 1/255 (invisible) from the compressed .ply",
            ExportWarning,
            stacklevel=2,
        )
        gaussians = subset(gaussians, visible)
    data = _export_bytes(gaussians, "ply_compressed")
    if gaussians.params["shN"].shape[1] == 0:  # gsplat 1.5.3 declares an empty "sh" element; PlayCanvas rejects it
        head, sep, body = data.partition(b"end_header\n")
        data = head.replace(f"element sh {kept}\n".encode(), b"") + sep + body
    return data


SPLAT = ExportFormat(
    "splat", ".splat", splat_bytes, "antimatter15 .splat (gsplat's exporter; 32 bytes a Gaussian, DC colour only)"
)
PLY_COMPRESSED = ExportFormat(
    "ply_compressed",
    ".compressed.ply",
    compressed_ply_bytes,
    "PlayCanvas/SuperSplat .compressed.ply (gsplat's exporter; quantised, ~4x smaller)",
)
write_splat = SPLAT.write
"""Write a ``.splat`` file, atomically, non-finite rows dropped with a warning; returns the path."""
write_ply_compressed = PLY_COMPRESSED.write
"""Write a compressed ``.ply``, atomically, non-finite rows dropped with a warning; returns the path."""
