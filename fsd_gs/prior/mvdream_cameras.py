"""MVDream's camera input, and orbit cameras drawn in MVDream's 4-view groups.

MVDream conditions each view on a 16-vector: its 4x4 camera-to-world matrix, flattened row by row, with
OpenGL camera axes (x right, y up, z backwards) in a z-up "Blender" world whose front view (azimuth 0) looks
from -y, and the translation scaled to unit length. In its reference code a camera at azimuth a and
elevation e sits at (cos e sin a, -cos e cos a, sin e) and looks at the origin.

Ours (fsd_gs.camera): OpenCV world-to-camera ``viewmats`` in a z-up world whose front view (azimuth 0)
looks from +x: the camera sits at (cos e cos a, cos e sin a, sin e). :func:`mvdream_camera_vectors` maps one
to the other so that the same (azimuth, elevation) means the same view in both: the object's front, as
fsd_gs names it, is MVDream's front. (threestudio hands its own c2w matrices to MVDream unchanged, which
puts MVDream's azimuth a at threestudio's a - 90 deg; both are valid, the model has no fixed "front".)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fsd_gs.camera import CameraConfig, Cameras, OrbitSampler, orbit_cameras, turntable, wrap_azimuth
from fsd_gs.errors import UserError

WORLD_TO_MVDREAM = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
"""Rotation from our world (front at +x) to MVDream's (front at -y): a -90 deg turn about the z (up) axis."""

OPENCV_TO_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
"""Camera axes: OpenCV (x right, y down, z forward) -> OpenGL (x right, y up, z backward)."""

DEFAULT_ELEVATION = 15.0
"""Elevation (degrees) of MVDream's reference 4-view orbit (its text-to-image script's default)."""


def mvdream_camera_vectors(cameras: Cameras) -> torch.Tensor:
    """MVDream's camera input [B,16] (float32, on the cameras' device) for our cameras.

    c2w = [[R_w @ R_c2w @ F, R_w @ c / |c|], [0, 0, 0, 1]] flattened row-major, where R_c2w, c come from
    inverting the OpenCV ``viewmats``, F flips the camera's y and z axes (OpenCV -> OpenGL) and R_w is
    :data:`WORLD_TO_MVDREAM`. Works for any camera, not only orbit ones.
    """
    viewmats = cameras.viewmats.to(torch.float32)
    c2w = torch.linalg.inv(viewmats)
    world = WORLD_TO_MVDREAM.to(c2w.device)
    rotation = world @ c2w[:, :3, :3] @ OPENCV_TO_OPENGL.to(c2w.device)
    position = c2w[:, :3, 3] @ world.T
    position = position / (position.norm(dim=-1, keepdim=True) + 1e-8)  # MVDream normalises the translation
    out = torch.zeros(len(cameras), 4, 4, dtype=torch.float32, device=c2w.device)
    out[:, :3, :3] = rotation
    out[:, :3, 3] = position
    out[:, 3, 3] = 1.0
    return out.reshape(-1, 16)


def reference_group(
    num_frames: int = 4,
    groups: int = 1,
    elevation: float = DEFAULT_ELEVATION,
    width: int = 256,
    height: int = 256,
    device: torch.device | str = "cpu",
) -> Cameras:
    """MVDream's reference views: ``groups`` x ``num_frames`` cameras at azimuth 0, 360/F, ... and one elevation."""
    one = turntable(num_frames, elevation=elevation, width=width, height=height, device=device)
    index = torch.arange(num_frames, device=one.device).repeat(groups)
    return one[index]


class MultiViewOrbitSampler:
    """Random orbit cameras in groups of ``views_per_group`` views, as MVDream was trained on.

    Each group has one random start azimuth, elevation, distance and field of view (drawn like
    :class:`fsd_gs.camera.OrbitSampler` draws one camera, from the same :class:`CameraConfig`); its views
    are at the start azimuth + k * 360 / F, k = 0..F-1 (90 deg apart for F = 4). ``camera.batch_size``
    must be a multiple of F; views of a group are consecutive in the batch.
    """

    def __init__(self, config: CameraConfig, views_per_group: int = 4, device: torch.device | str = "cpu") -> None:
        if views_per_group < 1:
            raise UserError(f"views_per_group must be at least 1, got {views_per_group}")
        if config.batch_size % views_per_group:
            raise UserError(
                f"this prior sees views in groups of {views_per_group}: set camera.batch_size to a multiple of "
                f"{views_per_group} (got {config.batch_size})"
            )
        self.config = config
        self.views_per_group = int(views_per_group)
        self.device = torch.device(device)
        self.starts = OrbitSampler(replace(config, batch_size=config.batch_size // views_per_group), device="cpu")

    def sample(
        self, generator: torch.Generator, batch_size: int | None = None, width: int | None = None, height: int | None = None
    ) -> Cameras:
        """A batch of ``batch_size`` (default: the config's) cameras in groups; the generator must be on the CPU."""
        b = batch_size or self.config.batch_size
        f = self.views_per_group
        if b % f:
            raise UserError(f"this prior sees views in groups of {f}: the batch size must be a multiple of {f} (got {b})")
        first = self.starts.sample(generator, batch_size=b // f, width=width, height=height)
        offsets = torch.arange(f, dtype=first.azimuth.dtype) * (360.0 / f)
        azimuth = wrap_azimuth(first.azimuth[:, None] + offsets).reshape(-1)
        cams = orbit_cameras(
            azimuth,
            first.elevation.repeat_interleave(f),
            first.distance.repeat_interleave(f),
            first.fovy.repeat_interleave(f),
            first.width,
            first.height,
        )
        return cams.to(self.device)


def orbit_sampler_for(
    prior: Any, config: CameraConfig, device: torch.device | str = "cpu"
) -> OrbitSampler | MultiViewOrbitSampler:
    """The camera sampler a prior needs: grouped views for priors with ``views_per_group`` > 1 (MVDream), else
    the plain :class:`~fsd_gs.camera.OrbitSampler`."""
    views = int(getattr(prior, "views_per_group", 1) or 1)
    if views > 1:
        return MultiViewOrbitSampler(config, views, device=device)
    return OrbitSampler(config, device=device)
