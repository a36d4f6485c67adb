"""`fsd-gs-view PATH.ply` (or `python -m viewer PATH.ply`): open a 3D Gaussian Splatting .ply in the browser.

Any INRIA-layout .ply works: ours, and those written by other 3DGS tools (SH degree 0 to 3, extra
properties such as normals ignored). The Gaussians are drawn by viser's in-browser splat renderer
with their view-independent (DC) colour. Controls: orbit with the mouse, "Reset view", the Gaussian
count, the background colour. Binds 127.0.0.1 unless --host says otherwise; a port in use moves to the
next free one (printed). Stop with Ctrl-C.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import tyro

from fsd_gs.cli import tyro_cli
from fsd_gs.errors import UserError, require, warnings_as_lines
from fsd_gs.viewer.app import ViewerApp, ViewFrame, splat_arrays

UpAxis = Literal["+z", "-z", "+y", "-y", "+x", "-x"]
_AXES = {
    "+x": (1.0, 0.0, 0.0),
    "-x": (-1.0, 0.0, 0.0),
    "+y": (0.0, 1.0, 0.0),
    "-y": (0.0, -1.0, 0.0),
    "+z": (0.0, 0.0, 1.0),
    "-z": (0.0, 0.0, -1.0),
}
_FRONT = {"+z": "+x", "-z": "+x", "+y": "+z", "-y": "-z", "+x": "+y", "-x": "+y"}
"""The side "reset view" looks from, per up axis (+x is our objects' front; -z suits COLMAP scenes)."""


@dataclass
class ViewPlyConfig:
    """Open a 3D Gaussian Splatting .ply (INRIA layout, SH degree 0-3) in the browser.

    fsd-gs-view outputs/<prompt>/<run>/model.ply
    """

    path: tyro.conf.Positional[Path]
    """The .ply file to open (ours, or written by another 3DGS tool)."""
    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 makes the viewer reachable from the network."""
    port: int = 8080
    """Port to bind; when it is in use the next free port is taken and printed."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour, RGB in [0, 1] (changeable in the page)."""
    up: UpAxis = "+z"
    """The scene's up axis: +z for ours; -y for most scenes reconstructed from photos (COLMAP)."""
    max_splats: int = 3_000_000
    """Largest number of Gaussians sent to the browser (the most opaque are kept)."""

    def validate(self) -> None:
        require(self.path.is_file(), f"{self.path} is not a file: pass the path of a .ply")
        require(0 <= self.port <= 65535, f"--port must be 0..65535, got {self.port}")
        require(
            len(self.background) == 3 and all(0.0 <= c <= 1.0 for c in self.background),
            f"--background must be three numbers in [0, 1], got {self.background}",
        )
        require(self.max_splats >= 1, f"--max-splats must be >= 1, got {self.max_splats}")


def load_gaussian_params(path: Path) -> dict[str, torch.Tensor]:
    """The raw parameters of the Gaussians in an INRIA-layout .ply (UserError if it is not one)."""
    from fsd_gs.finite import drop_non_finite
    from fsd_gs.io.ply import read_ply

    try:
        gaussians = read_ply(path)
    except UserError:
        raise
    except Exception as exc:  # plyfile raises many kinds of errors for non-3DGS files
        raise UserError(f"{path} could not be read as a 3D Gaussian Splatting .ply ({exc})") from exc
    gaussians = drop_non_finite(gaussians, path.name, verb="showing")
    return {k: v.detach() for k, v in gaussians.params.items()}


def frame_for(centers: np.ndarray, up: UpAxis, fov_deg: float = 50.0) -> ViewFrame:
    """A "reset view" camera that sees the bulk of the points (their median, 90% of them in view)."""
    center = np.median(centers, axis=0) if len(centers) else np.zeros(3)
    radius = float(np.percentile(np.linalg.norm(centers - center, axis=1), 90)) if len(centers) else 1.0
    radius = max(radius, 1e-3)
    distance = 2.2 * radius / np.tan(np.radians(fov_deg) / 2)
    return ViewFrame(
        center=(float(center[0]), float(center[1]), float(center[2])),
        distance=float(distance),
        elevation=15.0,
        front=_AXES[_FRONT[up]],
        up=_AXES[up],
        fov_deg=fov_deg,
    )


def serve(cfg: ViewPlyConfig, announce=print) -> ViewerApp:
    """Load the .ply and start the app (returns at once; the server runs in background threads)."""
    cfg.validate()
    params = load_gaussian_params(cfg.path)
    splats = splat_arrays(params, cfg.max_splats)
    app = ViewerApp(
        cfg.host, cfg.port, cfg.background, label=cfg.path.name, frame=frame_for(splats.centers, cfg.up), announce=announce
    )
    app.server.scene.set_up_direction(cfg.up)
    with app.server.gui.add_folder("View"):
        app.server.gui.add_markdown(f"**File:** {cfg.path.name}")
        app.add_scene_controls()
    app.set_splats(splats)
    return app


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: parse flags, serve until Ctrl-C. Bad input -> one line on stderr, exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = tyro_cli(ViewPlyConfig, "python -m viewer", args)
        with warnings_as_lines():
            app = serve(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"viewer: {app.url}  ({cfg.path.name}; Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
