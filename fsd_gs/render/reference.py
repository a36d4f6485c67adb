"""A pure-torch Gaussian rasterizer with gsplat's semantics (CPU, or any torch device).

It is differentiable through plain autograd and runs the same three stages as gsplat:

1. Projection (:func:`project`), EWA splatting like gsplat's ``fully_fused_projection``: the 3D
   covariance R S S^T R^T from scale and quaternion goes to camera space and through the pinhole
   Jacobian J (its x/z and y/z clamped to 1.3x the field of view), eps2d is added to the 2D
   covariance's diagonal, and the conic is its inverse. A Gaussian is culled (radii 0) when its depth
   is outside [near, far], its opacity is below 1/255, its radius is at most ``radius_clip`` on both
   axes or its box lies off the image. The box half-size per axis is
   ceil(extend * sqrt(cov2d_ii)) with gsplat's opacity-aware extend = min(3.33, sqrt(2 ln(255 o))),
   which bounds exactly the region where alpha >= 1/255.
2. Binning: every visible (camera, Gaussian) pair is listed in each ``tile_size``-pixel tile its box
   touches, and each tile's list is sorted front to back by depth.
3. Compositing, like ``rasterize_to_pixels``: at pixel centre p (x + 0.5, y + 0.5),
   alpha = min(0.999, o exp(-1/2 d^T conic d)) with d = mean2d - p; Gaussians with alpha < 1/255 are
   skipped; colours are c_i alpha_i T_i with T_i = prod_{j<i} (1 - alpha_j), and a pixel stops (the
   Gaussian that would bring T to <= 1e-4 is excluded) once T would drop to 1e-4 or below.
   rgb = sum c_i alpha_i T_i + T_final * background, alpha = 1 - T_final.
   With ``with_depth`` a depth channel is composited alongside: expected depth
   sum_i z_i alpha_i T_i / max(alpha, 1e-10), z_i the camera-space z of Gaussian i's mean (gsplat's
   "ED" render mode, normalised by the pixel's alpha exactly as gsplat 1.5.3 does; 0 where alpha = 0).

Compositing is vectorised: tiles are grouped by how many Gaussians they list (one group per power of
two), each group is padded to [tiles, pixels-in-tile, K], log(o) - sigma at every pixel is one matmul
with six per-Gaussian coefficients of a quadratic in the pixel offset, front-to-back transmittance is
a cumulative sum of log(1 - alpha) along K, and colour sums are one bmm. The only Python loop runs
over those groups (about log2 of the longest tile list), never over Gaussians, tiles or pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from fsd_gs.gaussians import quat_to_rotmat
from fsd_gs.render.sh import sh_to_color

if TYPE_CHECKING:
    from fsd_gs.render.config import RenderConfig

ALPHA_THRESHOLD = 1.0 / 255.0
"""Gaussians contribute to a pixel only where their alpha reaches this (gsplat's value)."""
T_MIN = 1e-4
"""A pixel stops accumulating once its transmittance would fall to this or below (gsplat's value)."""
MAX_ALPHA = 0.999
"""Alpha of a single Gaussian is clamped to this (gsplat's value)."""
EXTEND_MAX = 3.33
"""Largest box half-size in standard deviations (gsplat's value)."""


@dataclass
class Projection:
    """Screen-space Gaussians for B cameras and N Gaussians.

    Attributes:
        means2d: pixel positions, [B,N,2] (meaningless where not visible).
        conics: inverse 2D covariance (a, b, c) of [[a, b], [b, c]], [B,N,3].
        depths: camera-space z, [B,N].
        radii: box half-size in pixels per axis, [B,N,2] int32, 0 where culled.
        visible: radii > 0, [B,N] bool.
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor
    visible: torch.Tensor


def project(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
) -> Projection:
    """EWA projection of N Gaussians into B pinhole cameras (gsplat's ``fully_fused_projection``).

    Args:
        means [N,3], quats [N,4] (wxyz, any norm), scales [N,3] (standard deviations, not log),
        opacities [N] (in (0,1)), viewmats [B,4,4] world-to-camera, Ks [B,3,3].
    """
    rot_w2c = viewmats[:, :3, :3]  # [B,3,3]
    trans = viewmats[:, :3, 3]  # [B,3]
    means_c = torch.einsum("bij,nj->bni", rot_w2c, means) + trans[:, None, :]  # [B,N,3]
    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keeps culled entries finite (their gradient is 0)

    # Square root of the camera-space covariance: Rv R S, so that cov_c = L L^T.
    sqrt_cov = quat_to_rotmat(quats) * scales[:, None, :]  # [N,3,3]
    sqrt_cov_c = torch.einsum("bij,njk->bnik", rot_w2c, sqrt_cov)  # [B,N,3,3]

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [B,1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    rz = 1.0 / z
    tx = torch.minimum(torch.maximum(x * rz, -lim_x_neg), lim_x_pos)  # clamped x/z
    ty = torch.minimum(torch.maximum(y * rz, -lim_y_neg), lim_y_pos)
    zeros = torch.zeros_like(z)
    jac = torch.stack([fx * rz, zeros, -fx * tx * rz, zeros, fy * rz, -fy * ty * rz], dim=-1)
    jac = jac.reshape(*z.shape, 2, 3)  # [B,N,2,3]
    half = jac @ sqrt_cov_c  # [B,N,2,3]
    cov2d = half @ half.transpose(-1, -2)  # [B,N,2,2]
    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    det_ok = det > 0
    inv_det = 1.0 / torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c * inv_det, -b * inv_det, a * inv_det], dim=-1)  # [B,N,3]
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # [B,N,2]

    with torch.no_grad():
        opac = opacities.detach().expand_as(z)
        opac_ok = opac >= ALPHA_THRESHOLD
        extend = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(EXTEND_MAX)
        rx = torch.ceil(extend * a.detach().clamp_min(0).sqrt())
        ry = torch.ceil(extend * c.detach().clamp_min(0).sqrt())
        mx, my = means2d.detach().unbind(-1)
        on_screen = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        big_enough = (rx > radius_clip) | (ry > radius_clip)
        visible = in_depth & det_ok & opac_ok & big_enough & on_screen
        radii = (torch.stack([rx, ry], dim=-1) * visible[..., None]).to(torch.int32)
    return Projection(means2d, conics, means_c[..., 2], radii, visible)


def _tile_entries(
    cam_ids: torch.Tensor,
    means2d: torch.Tensor,
    radii: torch.Tensor,
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """List every visible entry in each tile its box touches (unsorted).

    Args: cam_ids [V], means2d [V,2], radii [V,2] for V visible (camera, Gaussian) pairs.
    Returns: entry [M] (index into V) and tile [M] (global id = (cam * tiles_y + row) * tiles_x + col).
    """
    mx, my = means2d.unbind(-1)
    rx, ry = radii.to(means2d.dtype).unbind(-1)
    x0 = torch.floor((mx - rx) / tile_size).clamp(0, tiles_x - 1).long()
    x1 = torch.floor((mx + rx) / tile_size).clamp(0, tiles_x - 1).long()
    y0 = torch.floor((my - ry) / tile_size).clamp(0, tiles_y - 1).long()
    y1 = torch.floor((my + ry) / tile_size).clamp(0, tiles_y - 1).long()
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    counts = nx * ny
    entry = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(entry.shape[0], device=counts.device) - starts[entry]
    col = x0[entry] + local % nx[entry]
    row = y0[entry] + torch.div(local, nx[entry], rounding_mode="floor")
    return entry, (cam_ids[entry] * tiles_y + row) * tiles_x + col


def _tile_centres(tile: torch.Tensor, ts: int, tiles_x: int, tiles_y: int, dtype: torch.dtype) -> torch.Tensor:
    """Pixel coordinates of the centres of global tile ids: [M] -> [M,2]."""
    in_cam = tile % (tiles_x * tiles_y)
    col = (in_cam % tiles_x).to(dtype)
    row = torch.div(in_cam, tiles_x, rounding_mode="floor").to(dtype)
    return torch.stack([col, row], dim=-1) * ts + ts / 2.0


def _sigma_coefs(rel: torch.Tensor, conics: torch.Tensor) -> torch.Tensor:
    """Coefficients of sigma(o) = 1/2 (u - o)^T conic (u - o) in the basis [1, ox, oy, ox^2, ox oy, oy^2].

    Args: rel [M,2] = u, the mean relative to the tile centre; conics [M,3] = (a, b, c). Returns [M,6].
    """
    ux, uy = rel.unbind(-1)
    a, b, c = conics.unbind(-1)
    return torch.stack(
        [
            0.5 * a * ux * ux + b * ux * uy + 0.5 * c * uy * uy,
            -(a * ux + b * uy),
            -(b * ux + c * uy),
            0.5 * a,
            b,
            0.5 * c,
        ],
        dim=-1,
    )


def _buckets(counts: torch.Tensor) -> list[torch.Tensor]:
    """Group segments whose lengths share a power of two: [S] -> list of segment-index tensors.

    Padding every segment of a group to the group's longest wastes less than half of the work.
    """
    level = torch.ceil(torch.log2(counts.double())).long()
    return [torch.nonzero(level == lv, as_tuple=True)[0] for lv in torch.unique(level).tolist()]


@dataclass
class _Visible:
    """The V visible (camera, Gaussian) pairs of a projection, in (camera, Gaussian) order as gsplat's packed mode.

    Attributes:
        cam_ids, gs_ids: [V] int64 camera and Gaussian index of each pair.
        means2d_info: what info["means2d"] holds, its gradient retained: [V,2] packed, else the projection's [B,N,2].
        means2d: pixel positions [V,2] (the same tensor as ``means2d_info`` when packed).
        conics: [V,3]; opacities: [V] (activated); colors: SH colours [V,3] seen from each pair's camera.
    """

    cam_ids: torch.Tensor
    gs_ids: torch.Tensor
    means2d_info: torch.Tensor
    means2d: torch.Tensor
    conics: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor


def _gather_visible(
    proj: Projection,
    means: torch.Tensor,
    opacities: torch.Tensor,
    sh_coeffs: torch.Tensor,
    sh_degree: int,
    viewmats: torch.Tensor,
    packed: bool,
) -> _Visible:
    """The visible pairs' screen-space data and colours: means [N,3], opacities [N], sh_coeffs [N,K,3], viewmats [B,4,4]."""
    cam_ids, gs_ids = torch.nonzero(proj.visible, as_tuple=True)
    if packed:
        means2d_info = _take2(proj.means2d, cam_ids, gs_ids)
        means2d_vis = means2d_info
    else:
        means2d_info = proj.means2d
        means2d_vis = _take2(proj.means2d, cam_ids, gs_ids)
    if means2d_info.requires_grad:
        means2d_info.retain_grad()
    conics = _take2(proj.conics, cam_ids, gs_ids)  # [V,3]
    opac = _take(opacities, gs_ids)  # [V]
    if sh_degree > 0:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [B,3]
        dirs = _take(means, gs_ids) - campos[cam_ids]
    else:
        dirs = None
    colors = sh_to_color(sh_degree, _take(sh_coeffs, gs_ids), dirs)  # [V,3]
    return _Visible(cam_ids, gs_ids, means2d_info, means2d_vis, conics, opac, colors)


@dataclass
class _TileGrid:
    """The image cut into ``size`` x ``size``-pixel tiles, ``tiles_x`` x ``tiles_y`` per camera, B cameras.

    Attributes:
        off_x, off_y: pixel-centre offsets from the tile centre, row-major within the tile, [P] (P = size^2).
        basis: the quadratic basis [1, x, y, x^2, xy, y^2] at those offsets, [6,P]: sigma at every pixel of a
            tile is one matmul with 6 coefficients.
    """

    size: int
    tiles_x: int
    tiles_y: int
    n_cams: int
    off_x: torch.Tensor
    off_y: torch.Tensor
    basis: torch.Tensor

    @property
    def n_tiles(self) -> int:
        return self.n_cams * self.tiles_x * self.tiles_y

    @property
    def dtype(self) -> torch.dtype:
        """The render's float type (the means')."""
        return self.basis.dtype

    @property
    def device(self) -> torch.device:
        return self.basis.device


def _tile_grid(n_cams: int, width: int, height: int, ts: int, device: torch.device, dtype: torch.dtype) -> _TileGrid:
    """The tiles covering a ``width`` x ``height`` image in each of ``n_cams`` cameras."""
    tiles_x, tiles_y = math.ceil(width / ts), math.ceil(height / ts)
    off = torch.arange(ts, device=device, dtype=dtype) - (ts - 1) / 2.0
    off_y, off_x = (o.reshape(-1) for o in torch.meshgrid(off, off, indexing="ij"))  # [P]
    basis = torch.stack([torch.ones_like(off_x), off_x, off_y, off_x * off_x, off_x * off_y, off_y * off_y])  # [6,P]
    return _TileGrid(ts, tiles_x, tiles_y, n_cams, off_x, off_y, basis)


@dataclass
class _TileLists:
    """Every tile's list of visible pairs, front to back, as M rows grouped into S non-empty tiles.

    Attributes:
        entry: [M] index into the V visible pairs; tile: [M] global tile id; centre: [M,2] that tile's centre.
        seg_tiles, seg_counts, seg_starts: [S] each non-empty tile's id, row count and first row.
    """

    entry: torch.Tensor
    tile: torch.Tensor
    centre: torch.Tensor
    seg_tiles: torch.Tensor
    seg_counts: torch.Tensor
    seg_starts: torch.Tensor


@torch.no_grad()
def _tile_lists(proj: Projection, vis: _Visible, grid: _TileGrid) -> _TileLists:
    """Bin the visible pairs into the tiles their boxes touch, cull misses, sort by tile and depth."""
    ts, tiles_x, tiles_y = grid.size, grid.tiles_x, grid.tiles_y
    cam_ids, gs_ids = vis.cam_ids, vis.gs_ids
    entry, tile = _tile_entries(cam_ids, vis.means2d.detach(), proj.radii[cam_ids, gs_ids], ts, tiles_x, tiles_y)
    # Drop (entry, tile) pairs whose Gaussian reaches alpha >= 1/255 at no pixel of the tile (the
    # box's corners miss the ellipse); the margin keeps every pair the exact test could accept.
    centre = _tile_centres(tile, ts, tiles_x, tiles_y, grid.dtype)
    sigma0 = _sigma_coefs(vis.means2d.detach()[entry] - centre, vis.conics.detach()[entry]) @ grid.basis
    limit = torch.log(vis.opacities.detach()[entry] / ALPHA_THRESHOLD) + 1e-3
    hit = (sigma0 <= limit[:, None]).any(dim=1)
    entry, tile, centre = entry[hit], tile[hit], centre[hit]
    # Sort by tile, front to back within a tile.
    n_vis = gs_ids.shape[0]
    depth_rank = torch.empty_like(gs_ids)
    depth_rank[torch.argsort(proj.depths.detach()[cam_ids, gs_ids])] = torch.arange(n_vis, device=grid.device)
    order = torch.argsort(tile * max(1, n_vis) + depth_rank[entry])
    entry, tile, centre = entry[order], tile[order], centre[order]
    seg_tiles, seg_counts = torch.unique_consecutive(tile, return_counts=True)
    seg_starts = torch.cumsum(seg_counts, 0) - seg_counts
    return _TileLists(entry, tile, centre, seg_tiles, seg_counts, seg_starts)


def _row_coefficients(vis: _Visible, lists: _TileLists, grid: _TileGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, log(o) - sigma(pixel) = neg_coef . basis(pixel), plus one dummy row of alpha 0 that pads the groups.

    The conic is positive definite for every visible Gaussian (det > 0, a > 0), so sigma >= 0 and gsplat's
    sigma < 0 test is not needed. Returns rel [M,2] (each row's mean relative to its tile's centre) and
    neg_coef [M+1,6].
    """
    rel = _take(vis.means2d, lists.entry) - lists.centre  # [M,2]
    coef = _sigma_coefs(rel, _take(vis.conics, lists.entry))  # [M,6]
    neg_coef = torch.cat([(_take(torch.log(vis.opacities), lists.entry) - coef[:, 0])[:, None], -coef[:, 1:]], dim=1)
    dummy = torch.zeros(1, 6, dtype=grid.dtype, device=grid.device)
    dummy[0, 0] = -1e4
    return rel, torch.cat([neg_coef, dummy])


def _row_channels(vis: _Visible, depths: Optional[torch.Tensor], entry: torch.Tensor, grid: _TileGrid) -> torch.Tensor:
    """Channels composited per row: rgb, [depth,] and a last channel of ones that sums the weights.

    Args: depths [V] camera-space z of the pairs (None: no depth channel); entry [M]. Returns [M+1,D], the
    last row zero (the dummy row's).
    """
    colors = vis.colors
    channels = [colors, depths[:, None]] if depths is not None else [colors]
    colors4 = torch.cat([*channels, torch.ones_like(colors[:, :1])], dim=1)  # [V,D]
    n_ch = colors4.shape[1]
    return torch.cat([_take(colors4, entry), torch.zeros(1, n_ch, dtype=grid.dtype, device=grid.device)])


def _composite(
    neg_coef: torch.Tensor,
    channels: torch.Tensor,
    lists: _TileLists,
    grid: _TileGrid,
    abs_grad: Optional[_AbsGrad],
    rel: torch.Tensor,
    conics: torch.Tensor,
) -> torch.Tensor:
    """Front-to-back compositing of every tile, one group of similar-length tiles at a time, padded to [S_b,P,K_b].

    Args: neg_coef [M+1,6] and channels [M+1,D] per row (the last row the dummy), rel [M,2], conics [V,3].
    Returns: sum_i alpha_i T_i c_i per tile and pixel, [T,P,D] (T tiles of all cameras, zero where empty).
    """
    n_rows = lists.entry.shape[0]
    seg_counts, seg_starts = lists.seg_counts, lists.seg_starts
    device = grid.device
    acc = torch.zeros(grid.n_tiles, grid.size * grid.size, channels.shape[1], dtype=grid.dtype, device=device)
    for segs in _buckets(seg_counts):
        k = torch.arange(int(seg_counts[segs].max()), device=device)
        rows = torch.where(k < seg_counts[segs, None], seg_starts[segs, None] + k, n_rows)  # [S_b,K_b]
        log_alpha = grid.basis.T @ _take(neg_coef, rows).transpose(1, 2)  # [S_b,P,K_b]
        if abs_grad is not None:
            abs_grad.watch(log_alpha, rows, lists.entry, rel, conics, grid.off_x, grid.off_y)
        alpha = torch.exp(log_alpha).clamp_max(MAX_ALPHA)
        with torch.no_grad():
            valid = alpha >= ALPHA_THRESHOLD
        alpha = alpha * valid
        log_t = torch.log1p(-alpha)
        log_t_after = torch.cumsum(log_t, dim=-1)  # log T after each Gaussian, front to back
        with torch.no_grad():
            keep = log_t_after > math.log(T_MIN)  # the pixel has not stopped yet (a prefix along K)
        weight = alpha * torch.exp(log_t_after - log_t) * keep  # alpha_i T_i
        acc = acc.index_copy(0, lists.seg_tiles[segs], weight @ _take(channels, rows))  # [S_b,P,D]
    return acc


def _tiles_to_image(
    acc: torch.Tensor, grid: _TileGrid, width: int, height: int, backgrounds: torch.Tensor, with_depth: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles [T,P,D] -> colours [B,H,W,3] (+ expected depth: [B,H,W,4]) over ``backgrounds`` [B,3], alphas [B,H,W,1].

    sum_i alpha_i T_i over the kept prefix is 1 - T_final: the last channel is the pixel's alpha.
    """
    ts, n_ch = grid.size, acc.shape[-1]
    image = acc.reshape(grid.n_cams, grid.tiles_y, grid.tiles_x, ts, ts, n_ch).permute(0, 1, 3, 2, 4, 5)
    image = image.reshape(grid.n_cams, grid.tiles_y * ts, grid.tiles_x * ts, n_ch)[:, :height, :width]
    alphas = image[..., -1:]
    rgb = image[..., :3] + (1.0 - alphas) * backgrounds[:, None, None, :]
    if with_depth:  # gsplat's "ED": the accumulated depth over alpha clamped at 1e-10 (0 where alpha = 0)
        rgb = torch.cat([rgb, image[..., 3:4] / alphas.clamp_min(1e-10)], dim=-1)
    return rgb, alphas


def _render_info(proj: Projection, vis: _Visible, packed: bool, n_intersections: int) -> dict:
    """The info dict (see ``RenderOutput``): gsplat's packed [V,...] layout or its dense [B,N,...] one."""
    cam_ids, gs_ids = vis.cam_ids, vis.gs_ids
    return {
        "means2d": vis.means2d_info,
        "radii": proj.radii[cam_ids, gs_ids] if packed else proj.radii,
        "depths": _take2(proj.depths, cam_ids, gs_ids) if packed else proj.depths,
        "conics": vis.conics if packed else proj.conics,
        "gaussian_ids": gs_ids if packed else None,
        "camera_ids": cam_ids if packed else None,
        "n_intersections": n_intersections,
    }


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    sh_coeffs: torch.Tensor,
    sh_degree: int,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    backgrounds: torch.Tensor,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    tile_size: int = 4,
    packed: bool = False,
    absgrad: bool = False,
    with_depth: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Render N Gaussians into B cameras; differentiable w.r.t. every Gaussian input.

    Args:
        means [N,3], quats [N,4] wxyz, scales [N,3] (activated), opacities [N] (activated),
        sh_coeffs [N,K,3] with K >= (sh_degree+1)^2, viewmats [B,4,4], Ks [B,3,3], backgrounds [B,3].
        with_depth: add a 4th colour channel, the expected depth (gsplat's "RGB+ED" render mode).
    Returns:
        colors [B,H,W,3] ([B,H,W,4] with depth; not clamped above), alphas [B,H,W,1], info dict
        (see ``RenderOutput``).
    """
    proj = project(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d, radius_clip)
    vis = _gather_visible(proj, means, opacities, sh_coeffs, sh_degree, viewmats, packed)
    grid = _tile_grid(viewmats.shape[0], width, height, tile_size, means.device, means.dtype)
    lists = _tile_lists(proj, vis, grid)
    rel, neg_coef = _row_coefficients(vis, lists, grid)
    depths = _take2(proj.depths, vis.cam_ids, vis.gs_ids) if with_depth else None
    channels = _row_channels(vis, depths, lists.entry, grid)
    abs_grad = _AbsGrad(vis.means2d_info, vis.cam_ids, vis.gs_ids, packed) if absgrad and neg_coef.requires_grad else None
    acc = _composite(neg_coef, channels, lists, grid, abs_grad, rel, vis.conics)
    rgb, alphas = _tiles_to_image(acc, grid, width, height, backgrounds, with_depth)
    return rgb, alphas, _render_info(proj, vis, packed, lists.entry.shape[0])


class _AbsGrad:
    """Accumulates sum over pixels of |d loss / d means2d| during backward into ``means2d.absgrad``
    (gsplat's ``absgrad``, used by AbsGS-style densification)."""

    def __init__(self, means2d: torch.Tensor, cam_ids: torch.Tensor, gs_ids: torch.Tensor, packed: bool) -> None:
        self.means2d, self.cam_ids, self.gs_ids, self.packed = means2d, cam_ids, gs_ids, packed
        self.per_vis = torch.zeros(cam_ids.shape[0], 2, dtype=means2d.dtype, device=means2d.device)

    def watch(
        self,
        log_alpha: torch.Tensor,
        rows: torch.Tensor,
        entry: torch.Tensor,
        rel: torch.Tensor,
        conics: torch.Tensor,
        off_x: torch.Tensor,
        off_y: torch.Tensor,
    ) -> None:
        """Hook ``log_alpha`` [S,P,K] (log o - sigma at the padded ``rows`` [S,K] of the entry list)."""
        real = rows < entry.shape[0]
        safe = torch.where(real, rows, 0)
        ux, uy = rel.detach()[safe].unbind(-1)  # [S,K]
        a, b, c = (t[:, None, :] for t in conics.detach()[entry[safe]].unbind(-1))  # [S,1,K]
        dx = ux[:, None, :] - off_x[None, :, None]  # mean - pixel centre, [S,P,K]
        dy = uy[:, None, :] - off_y[None, :, None]

        def hook(grad: torch.Tensor) -> None:
            # Per pixel, d loss / d mean2d = -grad * conic @ d; gsplat sums its absolute value over pixels.
            gx = (grad * (a * dx + b * dy)).abs().sum(1)  # [S,K]
            gy = (grad * (b * dx + c * dy)).abs().sum(1)
            self.per_vis.index_add_(0, entry[rows[real]], torch.stack([gx[real], gy[real]], dim=-1))
            # gsplat's convention: absgrad is an extra attribute on the means2d tensor, unknown to torch's stubs
            if self.packed:
                self.means2d.absgrad = self.per_vis  # pyright: ignore[reportAttributeAccessIssue]
            else:
                out = torch.zeros_like(self.means2d.detach())
                out[self.cam_ids, self.gs_ids] = self.per_vis
                self.means2d.absgrad = out  # pyright: ignore[reportAttributeAccessIssue]

        log_alpha.register_hook(hook)


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` along dim 0 for any index shape ([...] -> [..., *values.shape[1:]]).

    Gathers go through index_select: its backward (index_add) sums in index order, so gradients are
    bitwise the same at any CPU thread count; ``values[index]``'s backward (index_put with accumulate)
    adds in thread order and is not (docs/design.md, determinism).
    """
    flat = torch.index_select(values, 0, index.reshape(-1))
    return flat.reshape(*index.shape, *values.shape[1:])


def _take2(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``values[rows, cols]`` for a [B,N,...] tensor and two [V] index tensors, deterministically (see _take)."""
    return _take(values.flatten(0, 1), rows * values.shape[1] + cols)


def rasterize_gaussians(
    params: dict[str, torch.Tensor],
    sh_degree: int,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    backgrounds: torch.Tensor,
    config: Optional[RenderConfig] = None,
    with_depth: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """:func:`rasterize` from raw Gaussian parameters (log scales, logit opacities) and a RenderConfig."""
    from fsd_gs.render.config import RenderConfig

    cfg = config if config is not None else RenderConfig()
    return rasterize(
        params["means"],
        params["quats"],
        torch.exp(params["scales"]),
        torch.sigmoid(params["opacities"]),
        torch.cat([params["sh0"], params["shN"]], dim=1),
        sh_degree,
        viewmats,
        Ks,
        width,
        height,
        backgrounds,
        near_plane=cfg.near_plane,
        far_plane=cfg.far_plane,
        eps2d=cfg.eps2d,
        radius_clip=cfg.radius_clip,
        tile_size=cfg.reference_tile_size,
        packed=cfg.packed,
        absgrad=cfg.absgrad,
        with_depth=with_depth,
    )
