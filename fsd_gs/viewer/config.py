"""Options of the browser viewer (live during training, and standalone for any .ply).

The viewer is a viser app. It binds 127.0.0.1 unless ``host`` says otherwise, moves to the next free
port when ``port`` is taken (and says so), and never offers public share links.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fsd_gs.errors import require

ViewerMode = Literal["auto", "splats", "render"]


@dataclass
class ViewerConfig:
    """The live viewer: watch the optimisation in the browser (viser)."""

    enabled: bool = True
    """Start the live viewer for interactive runs (stdout is a terminal); --viewer.no-enabled turns it off."""
    host: str = "127.0.0.1"
    """Address to bind. The default serves this machine only; 0.0.0.0 makes the viewer reachable from the network."""
    port: int = 8080
    """Port to bind; when it is in use the next free port is taken and printed."""
    mode: ViewerMode = "auto"
    """How the Gaussians reach the page: "splats" streams them to the browser's own splat renderer (works on a
    CPU-only run; DC colour only), "render" renders on the server from each browser's camera (gsplat on CUDA,
    view-dependent colour) and pushes images; "auto" = render when training on CUDA, splats otherwise."""
    update_every: int = 10
    """Send the current state to the page at most every this many steps."""
    min_interval_s: float = 0.5
    """Also send at most once per this many seconds (bounds the viewer's cost when steps are fast)."""
    max_splats: int = 300_000
    """Largest number of Gaussians streamed in "splats" mode (the most opaque are kept)."""
    render_max_side: int = 768
    """Longest side in pixels of a server render in "render" mode (the browser's canvas is scaled down to it)."""
    render_fps: float = 10.0
    """Most server renders per second per browser in "render" mode (while the user moves the camera)."""
    panel_image_height: int = 140
    """Height in pixels of the panel images (last training render, noise window, world noise map)."""
    loss_points: int = 2000
    """Points kept in the loss curve (older points are thinned out, the whole run stays visible)."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour of the 3D view, RGB in [0, 1] (changeable in the page)."""

    def validate(self) -> None:
        """Raise UserError on the first bad option."""
        require(self.host.strip() != "", "--viewer.host is empty: pass an address such as 127.0.0.1")
        require(0 <= self.port <= 65535, f"--viewer.port must be 0..65535, got {self.port}")
        require(self.mode in ("auto", "splats", "render"), f"--viewer.mode must be auto, splats or render, got {self.mode!r}")
        require(self.update_every >= 1, f"--viewer.update-every must be >= 1, got {self.update_every}")
        require(self.min_interval_s >= 0, f"--viewer.min-interval-s must be >= 0, got {self.min_interval_s}")
        require(self.max_splats >= 1, f"--viewer.max-splats must be >= 1, got {self.max_splats}")
        require(self.render_max_side >= 16, f"--viewer.render-max-side must be >= 16, got {self.render_max_side}")
        require(self.render_fps > 0, f"--viewer.render-fps must be positive, got {self.render_fps}")
        require(self.panel_image_height >= 16, f"--viewer.panel-image-height must be >= 16, got {self.panel_image_height}")
        require(self.loss_points >= 10, f"--viewer.loss-points must be >= 10, got {self.loss_points}")
        require(
            len(self.background) == 3 and all(0.0 <= c <= 1.0 for c in self.background),
            f"--viewer.background must be three numbers in [0, 1], got {self.background}",
        )


def resolve_mode(mode: ViewerMode, device_type: str) -> Literal["splats", "render"]:
    """``auto`` -> "render" on CUDA (gsplat is fast there), "splats" elsewhere (the browser renders)."""
    if mode == "auto":
        return "render" if device_type == "cuda" else "splats"
    return mode
