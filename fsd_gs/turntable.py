"""Turntable renders of finished Gaussians: a PNG grid and, when an encoder is installed, an MP4."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from fsd_gs.camera import CameraConfig, turntable
from fsd_gs.gaussians import Gaussians
from fsd_gs.render import RenderConfig, render


@torch.no_grad()
def render_turntable(
    gaussians: Gaussians,
    camera: CameraConfig,
    n_views: int,
    size: int,
    render_config: RenderConfig,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    chunk: int = 8,
) -> torch.Tensor:
    """``n_views`` views around the object at the config's eval elevation/distance/fov: uint8 [V,size,size,3]."""
    cams = turntable(n_views, camera.eval_elevation, camera.eval_distance, camera.eval_fovy, size, size, gaussians.device)
    bg = torch.tensor(background, device=gaussians.device)
    frames = [render(gaussians, cams[i : i + chunk], bg, render_config).rgb for i in range(0, n_views, chunk)]
    return (torch.cat(frames).clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def image_grid(images: torch.Tensor, columns: int | None = None) -> np.ndarray:
    """Tile uint8 images [V,H,W,3] into one [rows*H, columns*W, 3] array (row-major, blank cells white)."""
    v, h, w, _ = images.shape
    columns = columns or math.ceil(math.sqrt(v))
    rows = math.ceil(v / columns)
    grid = np.full((rows * h, columns * w, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images.numpy()):
        r, c = divmod(i, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = img
    return grid


def save_turntable(frames: torch.Tensor, png_path: Path, mp4_path: Path | None = None, fps: int = 12) -> list[Path]:
    """Write the grid PNG, and the MP4 if imageio can find an encoder (else one warning line); return the paths written.

    Both are encoded in memory and written atomically (fsd_gs/io/atomic.py), so a full disk is one sentence
    naming the file and never leaves half a file.
    """
    import imageio.v3 as iio

    from fsd_gs.io.atomic import atomic_write_bytes

    written = [atomic_write_bytes(png_path, iio.imwrite("<bytes>", image_grid(frames), extension=".png"))]
    if mp4_path is not None:
        plugin = _video_plugin()
        try:
            if plugin is None:  # imageio would fall back to Pillow, which fails and prints a traceback when collected
                raise ImportError("no video encoder")
            video = iio.imwrite("<bytes>", frames.numpy(), extension=".mp4", fps=fps, codec="libx264", **plugin)
        except Exception:  # no video encoder installed: the PNG grid is the turntable
            warnings.warn(
                f"{Path(mp4_path).name} not written: no video encoder is installed (pip install "
                f"imageio-ffmpeg, or the package's [video] extra); {Path(png_path).name} holds the same "
                "views",
                UserWarning,
                stacklevel=2,
            )
        else:
            written.append(atomic_write_bytes(mp4_path, video))
    return written


def _video_plugin() -> dict[str, str] | None:
    """imageio's keyword for an installed MP4 encoder: PyAV, else imageio-ffmpeg (imageio's default), else None."""
    import importlib.util

    if importlib.util.find_spec("av") is not None:  # PyAV is optional: imageio-ffmpeg also encodes
        return {"plugin": "pyav"}
    return {} if importlib.util.find_spec("imageio_ffmpeg") is not None else None
