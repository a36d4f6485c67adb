"""Cameras: OpenCV convention, orbit sampling ranges, turntables and view names."""

import math

import pytest
import torch

from fsd_gs.camera import (
    CameraConfig,
    OrbitSampler,
    orbit_cameras,
    sample_together,
    turntable,
    view_direction,
    view_directions,
    wrap_azimuth,
)
from fsd_gs.errors import UserError


def project(cams, points):
    """Pixel coordinates and depths of world points [P,3] in every camera: ([B,P,2], [B,P])."""
    homo = torch.cat([points, torch.ones(points.shape[0], 1)], dim=1)
    cam = (cams.viewmats @ homo.T).transpose(1, 2)[..., :3]
    pix = (cams.Ks @ cam.transpose(1, 2)).transpose(1, 2)
    return pix[..., :2] / pix[..., 2:3], cam[..., 2]


def test_origin_projects_to_image_centre_in_front_of_camera():
    cams = orbit_cameras(
        torch.tensor([0.0, 90.0, -135.0]),
        torch.tensor([0.0, 30.0, -10.0]),
        torch.tensor([2.5, 3.0, 2.0]),
        torch.tensor([50.0, 60.0, 40.0]),
        64,
        48,
    )
    pix, depth = project(cams, torch.zeros(1, 3))
    assert torch.allclose(pix[:, 0], torch.tensor([32.0, 24.0]).expand(3, 2), atol=1e-4)
    assert torch.allclose(depth[:, 0], torch.tensor([2.5, 3.0, 2.0]), atol=1e-5)


def test_opencv_axes_up_is_image_up_and_camera_centre():
    cams = orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.5]), torch.tensor([60.0]), 64, 64)
    pix, _ = project(cams, torch.tensor([[0.0, 0.0, 0.5], [0.0, 0.5, 0.0]]))
    assert pix[0, 0, 1] < 32  # +z (world up) appears above the centre (y down in OpenCV)
    assert pix[0, 1, 0] > 32  # camera at +x looking at -x: +y is to the right
    assert torch.allclose(cams.camera_centers(), torch.tensor([[2.5, 0.0, 0.0]]), atol=1e-5)


def test_straight_overhead_camera_is_well_defined():
    cams = orbit_cameras(torch.tensor([0.0]), torch.tensor([90.0]), torch.tensor([2.0]), torch.tensor([50.0]), 32, 32)
    assert torch.isfinite(cams.viewmats).all()
    _, depth = project(cams, torch.zeros(1, 3))
    assert depth[0, 0] == pytest.approx(2.0, abs=1e-5)


def test_orbit_sampler_respects_ranges_and_is_seeded():
    cfg = CameraConfig(batch_size=8, elevation_range=(-10.0, 45.0), distance_range=(2.0, 3.0), fovy_range=(40, 60))
    sampler = OrbitSampler(cfg)
    a = sampler.sample(torch.Generator().manual_seed(3))
    b = sampler.sample(torch.Generator().manual_seed(3))
    c = sampler.sample(torch.Generator().manual_seed(4))
    assert torch.equal(a.viewmats, b.viewmats) and not torch.equal(a.viewmats, c.viewmats)
    assert a.elevation.min() >= -10.0 - 1e-4 and a.elevation.max() <= 45.0 + 1e-4
    assert a.distance.min() >= 2.0 and a.distance.max() <= 3.0
    # stratified azimuth: one view in each of 8 bins of 45 degrees
    bins = torch.floor((a.azimuth + 180.0) / 45.0).long()
    assert sorted(bins.tolist()) == list(range(8))


def test_turntable_is_deterministic_and_evenly_spaced():
    cams = turntable(6, elevation=20.0, width=32, height=32)
    assert torch.allclose(cams.azimuth, wrap_azimuth(torch.arange(6) * 60.0))
    assert torch.equal(cams.viewmats, turntable(6, elevation=20.0, width=32, height=32).viewmats)


def test_view_names():
    assert view_direction(0.0, 10.0) == "front"
    assert view_direction(90.0, 10.0) == "side"
    assert view_direction(-100.0, 10.0) == "side"
    assert view_direction(179.0, 10.0) == "back"
    assert view_direction(-170.0, 10.0) == "back"
    assert view_direction(180.0, 75.0) == "overhead"
    cams = turntable(4, elevation=0.0, width=8, height=8)
    assert view_directions(cams) == ["front", "side", "back", "side"]


def test_with_resolution_keeps_the_view():
    cams = turntable(2, width=64, height=64)
    small = cams.with_resolution(16, 16)
    pix_big, _ = project(cams, torch.tensor([[0.1, 0.2, 0.3]]))
    pix_small, _ = project(small, torch.tensor([[0.1, 0.2, 0.3]]))
    assert torch.allclose(pix_small * 4, pix_big, atol=1e-3)


@pytest.mark.parametrize(
    "bad",
    [
        dict(batch_size=0),
        dict(width=0),
        dict(elevation_range=(10.0, -10.0)),
        dict(elevation_range=(-100.0, 10.0)),
        dict(fovy_range=(0.0, 50.0)),
    ],
)
def test_bad_camera_config_is_a_user_error(bad):
    with pytest.raises(UserError):
        OrbitSampler(CameraConfig(**bad))


def test_elevation_is_area_uniform():
    cfg = CameraConfig(batch_size=4096, elevation_range=(0.0, 90.0), stratified_azimuth=False)
    el = OrbitSampler(cfg).sample(torch.Generator().manual_seed(0)).elevation
    # uniform on the sphere band: P(el > 30 deg) = 1 - sin(30 deg) = 0.5
    frac = (el > 30.0).float().mean().item()
    assert abs(frac - (1 - math.sin(math.radians(30)))) < 0.03


def test_cameras_of_several_generators_together_are_each_ones_own():
    """sample_together draws each generator's angles as sample() would (bitwise), leaves each generator where
    sample() would, and builds the same cameras (to float rounding); other samplers sample one by one."""
    from fsd_gs.prior.mvdream_cameras import MultiViewOrbitSampler

    for config in (CameraConfig(batch_size=3, width=64, height=48), CameraConfig(batch_size=2, stratified_azimuth=False)):
        sampler = OrbitSampler(config)
        together_gens = [torch.Generator().manual_seed(s) for s in (0, 1, 2)]
        alone_gens = [torch.Generator().manual_seed(s) for s in (0, 1, 2)]
        together = sample_together(sampler, together_gens)
        alone = [sampler.sample(g) for g in alone_gens]
        for a, b in zip(alone, together):
            assert (b.width, b.height, len(b)) == (a.width, a.height, len(a))
            for name in ("azimuth", "elevation", "distance", "fovy"):
                assert torch.equal(getattr(a, name), getattr(b, name)), name
            assert torch.allclose(a.viewmats, b.viewmats, atol=1e-6) and torch.allclose(a.Ks, b.Ks, rtol=1e-6)
        for a, b in zip(alone_gens, together_gens):
            assert torch.equal(a.get_state(), b.get_state())  # the next draws are the same too
    multi = MultiViewOrbitSampler(CameraConfig(batch_size=4), views_per_group=4)
    pairs = zip(sample_together(multi, [torch.Generator().manual_seed(s) for s in (3, 4)]), (3, 4))
    for cams, seed in pairs:
        assert torch.equal(cams.viewmats, multi.sample(torch.Generator().manual_seed(seed)).viewmats)
