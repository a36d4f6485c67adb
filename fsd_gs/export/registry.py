"""The export-format registry: every ``--to`` / ``--output.formats`` choice by name, in the order --help lists them.

Built-in formats (one entry each, next to its encoder): ply (ply.py), ply_compressed and splat (splats.py),
glb (gltf.py), mesh (mesh.py). A third-party format is an :class:`~fsd_gs.export.base.ExportFormat` named by an
entry point of the ``fsd_gs.export`` group (docs/extending.md).
"""

from __future__ import annotations

from fsd_gs.export.base import ExportFormat
from fsd_gs.export.gltf import GLB
from fsd_gs.export.mesh import MESH
from fsd_gs.export.ply import PLY
from fsd_gs.export.splats import PLY_COMPRESSED, SPLAT
from fsd_gs.registry import Registry

EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format", "--to", entry_point_group="fsd_gs.export")
"""Every export format by name (a read-only mapping): the built-ins, then the ``fsd_gs.export`` entry points."""
for _format in (PLY, PLY_COMPRESSED, SPLAT, GLB, MESH):
    EXPORT_FORMATS.register(_format)


def format_help() -> str:
    """One line per format, "name: description", for --help."""
    return "; ".join(f"{f.name} ({f.description.split(' (')[0]})" for f in EXPORT_FORMATS.values())
