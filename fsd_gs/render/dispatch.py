"""render(): check the inputs, pick the backend (gsplat on CUDA, the pure-torch reference elsewhere), run it and
shape its output into a :class:`~fsd_gs.render.config.RenderOutput` (see the package doc for the semantics)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fsd_gs.camera import Cameras
from fsd_gs.errors import UserError, require
from fsd_gs.gaussians import Gaussians
from fsd_gs.render.config import RenderConfig, RenderOutput


def resolve_backend(config: RenderConfig, device: torch.device) -> str:
    """The backend that ``config.backend`` means on ``device``: 'gsplat' or 'reference'."""
    if config.backend == "auto":
        return "gsplat" if device.type == "cuda" else "reference"
    if config.backend == "gsplat" and device.type != "cuda":
        raise UserError(
            f"render.backend 'gsplat' needs the Gaussians on a CUDA device, they are on {device}: "
            "use --render.backend auto or reference"
        )
    return config.backend


def _backgrounds(background: torch.Tensor | tuple | list, n_cams: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The background as [B,3] on the render device."""
    bg = torch.as_tensor(background, dtype=dtype, device=device)
    if bg.shape == (3,):
        return bg.expand(n_cams, 3)
    require(
        bg.shape == (n_cams, 3), f"the background must have shape [3] or [{n_cams},3] (one RGB per camera), got {list(bg.shape)}"
    )
    return bg


@dataclass
class Prepared:
    """The checked inputs of one render: what a backend takes, on the Gaussians' device."""

    sh_degree: int
    backgrounds: torch.Tensor  # [B,3]
    viewmats: torch.Tensor  # [B,4,4]
    Ks: torch.Tensor  # [B,3,3]
    width: int
    height: int
    backend: str  # 'gsplat' or 'reference'


def prepare(gaussians: Gaussians, cameras: Cameras, background: torch.Tensor, cfg: RenderConfig) -> Prepared:
    """Check a render's inputs (one UserError sentence for the first that cannot work) and bring them to the backends'
    form: backgrounds [B,3], matrices in the Gaussians' dtype, the SH degree to render with and the backend."""
    cfg.validate()
    require(len(gaussians) > 0, "cannot render an empty Gaussian set: initialise or load some Gaussians first")
    width, height = int(cameras.width), int(cameras.height)
    require(width > 0 and height > 0, f"the image size must be positive, got {width}x{height}")
    n_cams = len(cameras)
    require(n_cams > 0, "cannot render with an empty camera batch: pass at least one camera")
    device = gaussians.device
    require(
        cameras.device == device,
        f"the cameras are on {cameras.device} but the Gaussians are on {device}: move them with .to(device)",
    )
    sh_degree = gaussians.active_sh_degree if cfg.sh_degree is None else cfg.sh_degree
    require(
        sh_degree <= gaussians.sh_degree,
        f"render.sh_degree {sh_degree} is above the Gaussians' stored SH degree {gaussians.sh_degree}",
    )
    dtype = gaussians.params["means"].dtype
    bgs = _backgrounds(background, n_cams, device, dtype)
    backend = resolve_backend(cfg, device)
    return Prepared(sh_degree, bgs, cameras.viewmats.to(dtype), cameras.Ks.to(dtype), width, height, backend)


def gsplat_info(meta: dict) -> dict:
    """The info dict (see :class:`RenderOutput`) of gsplat's meta; means2d keeps its gradient through backward."""
    info = {
        "means2d": meta["means2d"],
        "radii": meta["radii"],
        "depths": meta["depths"],
        "conics": meta["conics"],
        "gaussian_ids": meta["gaussian_ids"],
        "camera_ids": meta["camera_ids"],
        "n_intersections": int(meta["flatten_ids"].shape[0]),
    }
    if info["means2d"].requires_grad:
        info["means2d"].retain_grad()
    return info


def finish(colors: torch.Tensor, alphas: torch.Tensor, info: dict, cfg: RenderConfig, with_depth: bool) -> RenderOutput:
    """A backend's colours [B,H,W,3 or 4] and alphas [B,H,W,1] as a RenderOutput (depth split off, colours clamped)."""
    depth = colors[..., 3:4] if with_depth else None
    colors = colors[..., :3]
    if cfg.clamp_rgb:
        colors = colors.clamp(0.0, 1.0)
    return RenderOutput(rgb=colors, alpha=alphas, info=info, depth=depth)


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    background: torch.Tensor,
    config: RenderConfig | None = None,
    with_depth: bool = False,
) -> RenderOutput:
    """Render ``gaussians`` into every camera of ``cameras`` over ``background``.

    Args:
        gaussians: N Gaussians (raw parameters; activations are applied here).
        cameras: B cameras sharing one image size, on the Gaussians' device.
        background: RGB [3] or [B,3] composited where the Gaussians leave transmittance.
        config: backend and rasterization settings (:class:`RenderConfig`).
        with_depth: also render the expected depth sum_i w_i z_i / max(sum_i w_i, 1e-10) (camera-space z,
            0 where nothing is drawn; gsplat's "RGB+ED" mode, the same on both backends).
    Returns:
        :class:`RenderOutput` with rgb [B,H,W,3], alpha [B,H,W,1], info (see its docstring) and depth
        [B,H,W,1] (None unless ``with_depth``).
    """
    cfg = config if config is not None else RenderConfig()
    return rasterize_prepared(gaussians, prepare(gaussians, cameras, background, cfg), cfg, with_depth)


def rasterize_prepared(gaussians: Gaussians, p: Prepared, cfg: RenderConfig, with_depth: bool) -> RenderOutput:
    """:func:`render` after :func:`prepare`: run ``p.backend`` on the checked inputs and shape its output."""
    params = gaussians.params
    if p.backend == "gsplat":
        from fsd_gs.render.gsplat_backend import rasterize_gsplat

        colors, alphas, meta = rasterize_gsplat(
            params, p.sh_degree, p.viewmats, p.Ks, p.width, p.height, p.backgrounds, cfg, with_depth=with_depth
        )
        info = gsplat_info(meta)
    else:
        from fsd_gs.render.reference import rasterize_gaussians

        colors, alphas, info = rasterize_gaussians(
            dict(params), p.sh_degree, p.viewmats, p.Ks, p.width, p.height, p.backgrounds, cfg, with_depth=with_depth
        )
    info.update({"width": p.width, "height": p.height, "n_cameras": int(p.viewmats.shape[0]), "backend": p.backend})
    return finish(colors, alphas, info, cfg, with_depth)
