"""Camera batches, orbit sampling and turntable paths.

Conventions (gsplat's): OpenCV cameras (x right, y down, z forward), world-to-camera ``viewmats``
[B,4,4] and pinhole intrinsics ``Ks`` [B,3,3]. The world is z-up; the object sits at the origin and
faces +x, so azimuth 0 deg looks at its front. A camera at azimuth ``a`` and elevation ``e`` (degrees)
and distance ``d`` sits at ``d * (cos e cos a, cos e sin a, sin e)`` and looks at the origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, Sequence

import torch

from fsd_gs.errors import require

ViewName = Literal["front", "side", "back", "overhead"]
VIEW_NAMES: tuple[ViewName, ...] = ("front", "side", "back", "overhead")


@dataclass
class Cameras:
    """A batch of B pinhole cameras that share one image size.

    Attributes:
        viewmats: world-to-camera matrices, [B,4,4].
        Ks: intrinsics, [B,3,3].
        width, height: image size in pixels.
        azimuth, elevation: orbit angles in degrees, [B].
        distance: distance from the origin, [B].
        fovy: vertical field of view in degrees, [B].
    """

    viewmats: torch.Tensor
    Ks: torch.Tensor
    width: int
    height: int
    azimuth: torch.Tensor
    elevation: torch.Tensor
    distance: torch.Tensor
    fovy: torch.Tensor

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Cameras:
        """The same cameras with every tensor on ``device`` (``non_blocking``: host-to-GPU copies do not wait for the
        GPU's queue; the training step uses that)."""
        nb = non_blocking
        return Cameras(
            self.viewmats.to(device, non_blocking=nb),
            self.Ks.to(device, non_blocking=nb),
            self.width,
            self.height,
            self.azimuth.to(device, non_blocking=nb),
            self.elevation.to(device, non_blocking=nb),
            self.distance.to(device, non_blocking=nb),
            self.fovy.to(device, non_blocking=nb),
        )

    def __getitem__(self, index: int | slice | torch.Tensor) -> Cameras:
        """A sub-batch; an integer index keeps the batch dimension (B = 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Cameras(
            self.viewmats[index],
            self.Ks[index],
            self.width,
            self.height,
            self.azimuth[index],
            self.elevation[index],
            self.distance[index],
            self.fovy[index],
        )

    @staticmethod
    def cat(batches: list[Cameras]) -> Cameras:
        """One batch of all cameras of ``batches`` (which must share an image size), in order."""
        first = batches[0]
        if any((c.width, c.height) != (first.width, first.height) for c in batches):
            raise ValueError("cameras of different image sizes cannot be concatenated")
        tensors = {name: torch.cat([getattr(c, name) for c in batches]) for name in _BATCHED_FIELDS}
        return Cameras(width=first.width, height=first.height, **tensors)

    def with_resolution(self, width: int, height: int) -> Cameras:
        """The same viewpoints rendered at another image size (intrinsics rescaled)."""
        Ks = self.Ks.clone()
        Ks[:, 0] *= width / self.width
        Ks[:, 1] *= height / self.height
        return replace(self, Ks=Ks, width=width, height=height)

    def camera_centers(self) -> torch.Tensor:
        """Camera positions in world space, [B,3]."""
        return torch.linalg.inv(self.viewmats)[:, :3, 3]


_BATCHED_FIELDS = ("viewmats", "Ks", "azimuth", "elevation", "distance", "fovy")  # the [B,...] tensors of Cameras


def look_at_viewmats(positions: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """World-to-camera OpenCV matrices for cameras at ``positions`` [B,3] looking at ``target`` [3].

    The world up axis is +z; image "down" is the projection of -z. Returns [B,4,4].
    """
    if target is None:
        target = torch.zeros(3, dtype=positions.dtype, device=positions.device)
    forward = torch.nn.functional.normalize(target - positions, dim=-1)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=positions.dtype, device=positions.device).expand_as(forward)
    right = torch.linalg.cross(forward, up)
    # Straight above or below: fall back to +y as the up axis so the basis stays defined.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt_up = torch.tensor([0.0, 1.0, 0.0], dtype=positions.dtype, device=positions.device).expand_as(forward)
    right = torch.where(degenerate, torch.linalg.cross(forward, alt_up), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right)
    c2w_rot = torch.stack([right, down, forward], dim=-1)  # columns are the camera axes in world space
    viewmats = torch.zeros(positions.shape[0], 4, 4, dtype=positions.dtype, device=positions.device)
    viewmats[:, :3, :3] = c2w_rot.transpose(1, 2)
    viewmats[:, :3, 3] = -(c2w_rot.transpose(1, 2) @ positions.unsqueeze(-1)).squeeze(-1)
    viewmats[:, 3, 3] = 1.0
    return viewmats


def intrinsics(fovy_deg: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pinhole intrinsics [B,3,3] with square pixels and the principal point at the image centre."""
    fy = 0.5 * height / torch.tan(torch.deg2rad(fovy_deg) / 2)
    Ks = torch.zeros(fovy_deg.shape[0], 3, 3, dtype=fovy_deg.dtype, device=fovy_deg.device)
    Ks[:, 0, 0] = fy
    Ks[:, 1, 1] = fy
    Ks[:, 0, 2] = width / 2
    Ks[:, 1, 2] = height / 2
    Ks[:, 2, 2] = 1.0
    return Ks


def orbit_cameras(
    azimuth: torch.Tensor,
    elevation: torch.Tensor,
    distance: torch.Tensor,
    fovy: torch.Tensor,
    width: int,
    height: int,
) -> Cameras:
    """Cameras on a sphere around the origin, from per-view angles (degrees) [B], distance [B], fovy [B]."""
    require(width > 0 and height > 0, f"image size must be positive, got {width}x{height}")
    az, el = torch.deg2rad(azimuth), torch.deg2rad(elevation)
    positions = torch.stack(
        [distance * torch.cos(el) * torch.cos(az), distance * torch.cos(el) * torch.sin(az), distance * torch.sin(el)],
        dim=-1,
    )
    return Cameras(
        look_at_viewmats(positions),
        intrinsics(fovy, width, height),
        width,
        height,
        azimuth,
        elevation,
        distance,
        fovy,
    )


MAX_IMAGE_SIZE = 4096
"""Largest training image side in pixels (diffusion priors are trained at 64-1024)."""


@dataclass
class CameraConfig:
    """Random orbit cameras for training (defaults close to threestudio's 3DGS preset)."""

    batch_size: int = 1
    """Views rendered per optimisation step."""
    width: int = 512
    """Rendered image width in pixels."""
    height: int = 512
    """Rendered image height in pixels."""
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    """Azimuth range in degrees (0 = the object's front, +x)."""
    elevation_range: tuple[float, float] = (-10.0, 60.0)
    """Elevation range in degrees."""
    distance_range: tuple[float, float] = (2.5, 2.5)
    """Camera distance from the origin."""
    fovy_range: tuple[float, float] = (40.0, 70.0)
    """Vertical field of view range in degrees."""
    stratified_azimuth: bool = True
    """Split the azimuth range into B equal bins, one view per bin, so a batch surrounds the object."""
    eval_elevation: float = 15.0
    """Elevation of the turntable views, degrees."""
    eval_distance: float = 2.5
    """Distance of the turntable views."""
    eval_fovy: float = 50.0
    """Field of view of the turntable views, degrees."""

    def validate(self) -> None:
        require(self.batch_size >= 1, f"camera.batch_size must be >= 1, got {self.batch_size}")
        require(
            0 < self.width <= MAX_IMAGE_SIZE and 0 < self.height <= MAX_IMAGE_SIZE,
            f"camera.width and camera.height must lie in 1..{MAX_IMAGE_SIZE} pixels, got {self.width}x{self.height}",
        )
        for name in ("azimuth_range", "elevation_range", "distance_range", "fovy_range"):
            lo, hi = getattr(self, name)
            require(lo <= hi, f"camera.{name} must be (low, high) with low <= high, got {(lo, hi)}")
        require(
            -90.0 <= self.elevation_range[0] and self.elevation_range[1] <= 90.0,
            f"camera.elevation_range must lie in [-90, 90] degrees, got {self.elevation_range}",
        )
        require(self.distance_range[0] > 0, "camera.distance_range must be positive")
        require(0 < self.fovy_range[0] and self.fovy_range[1] < 180, "camera.fovy_range must lie in (0, 180) degrees")


Angles4 = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""(azimuth, elevation, distance, fovy), each [B]: what :func:`orbit_cameras` builds cameras from."""


def _uniform(lo: float, hi: float, n: int, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64).float()


class OrbitSampler:
    """Draws random orbit camera batches from :class:`CameraConfig` with an explicit generator."""

    def __init__(self, config: CameraConfig, device: torch.device | str = "cpu") -> None:
        config.validate()
        self.config = config
        self.device = torch.device(device)

    def sample(
        self, generator: torch.Generator, batch_size: int | None = None, width: int | None = None, height: int | None = None
    ) -> Cameras:
        """A batch of random cameras; sizes default to the config. The generator must be on the CPU."""
        cfg = self.config
        cams = orbit_cameras(*self.draw(generator, batch_size), width or cfg.width, height or cfg.height)
        return cams.to(self.device)

    def draw(self, generator: torch.Generator, batch_size: int | None = None) -> Angles4:
        """The random part of :meth:`sample`: (azimuth wrapped to [-180, 180), elevation, distance, fovy), each [B]
        float32 on the CPU, in degrees and scene units, drawn from ``generator`` (on the CPU) as :meth:`sample` draws."""
        cfg = self.config
        b = batch_size or cfg.batch_size
        if cfg.stratified_azimuth:
            lo, hi = cfg.azimuth_range
            bins = (torch.arange(b, dtype=torch.float32) + torch.rand(b, generator=generator)) / b
            azimuth = lo + (hi - lo) * bins
        else:
            azimuth = _uniform(*cfg.azimuth_range, b, generator)
        # Elevation uniform on the sphere's band, not in angle, so views do not bunch at the poles.
        s_lo, s_hi = (math.sin(math.radians(e)) for e in cfg.elevation_range)
        elevation = torch.rad2deg(torch.asin(_uniform(s_lo, s_hi, b, generator).clamp(-1, 1)))
        distance = _uniform(*cfg.distance_range, b, generator)
        fovy = _uniform(*cfg.fovy_range, b, generator)
        return wrap_azimuth(azimuth), elevation, distance, fovy


def sample_together(sampler: Any, generators: Sequence[torch.Generator]) -> list[Cameras]:
    """``[sampler.sample(g) for g in generators]`` with the geometry built once: a grouped step's seeds each draw
    their angles from their own generator, exactly as :meth:`OrbitSampler.sample` would, and one
    :func:`orbit_cameras` call builds every seed's cameras (K calls of it cost K times its Python, which on a GPU
    machine is most of a small prior's step). The cameras agree with K separate calls up to the last bit of the
    vectorised sin/cos. Samplers other than :class:`OrbitSampler` (e.g. multi-view groups) sample one by one."""
    if type(sampler) is not OrbitSampler or len(generators) < 2:
        return [sampler.sample(g) for g in generators]
    draws = [sampler.draw(g) for g in generators]
    cfg = sampler.config
    azimuth, elevation, distance, fovy = (torch.cat(parts) for parts in zip(*draws))
    joined = orbit_cameras(azimuth, elevation, distance, fovy, cfg.width, cfg.height).to(sampler.device)
    b = cfg.batch_size
    return [joined[i * b : (i + 1) * b] for i in range(len(generators))]


def turntable(
    n_views: int,
    elevation: float = 15.0,
    distance: float = 2.5,
    fovy: float = 50.0,
    width: int = 512,
    height: int = 512,
    device: torch.device | str = "cpu",
) -> Cameras:
    """``n_views`` cameras evenly spaced in azimuth, starting at the front (deterministic)."""
    require(n_views >= 1, f"a turntable needs at least one view, got {n_views}")
    azimuth = wrap_azimuth(torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views))
    ones = torch.ones(n_views)
    return orbit_cameras(azimuth, elevation * ones, distance * ones, fovy * ones, width, height).to(device)


def wrap_azimuth(azimuth: torch.Tensor) -> torch.Tensor:
    """Azimuth wrapped to [-180, 180) degrees."""
    return torch.remainder(azimuth + 180.0, 360.0) - 180.0


def view_direction(
    azimuth: float, elevation: float, front_span: float = 45.0, back_span: float = 45.0, overhead_above: float = 60.0
) -> ViewName:
    """Name the view for DreamFusion-style prompts: overhead above ``overhead_above`` deg elevation,
    front within ``front_span`` deg of azimuth 0, back within ``back_span`` deg of 180, else side."""
    if elevation > overhead_above:
        return "overhead"
    a = abs(float(wrap_azimuth(torch.tensor(float(azimuth)))))
    if a <= front_span:
        return "front"
    if a >= 180.0 - back_span:
        return "back"
    return "side"


def view_directions(
    cameras: Cameras, front_span: float = 45.0, back_span: float = 45.0, overhead_above: float = 60.0
) -> list[ViewName]:
    """:func:`view_direction` for every camera of a batch, with the same spans for each."""
    return [
        view_direction(a, e, front_span, back_span, overhead_above)
        for a, e in zip(cameras.azimuth.tolist(), cameras.elevation.tolist())
    ]
