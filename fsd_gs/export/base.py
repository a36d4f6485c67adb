"""What an export format is: an :class:`ExportFormat` entry (name, file suffix, encoder) that writes itself.

A format only turns finite Gaussians into the bytes of its file (:attr:`ExportFormat.encode`);
:meth:`ExportFormat.write` does the rest once for every format: it drops non-finite rows (with one
:class:`~fsd_gs.finite.NonFiniteWarning`) and writes the file atomically (:mod:`fsd_gs.io.atomic`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsd_gs.finite import drop_non_finite
from fsd_gs.gaussians import Gaussians
from fsd_gs.io.atomic import atomic_write_bytes


@dataclass(frozen=True)
class ExportFormat:
    """One ``--to`` choice: its name, its file suffix and how it encodes Gaussians."""

    name: str
    suffix: str
    """File suffix after the stem (".splat"); may name the mesh options, as in ".mesh.{mesh.format}"."""
    encode: Callable[[Gaussians, Any], bytes]
    """(N finite Gaussians on any device, the export's :class:`~fsd_gs.export.mesh.MeshConfig` or None for its
    defaults) -> the file's bytes; raises UserError when there is nothing to write."""
    description: str = ""
    """One line for --help and docs/export.md."""

    def file_suffix(self, mesh: Any) -> str:
        """The suffix with the mesh options filled in (``mesh``: a MeshConfig; only suffixes that name it read it)."""
        return self.suffix.format(mesh=mesh)

    def write(self, gaussians: Gaussians, path: str | Path, mesh: Any = None) -> Path:
        """Write ``gaussians`` (non-finite rows dropped, with a warning) to ``path`` atomically; returns ``path``.

        Raises:
            UserError: nothing to write (empty or all non-finite), a format's own refusal, or a write failure.
        """
        path = Path(path)
        gaussians = drop_non_finite(gaussians, path.name)
        return atomic_write_bytes(path, self.encode(gaussians, mesh))
