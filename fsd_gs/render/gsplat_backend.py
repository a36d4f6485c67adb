"""The CUDA backend: a thin wrapper around ``gsplat.rasterization`` (imported lazily)."""

from __future__ import annotations

import torch

from fsd_gs.render.config import RenderConfig


def rasterize_gsplat(
    params: dict[str, torch.Tensor],
    sh_degree: int,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    backgrounds: torch.Tensor,
    config: RenderConfig,
    with_depth: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Render raw Gaussian parameters (log scales, logit opacities, SH) with gsplat.

    Args:
        params: the Gaussians' parameter dict (shapes in ``fsd_gs.gaussians``).
        sh_degree: degree to render with (<= the stored degree).
        viewmats [B,4,4], Ks [B,3,3], backgrounds [B,3], all on the Gaussians' CUDA device.
        with_depth: render gsplat's "RGB+ED" mode: a 4th channel of expected depth
            sum_i w_i z_i / max(alpha, 1e-10) (0 where alpha = 0), not composited over the background.
    Returns:
        colors [B,H,W,3] ([B,H,W,4] with depth; not clamped above), alphas [B,H,W,1], and gsplat's meta dict, whose
        "means2d" [B,N,2] (or [nnz,2] when packed) is the screen-space tensor to read gradients from.
    """
    from gsplat import rasterization

    coeffs = torch.cat([params["sh0"], params["shN"]], dim=1)  # [N,K,3]
    colors, alphas, meta = rasterization(
        means=params["means"],
        quats=params["quats"],  # gsplat normalises them itself
        scales=torch.exp(params["scales"]),
        opacities=torch.sigmoid(params["opacities"]),
        colors=coeffs,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        near_plane=config.near_plane,
        far_plane=config.far_plane,
        radius_clip=config.radius_clip,
        eps2d=config.eps2d,
        sh_degree=sh_degree,
        packed=config.packed,
        backgrounds=None,  # composited below: gsplat 1.5.3 rejects backgrounds [B,3] when packed=True
        render_mode="RGB+ED" if with_depth else "RGB",
        absgrad=config.absgrad,
        rasterize_mode="classic",
    )
    # Exactly gsplat's own compositing (pix_out + T_final * background, with T_final = 1 - alpha).
    rgb = colors[..., :3] + (1.0 - alphas) * backgrounds[:, None, None, :]
    colors = torch.cat([rgb, colors[..., 3:]], dim=-1) if with_depth else rgb
    return colors, alphas, meta
