"""A triangle mesh from Gaussians: the iso surface of their opacity-weighted density, coloured by their base colour.

The density at a point x is

    D(x) = sum_i opacity_i * exp(-0.5 * (x - mean_i)^T Sigma_i^-1 (x - mean_i)),    Sigma_i = R_i S_i^2 R_i^T,

cut off at 3 sigma (the kernel of 3DGS and KHR_gaussian_splatting). It is sampled on a grid of cubic
voxels over the 3-sigma box of all Gaussians, ``resolution`` voxels along the longest side, by
splatting each Gaussian onto the voxels of its own footprint in chunks (about 100 bytes per
one of ``chunk_elements`` samples at a time, whatever the number of Gaussians or the resolution). Before
sampling, every Gaussian is low-pass filtered by the grid (its variance grows by
(``smoothing`` x voxel)^2 per axis and its opacity shrinks so that its integral is kept, as
Mip-Splatting's 3D filter does), so surfaces made of Gaussians thinner than a voxel are not lost
between samples. Marching cubes (scikit-image) extracts the surface D = ``threshold``; with
``fill_interior`` the closed cavities inside the occupied region (D > threshold) are filled first, so
a shell of Gaussians (what a trained asset is) gives one closed outer surface instead of an outer and
an inner one. Vertex colours are the density-weighted mean base colour (SH DC -> RGB) of the Gaussians
around each vertex, accumulated on the same grid and interpolated trilinearly.

Written with trimesh: ``.glb`` (the node rotates our z-up world to glTF's y-up, like the splat .glb;
vertex colours are converted to linear, as glTF wants), ``.obj`` and ``.ply`` (our world coordinates,
z up, vertex colours sRGB as these formats conventionally hold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from fsd_gs.errors import UserError, require
from fsd_gs.export.base import ExportFormat
from fsd_gs.gaussians import Gaussians, sh0_to_rgb

MeshFormat = Literal["glb", "obj", "ply"]
MESH_FORMATS: tuple[str, ...] = ("glb", "obj", "ply")


@dataclass
class MeshConfig:
    """How the ``mesh`` export turns Gaussians into a triangle mesh (marching cubes on their density)."""

    resolution: int = 128
    """Voxels along the longest side of the sampling grid (16..1024); memory grows with its cube (256 -> ~270 MB)."""
    threshold: float = 0.5
    """Iso level of the density sum_i opacity_i exp(-mahalanobis_i^2 / 2); lower keeps fainter parts."""
    format: MeshFormat = "glb"
    """File format: glb (glTF, y up), obj or ply (our z-up world); all carry vertex colours."""
    fill_interior: bool = True
    """Fill closed cavities before extracting the surface, so a shell of Gaussians becomes one closed surface."""
    smoothing: float = 0.5
    """Low-pass filter of each Gaussian, in voxels (standard deviation); 0 samples the raw density."""
    chunk_elements: int = 1 << 21
    """Largest number of (Gaussian, voxel) pairs evaluated at once; bounds the memory of the density pass."""

    def validate(self) -> None:
        """UserError on the first bad field."""
        require(16 <= self.resolution <= 1024, f"--mesh.resolution must be 16..1024, got {self.resolution}")
        require(
            math.isfinite(self.threshold) and self.threshold > 0,
            f"--mesh.threshold must be a positive number, got {self.threshold}",
        )
        require(self.format in MESH_FORMATS, f"--mesh.format must be one of {', '.join(MESH_FORMATS)}, got {self.format!r}")
        require(
            math.isfinite(self.smoothing) and 0 <= self.smoothing <= 4,
            f"--mesh.smoothing must be 0..4 voxels, got {self.smoothing}",
        )
        require(self.chunk_elements >= 1024, f"--mesh.chunk-elements must be >= 1024, got {self.chunk_elements}")


@dataclass
class DensityGrid:
    """The sampled density and colour of a set of Gaussians.

    Attributes:
        density: D at the voxel centres, [X,Y,Z] float32.
        color_sum: sum_i w_i rgb_i with w_i the density contribution of Gaussian i, [X,Y,Z,3] float32
            (colour = color_sum / density).
        origin: world position of voxel (0, 0, 0), [3].
        voxel: edge length of a voxel (world units).
    """

    density: np.ndarray
    color_sum: np.ndarray
    origin: np.ndarray
    voxel: float


def _rotations(quats: torch.Tensor) -> torch.Tensor:
    from fsd_gs.gaussians import quat_to_rotmat

    return quat_to_rotmat(quats)


def density_grid(gaussians: Gaussians, config: MeshConfig) -> DensityGrid:
    """Sample the density and base colour of finite ``gaussians`` on a grid (see the module doc).

    Runs on the Gaussians' device (CPU or CUDA) in float32; the result is on the CPU.
    """
    p = {k: v.detach().float() for k, v in gaussians.params.items()}
    device = p["means"].device
    means, sigma = p["means"], torch.exp(p["scales"])  # [N,3], [N,3]
    rot = _rotations(p["quats"])  # [N,3,3], columns are the Gaussian's axes
    alpha = torch.sigmoid(p["opacities"])  # [N]
    rgb = sh0_to_rgb(p["sh0"][:, 0]).clamp(0.0, 1.0)  # [N,3]

    extent = 3.0 * torch.sqrt(((rot * sigma[:, None, :]) ** 2).sum(dim=2))  # [N,3]: 3 sigma along each world axis
    lo = (means - extent).min(dim=0).values
    hi = (means + extent).max(dim=0).values
    voxel = float((hi - lo).max()) / config.resolution
    if not voxel > 0:
        raise UserError("the Gaussians have no spatial extent (all at one point with zero size): nothing to mesh")
    dims = torch.ceil((hi - lo) / voxel).long() + 1  # [3]
    X, Y, Z = (int(d) for d in dims)

    # Low-pass filter at the grid's sampling rate, keeping each Gaussian's integral.
    s2 = (config.smoothing * voxel) ** 2
    sigma_f = torch.sqrt(sigma**2 + s2)
    alpha_f = alpha * torch.prod(sigma / sigma_f, dim=1)

    density = torch.zeros(X * Y * Z, dtype=torch.float32, device=device)
    color_sum = torch.zeros(X * Y * Z, 3, dtype=torch.float32, device=device)
    extent_f = 3.0 * torch.sqrt(((rot * sigma_f[:, None, :]) ** 2).sum(dim=2))
    radius = torch.ceil(extent_f.max(dim=1).values / voxel).long().clamp(max=max(X, Y, Z))  # footprint, voxels
    centre = torch.round((means - lo) / voxel).long()  # [N,3] nearest voxel
    strides = torch.tensor([Y * Z, Z, 1], device=device)
    upper = dims.to(device) - 1
    for k in torch.unique(radius).tolist():
        members = torch.nonzero(radius == k).flatten()
        r = torch.arange(-k, k + 1, device=device)
        offsets = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)  # [O,3]
        step = max(1, config.chunk_elements // offsets.shape[0])
        for start in range(0, members.numel(), step):
            idx = members[start : start + step]
            vox = centre[idx, None, :] + offsets[None]  # [C,O,3]
            inside = ((vox >= 0) & (vox <= upper)).all(dim=2)  # [C,O]
            d = lo + vox.float() * voxel - means[idx, None, :]  # [C,O,3]
            local = torch.einsum("coj,cjk->cok", d, rot[idx]) / sigma_f[idx, None, :]  # coordinates in sigmas
            m2 = (local**2).sum(dim=2)
            keep = inside & (m2 < 9.0)
            w = (alpha_f[idx, None] * torch.exp(-0.5 * m2))[keep]
            flat = (vox * strides).sum(dim=2)[keep]
            density.index_add_(0, flat, w)
            color_sum.index_add_(0, flat, w[:, None] * rgb[idx, None, :].expand(-1, offsets.shape[0], -1)[keep])
    return DensityGrid(
        density.reshape(X, Y, Z).cpu().numpy(), color_sum.reshape(X, Y, Z, 3).cpu().numpy(), lo.cpu().double().numpy(), voxel
    )


def extract_mesh(gaussians: Gaussians, config: MeshConfig | None = None):
    """The coloured iso surface of finite ``gaussians`` as a ``trimesh.Trimesh`` in our world coordinates.

    Vertex colours are sRGB uint8 RGBA. Raises UserError when there is no surface at the threshold.
    """
    import trimesh
    from scipy import ndimage
    from skimage.measure import marching_cubes

    config = config or MeshConfig()
    config.validate()
    grid = density_grid(gaussians, config)
    peak = float(grid.density.max())
    if not peak > config.threshold:
        raise UserError(
            f"no surface at --mesh.threshold {config.threshold:g}: the density of the Gaussians peaks at "
            f"{peak:.3g}, so lower the threshold below that"
        )
    field = np.pad(grid.density, 1)  # zeros around: every surface closes inside the grid
    if config.fill_interior:
        occupied = field > config.threshold
        cavity = np.asarray(ndimage.binary_fill_holes(occupied), dtype=bool) & ~occupied
        field[cavity] = max(peak, 2.0 * config.threshold)
    verts, faces, _, _ = marching_cubes(field, level=config.threshold, allow_degenerate=False)
    if len(faces) == 0:
        raise UserError(
            f"no surface at --mesh.threshold {config.threshold:g}: marching cubes found no triangles; "
            "lower the threshold or raise --mesh.resolution"
        )
    # Colour: density-weighted mean base colour, interpolated at the vertices (index space of the padded grid).
    coords = verts.T
    weight = ndimage.map_coordinates(np.pad(grid.density, 1), coords, order=1)
    colour = np.stack([ndimage.map_coordinates(np.pad(grid.color_sum[..., c], 1), coords, order=1) for c in range(3)], 1)
    rgb = np.where(weight[:, None] > 1e-12, colour / np.maximum(weight, 1e-12)[:, None], 0.5).clip(0.0, 1.0)
    rgba = np.concatenate([np.round(rgb * 255), np.full((len(rgb), 1), 255)], axis=1).astype(np.uint8)
    world = (verts - 1.0) * grid.voxel + grid.origin  # undo the padding
    mesh = trimesh.Trimesh(vertices=world, faces=faces, vertex_colors=rgba, process=True)
    if mesh.volume < 0:  # outward normals whatever marching cubes' winding convention
        mesh.invert()
    return mesh


def mesh_bytes(mesh, fmt: str) -> bytes:
    """``mesh`` (from :func:`extract_mesh`) encoded as ``fmt`` (glb, obj or ply; see the module doc)."""
    import trimesh
    from kornia.color import rgb_to_linear_rgb
    from trimesh.visual import ColorVisuals

    from fsd_gs.export.gltf import Z_UP_TO_Y_UP

    if fmt == "glb":
        linear = mesh.copy()
        srgb = torch.from_numpy(mesh.visual.vertex_colors[:, :3].astype(np.float32) / 255.0)
        lin = rgb_to_linear_rgb(srgb.t()[:, :, None])[:, :, 0].t().numpy()
        colours = mesh.visual.vertex_colors.copy()
        colours[:, :3] = np.round(lin * 255).astype(np.uint8)
        linear.visual = ColorVisuals(linear, vertex_colors=colours)
        transform = np.eye(4)
        transform[:3, :3] = Z_UP_TO_Y_UP
        scene = trimesh.Scene()
        scene.add_geometry(linear, node_name="mesh", geom_name="mesh", transform=transform)
        return _as_bytes(scene.export(file_type="glb"))
    return _as_bytes(mesh.export(file_type=fmt))


def _as_bytes(data: Any) -> bytes:
    """trimesh's export result (bytes, or str for text formats) as bytes."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if not isinstance(data, bytes):
        raise TypeError(f"trimesh exported a {type(data).__name__}, expected bytes or str")
    return data


def encode_mesh(gaussians: Gaussians, config: MeshConfig | None = None) -> bytes:
    """The mesh file of finite ``gaussians`` in ``config.format`` (validated; default :class:`MeshConfig`).

    Raises:
        UserError: bad config, nothing to mesh, or no surface at the threshold.
    """
    config = config or MeshConfig()
    config.validate()
    return mesh_bytes(extract_mesh(gaussians, config), config.format)


MESH = ExportFormat(
    "mesh",
    ".mesh.{mesh.format}",
    encode_mesh,
    "marching cubes on the Gaussians' density (scikit-image), written by trimesh as glb/obj/ply",
)
write_mesh = MESH.write
"""Extract the mesh and write it in ``MeshConfig.format``, atomically, non-finite rows dropped with a warning."""
