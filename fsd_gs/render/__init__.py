"""Render Gaussians into a batch of cameras: gsplat on CUDA, a pure-torch reference on CPU.

    out = render(gaussians, cameras, background, RenderConfig(), with_depth=False)
    out.rgb [B,H,W,3], out.alpha [B,H,W,1], out.info (means2d, radii, ... for densification),
    out.depth [B,H,W,1] expected depth with ``with_depth=True`` (gsplat's "ED" mode), else None

Both backends share the semantics of gsplat 1.5's ``rasterization`` (EWA projection with eps2d
low-pass, opacity-aware tile culling, front-to-back compositing with the 1/255 and 1e-4 cut-offs,
colours clamp_min(SH(view dir) + 0.5, 0)); the background is composited as
rgb = sum_i c_i alpha_i T_i + T_final * background.
"""

from fsd_gs.render.config import RenderConfig, RenderOutput
from fsd_gs.render.dispatch import render, resolve_backend

__all__ = ["RenderConfig", "RenderOutput", "render", "resolve_backend"]
