"""The ``ply`` export format: the INRIA 3DGS .ply that training writes (fsd_gs.io.ply; raw log-scales, logit opacities)."""

from __future__ import annotations

from fsd_gs.export.base import ExportFormat
from fsd_gs.io.ply import ply_bytes

PLY = ExportFormat(
    "ply",
    ".ply",
    lambda gaussians, options: ply_bytes(gaussians),
    "INRIA 3DGS .ply (fsd_gs.io.ply; raw log-scales and logit opacities)",
)
