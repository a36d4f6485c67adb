"""The export formats' names and file names, and :func:`export_gaussians` (what training runs and the CLI call).

    paths = export_gaussians(gaussians, run_dir, ["splat", "glb", "mesh"])   # {"splat": run_dir/"model.splat", ...}

Files are named ``<stem><suffix>`` in ``out_dir`` (each format's suffix; the mesh's follows its
format). An existing file is never replaced silently: without ``overwrite`` the call refuses, before
writing anything, with a UserError that names ``--overwrite``; every file is written atomically
(:mod:`fsd_gs.io.atomic`), so a reader never sees half of one. Non-finite Gaussians are dropped once,
with one warning for the whole call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fsd_gs.errors import UserError
from fsd_gs.export.mesh import MeshConfig
from fsd_gs.export.registry import EXPORT_FORMATS
from fsd_gs.finite import drop_non_finite
from fsd_gs.gaussians import Gaussians

FORMATS: tuple[str, ...] = EXPORT_FORMATS.names()
"""Valid export format names at import (the registry, :data:`~fsd_gs.export.registry.EXPORT_FORMATS`, is the
source): INRIA .ply, PlayCanvas compressed .ply, antimatter15 .splat, KHR_gaussian_splatting .glb, and a triangle
mesh (marching cubes; glb, obj or ply per MeshConfig.format)."""

SUFFIXES: dict[str, str] = {name: f.suffix for name, f in EXPORT_FORMATS.items() if "{" not in f.suffix}
"""File suffix per format whose suffix is fixed; the mesh is ``.mesh.<MeshConfig.format>``."""


def validate_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The formats without repeats, in the order given; UserError for an unknown name or an empty list."""
    if isinstance(formats, str):
        formats = [formats]
    names = EXPORT_FORMATS.names()
    if len(formats) == 0:
        raise UserError(f"no export format given: choose one or more of {', '.join(names)}")
    for name in formats:
        if name not in names:
            raise UserError(f"unknown export format {name!r}: choose one or more of {', '.join(names)}")
    return tuple(dict.fromkeys(formats))


def output_paths(
    out_dir: str | Path, formats: Sequence[str], stem: str = "model", mesh: MeshConfig | None = None
) -> dict[str, Path]:
    """Where each format is written: ``{format: out_dir / (stem + suffix)}`` (formats validated)."""
    if not stem or "/" in stem or stem in (".", ".."):
        raise UserError(f"the file stem must be a plain file name without '/', got {stem!r}")
    mesh = mesh or MeshConfig()
    out_dir = Path(out_dir)
    return {name: out_dir / f"{stem}{EXPORT_FORMATS[name].file_suffix(mesh)}" for name in validate_formats(formats)}


def export_gaussians(
    gaussians: Gaussians,
    out_dir: str | Path,
    formats: Sequence[str],
    stem: str = "model",
    mesh: MeshConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``gaussians`` in each of ``formats`` into ``out_dir``.

    Args:
        gaussians: N Gaussians on any device (exports read CPU float32 copies; the mesh's density pass
            runs on their device).
        out_dir: an existing folder.
        formats: names from :data:`FORMATS` (repeats ignored).
        stem: file name stem ("model" -> model.splat, model.compressed.ply, model.glb, model.mesh.glb, ...).
        mesh: options of the "mesh" format (default :class:`MeshConfig`).
        overwrite: replace existing files (atomically); otherwise an existing target is a UserError.
    Returns:
        ``{format: path written}`` in the order of ``formats``.
    Raises:
        UserError: unknown format, bad mesh options, missing folder, a target exists without ``overwrite``,
            nothing to export (empty, all non-finite), no mesh surface at the threshold, or a write failure.
    Warns:
        NonFiniteWarning (once) when rows with NaN/Inf were dropped; ExportWarning when the compressed .ply
        leaves out invisible Gaussians.
    """
    mesh = mesh or MeshConfig()
    paths = output_paths(out_dir, formats, stem, mesh)
    if "mesh" in paths:
        mesh.validate()
    if not Path(out_dir).is_dir():
        raise UserError(f"the output folder {out_dir} does not exist; create it or pass an existing --out-dir")
    existing = [str(path) for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise UserError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass --overwrite to replace it (or choose another --out-dir)"
        )
    gaussians = drop_non_finite(gaussians, f"the export to {Path(out_dir) / stem}.*")
    return {name: EXPORT_FORMATS[name].write(gaussians, path, mesh) for name, path in paths.items()}
