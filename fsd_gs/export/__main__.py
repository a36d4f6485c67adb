"""`python -m fsd_gs.export PATH --to splat ply_compressed glb mesh`: write a trained asset in other formats.

PATH is a run folder (its model.ply is read) or any 3D Gaussian Splatting .ply. The files go next to
the input (``--out-dir`` to change), named after it (model.splat, model.compressed.ply, model.glb,
model.mesh.glb, ...); an existing file is refused unless ``--overwrite``. Prints one written path per
line. Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional, Sequence

import tyro

from fsd_gs.cli import tyro_cli
from fsd_gs.errors import UserError, run_cli
from fsd_gs.export.formats import export_gaussians, validate_formats
from fsd_gs.export.mesh import MeshConfig
from fsd_gs.export.registry import EXPORT_FORMATS, format_help


@dataclass
class ExportConfig:
    """Export 3D Gaussians to the formats other tools read (docs/export.md), and to a mesh.

    python -m fsd_gs.export outputs/a-red-mushroom/<run> --to splat ply_compressed glb mesh
    """

    path: tyro.conf.Positional[Path]
    """A run folder (holding model.ply) or any 3D Gaussian Splatting .ply file."""
    to: Annotated[
        tuple[str, ...],
        tyro.conf.arg(metavar="{" + ",".join(EXPORT_FORMATS) + "} [...]", help="Formats, one or more of: " + format_help() + "."),
    ]
    out_dir: Optional[Path] = None
    """Folder for the files (must exist); None: the folder of the input .ply."""
    stem: Optional[str] = None
    """File name stem of the outputs; None: the input's (model -> model.splat, model.glb, model.mesh.glb, ...)."""
    overwrite: bool = False
    """Replace existing files (atomically); without it an existing file is an error and nothing is written."""
    mesh: MeshConfig = field(default_factory=MeshConfig)
    """Options of the mesh format."""


def resolve_input(path: Path) -> Path:
    """The .ply to read: ``path`` itself, or ``path/model.ply`` for a run folder; UserError otherwise."""
    if path.is_dir():
        ply = path / "model.ply"
        if not ply.is_file():
            raise UserError(f"{path} holds no model.ply: pass a run folder or a .ply file")
        return ply
    if not path.exists():
        raise UserError(f"no such file or folder: {path}")
    return path


def run(argv: Sequence[str]) -> int:
    from fsd_gs.io.ply import read_ply

    cfg = tyro_cli(ExportConfig, "python -m fsd_gs.export", list(argv))
    formats = validate_formats(cfg.to)
    if "mesh" in formats:
        cfg.mesh.validate()
    ply = resolve_input(cfg.path)
    gaussians = read_ply(ply)
    out_dir = cfg.out_dir if cfg.out_dir is not None else ply.parent
    stem = cfg.stem if cfg.stem is not None else ply.name.removesuffix(".ply")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = export_gaussians(gaussians, out_dir, formats, stem=stem, mesh=cfg.mesh, overwrite=cfg.overwrite)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    for path in paths.values():
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: UserError -> one line on stderr and exit code 2."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
