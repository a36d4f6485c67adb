"""Render settings and the render result, shared by both backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch

from fsd_gs.errors import require

Backend = Literal["auto", "gsplat", "reference"]


@dataclass
class RenderConfig:
    """How Gaussians are rasterized (defaults are gsplat's)."""

    backend: Backend = "auto"
    """'auto' (gsplat on CUDA, the pure-torch reference on CPU), 'gsplat' (CUDA only) or 'reference'."""
    near_plane: float = 0.01
    """Gaussians closer to the camera than this (camera-space z) are culled."""
    far_plane: float = 1e10
    """Gaussians farther from the camera than this are culled."""
    eps2d: float = 0.3
    """Low-pass filter: added to the diagonal of every projected 2D covariance (pixels^2)."""
    radius_clip: float = 0.0
    """Gaussians whose projected radius is at most this many pixels on both axes are culled."""
    absgrad: bool = False
    """Also accumulate |d loss / d means2d| per pixel into info['means2d'].absgrad (AbsGS densification)."""
    packed: bool = False
    """Return info tensors packed over the visible (camera, Gaussian) pairs, [nnz,...], instead of [B,N,...]."""
    sh_degree: Optional[int] = None
    """SH degree to render with; None uses the Gaussians' active degree."""
    clamp_rgb: bool = True
    """Clamp the composited colours to [0,1] (colours above 1 can come from SH and from a background above 1)."""
    reference_tile_size: int = 4
    """Tile edge in pixels of the CPU reference rasterizer (only speed depends on it, never the image)."""
    join_assets: bool = True
    """Grouped steps (--group-seeds) render all their assets in one gsplat call, each padded to the largest asset's
    count (fsd_gs/render/joined.py); False: one call per asset. No effect on the reference backend."""

    def validate(self) -> None:
        """Raise UserError on the first setting that cannot work."""
        require(
            self.backend in ("auto", "gsplat", "reference"),
            f"render.backend must be 'auto', 'gsplat' or 'reference', got {self.backend!r}",
        )
        require(self.near_plane > 0, f"render.near_plane must be positive, got {self.near_plane}")
        require(
            self.far_plane > self.near_plane,
            f"render.far_plane ({self.far_plane}) must be larger than render.near_plane ({self.near_plane})",
        )
        require(self.eps2d >= 0, f"render.eps2d must be >= 0, got {self.eps2d}")
        require(self.radius_clip >= 0, f"render.radius_clip must be >= 0, got {self.radius_clip}")
        require(
            self.sh_degree is None or 0 <= self.sh_degree <= 3, f"render.sh_degree must be 0..3 or None, got {self.sh_degree}"
        )
        require(
            1 <= self.reference_tile_size <= 64,
            f"render.reference_tile_size must be 1..64 pixels, got {self.reference_tile_size}",
        )


@dataclass
class RenderOutput:
    """What :func:`fsd_gs.render.render` returns for a batch of B cameras.

    Attributes:
        rgb: composited colours, [B,H,W,3] (background included; in [0,1] when ``clamp_rgb``).
        alpha: accumulated opacity 1 - T_final, [B,H,W,1], in [0,1].
        depth: expected camera-space z, [B,H,W,1], or None unless ``render(..., with_depth=True)``:
            sum_i w_i z_i / max(sum_i w_i, 1e-10) with the compositing weights w_i = alpha_i T_i and z_i
            the depth of Gaussian i's mean (gsplat's "ED" render mode: normalised by the pixel's alpha,
            so it is a depth where alpha > 0 and exactly 0 where alpha = 0; differentiable).
        info: what ``gsplat.strategy.DefaultStrategy`` needs, same keys for both backends:
            "means2d" [B,N,2] (or [nnz,2] packed; requires grad, ``retain_grad()`` called, so
            ``.grad`` holds the screen-space gradient after backward, and ``.absgrad`` when
            ``absgrad``), "radii" [B,N,2] int32 (or [nnz,2]; 0 = not visible), "depths" [B,N]
            (or [nnz]), "gaussian_ids" ([nnz] when packed, else None), "camera_ids" (idem),
            "width", "height", "n_cameras", "backend" ('gsplat' or 'reference').
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    depth: Optional[torch.Tensor] = None
