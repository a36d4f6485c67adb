"""Noise functions eps(c) (docs/fsd.md sec. 3): distribution, world-map geometry, masks, blending, seeding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fsd_gs.errors import UserError
from fsd_gs.noise import (
    NOISE_KINDS,
    NOISE_PRESETS,
    ConstantNoise,
    NoiseConfig,
    RandomNoise,
    WorldMapNoise,
    build_noise,
)

SHAPE = (4, 16, 16)  # C, h, w
RES = 32  # render resolution: 2 x 2 image pixels per noise pixel


def worldmap(seed: int = 0, **kw) -> WorldMapNoise:
    noise = build_noise(NoiseConfig(kind="worldmap", **kw), SHAPE, seed=seed)
    assert isinstance(noise, WorldMapNoise)
    return noise


def ones_alpha(batch: int, value: float = 1.0, res: int = RES) -> torch.Tensor:
    return torch.full((batch, res, res, 1), value)


def column_center(noise: WorldMapNoise, col: int) -> float:
    """An azimuth (deg) whose window starts exactly at column ``col`` (mid-column: no floor ambiguity)."""
    return (col + 0.5) * 360.0 / noise.map_size[1]


def row_center(noise: WorldMapNoise, row: int) -> float:
    """An elevation (deg) whose window starts at row ``row``."""
    return 90.0 - (row + 0.5) * 180.0 / noise.map_size[0]


def assert_standard_normal(x: torch.Tensor, sigmas: float = 5.0) -> None:
    """Mean, variance and kurtosis within ``sigmas`` standard errors of N(0, 1) for i.i.d. samples."""
    x = x.double().flatten()
    n = x.numel()
    mean, var = x.mean(), x.var()
    kurt = ((x - mean) ** 4).mean() / var**2
    assert abs(mean) < sigmas / n**0.5, f"mean {mean:.4f} (n={n})"
    assert abs(var - 1) < sigmas * (2 / n) ** 0.5, f"variance {var:.4f} (n={n})"
    assert abs(kurt - 3) < sigmas * (24 / n) ** 0.5, f"kurtosis {kurt:.4f} (n={n})"


# -- geometry -------------------------------------------------------------------------------------
def test_map_size_and_window_origin_follow_the_formulas():
    noise = worldmap()
    c, h, w = SHAPE
    assert noise.map_size == (16, 32)  # H_map = round(180/180 h), W_map = round(360/180 w)
    assert noise.full_map.shape == (c, 16 + h, 32 + w)
    assert noise.world_map.shape == (c, 16 + h, 32)
    assert noise.window_size == (h, w)
    assert noise.window_origin(0.0, 90.0) == (0, 0)
    assert noise.window_origin(0.0, -90.0) == (16, 0)  # polar angle 180 deg: last row start H_map
    assert noise.window_origin(0.0, 0.0) == (8, 0)
    assert noise.window_origin(90.0, 0.0) == (8, 8)
    assert noise.window_origin(-90.0, 0.0) == (8, 24)  # negative azimuths wrap
    assert noise.window_origin(359.99, 45.0) == (4, 31)
    assert noise.window_origin(10.0, 120.0)[0] == 0 and noise.window_origin(10.0, -135.0)[0] == 16  # clamped
    small = worldmap(theta_deg=45.0)
    assert small.map_size == (64, 128)


def test_nearby_azimuths_see_shifted_copies_of_one_window():
    noise = worldmap()
    el = row_center(noise, 5)
    base = noise.windows([column_center(noise, 3)], [el])[0]
    for k in (1, 2, 5):
        moved = noise.windows([column_center(noise, 3 + k)], [el])[0]
        assert torch.equal(moved[:, :, : SHAPE[2] - k], base[:, :, k:])
        assert not torch.equal(moved, base)
    up = noise.windows([column_center(noise, 3)], [row_center(noise, 7)])[0]
    assert torch.equal(up[:, : SHAPE[1] - 2], base[:, 2:])


def test_periodic_in_azimuth_and_the_wrap_window_uses_the_copied_columns():
    noise = worldmap()
    az = torch.tensor([10.0, 123.4, -170.0, 355.0])
    el = torch.tensor([0.0, 30.0, -20.0, 60.0])
    for turns in (1, -1, 3):
        assert torch.equal(noise.windows(az + 360.0 * turns, el), noise.windows(az, el))
    h_map, w_map = noise.map_size
    assert torch.equal(noise.full_map[:, :, w_map:], noise.full_map[:, :, : SHAPE[2]])
    for col in (w_map - 1, w_map - 5, w_map - SHAPE[2] + 1):
        row0, col0 = noise.window_origin(column_center(noise, col), row_center(noise, 3))
        assert (row0, col0) == (3, col)
        window = noise.windows([column_center(noise, col)], [row_center(noise, 3)])[0]
        cols = (col0 + torch.arange(SHAPE[2])) % w_map
        assert torch.equal(window, noise.world_map[:, row0 : row0 + SHAPE[1]][:, :, cols])


def test_opposite_views_do_not_share_the_map():
    """No single map pixel reaches the image centre from every view: the front and back windows are disjoint."""
    noise = worldmap()
    front = noise.windows([column_center(noise, 0)], [0.0])[0]
    back = noise.windows([column_center(noise, noise.map_size[1] // 2)], [0.0])[0]
    assert not torch.isin(front, back).any()


# -- distribution ---------------------------------------------------------------------------------
def camera_free_kinds() -> list[str]:
    """The registered kinds whose noise needs only the camera angles and opacity (not the rendered depth)."""
    return [kind for kind in NOISE_KINDS if not build_noise(NoiseConfig(kind=kind), SHAPE, seed=0).needs_depth]


@pytest.mark.parametrize("kind, beta", [("worldmap", 0.3), *[(kind, 1.0) for kind in camera_free_kinds()]])
def test_each_view_is_standard_normal(kind, beta):
    """Per view, elements are N(0, 1); pooled over many seeds (each a fresh map) and half-masked renders."""
    alpha = torch.zeros(2, RES, RES, 1)
    alpha[:, :, : RES // 2] = 1.0  # left half foreground
    g = torch.Generator().manual_seed(0)
    samples = []
    for seed in range(40):
        noise = build_noise(NoiseConfig(kind=kind, beta=beta), SHAPE, seed=seed)
        az = torch.rand(2, generator=g) * 360 - 180
        el = torch.rand(2, generator=g) * 120 - 60
        eps = noise(az, el, alpha, g)
        assert eps.shape == (2, *SHAPE) and eps.dtype == torch.float32
        samples.append(eps[0])  # one view per map: the samples are independent
    assert_standard_normal(torch.stack(samples))


def test_one_window_is_standard_normal_on_a_large_map():
    noise = build_noise(NoiseConfig(kind="worldmap"), (4, 64, 64), seed=3)
    assert_standard_normal(noise.windows([12.0], [20.0])[0])
    assert_standard_normal(noise.world_map)


# -- masks and blending ---------------------------------------------------------------------------
def test_background_noise_outside_the_silhouette():
    noise = worldmap()
    az, el = torch.tensor([0.0, 90.0, 200.0]), torch.tensor([0.0, 30.0, -10.0])
    empty = noise(az, el, ones_alpha(3, 0.0))
    assert torch.equal(empty, noise.background.expand(3, -1, -1, -1))
    full = noise(az, el, ones_alpha(3, 1.0))
    assert torch.equal(full, noise.windows(az, el))
    # pooled opacity exactly at the threshold counts as foreground; below does not
    alpha = torch.zeros(1, RES, RES, 1)
    alpha[0, 0::2, :, 0] = 1.0  # every other image row: each 2x2 pool sees 0.5
    alpha[0, :, RES // 2 :, 0] = 0.49
    eps = noise([0.0], [0.0], alpha)
    mask = noise.last_mask[0, 0]
    assert mask[:, : SHAPE[2] // 2].all() and not mask[:, SHAPE[2] // 2 :].any()
    window = noise.windows([0.0], [0.0])[0]
    assert torch.equal(eps[0][:, :, :8], window[:, :, :8])
    assert torch.equal(eps[0][:, :, 8:], noise.background[:, :, 8:])
    assert torch.equal(noise.last_deterministic, eps)


def test_beta_one_is_deterministic_and_beta_zero_is_fresh_and_camera_independent():
    det = worldmap(beta=1.0)
    g = torch.Generator().manual_seed(1)
    a = det([30.0], [10.0], ones_alpha(1), g)
    b = det([30.0], [10.0], ones_alpha(1), g)
    assert torch.equal(a, b)
    fresh = worldmap(beta=0.0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x = fresh([30.0], [10.0], ones_alpha(1), g1)
    y = fresh([200.0], [-40.0], ones_alpha(1, 0.0), g2)  # another camera, another mask, same generator state
    assert torch.equal(x, y)
    assert not torch.equal(x, fresh([30.0], [10.0], ones_alpha(1), g1))  # the next call draws new noise


def test_blend_mixes_deterministic_and_fresh_noise_exactly():
    beta = 0.36
    noise = worldmap(beta=beta)
    g = torch.Generator().manual_seed(2)
    eps = noise([45.0], [15.0], ones_alpha(1), g)
    fresh = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(eps, 0.6 * noise.windows([45.0], [15.0]) + 0.8 * fresh)


def test_every_view_of_a_batch_gets_its_own_window_and_mask():
    noise = worldmap()
    alpha = torch.stack([ones_alpha(1, 1.0)[0], ones_alpha(1, 0.0)[0], ones_alpha(1, 1.0)[0]])
    az, el = torch.tensor([0.0, 0.0, 100.0]), torch.tensor([0.0, 0.0, 0.0])
    eps = noise(az, el, alpha)
    for i in range(3):
        assert torch.equal(eps[i], noise(az[i : i + 1], el[i : i + 1], alpha[i : i + 1])[0])
    assert torch.equal(eps[1], noise.background) and not torch.equal(eps[0], eps[2])


def test_constant_and_random_kinds():
    const = build_noise(NoiseConfig(kind="constant"), SHAPE, seed=0)
    assert isinstance(const, ConstantNoise) and const.world_map is None and const.window_origin(30.0, 10.0) is None
    eps = const([0.0, 180.0], [0.0, 45.0], ones_alpha(2, 0.0))
    assert torch.equal(eps[0], const.image) and torch.equal(eps[1], const.image)
    rand = build_noise(NoiseConfig(kind="random"), SHAPE, seed=0)
    assert isinstance(rand, RandomNoise)
    g = torch.Generator().manual_seed(0)
    a, b = rand([0.0], [0.0], ones_alpha(1), g), rand([0.0], [0.0], ones_alpha(1), g)
    assert not torch.equal(a, b)
    assert rand([0.0], [0.0]).shape == (1, *SHAPE)  # alpha is optional


# -- seeding and validation -----------------------------------------------------------------------
def test_same_seed_same_noise_different_seed_different_noise():
    a, b, c = worldmap(seed=4), worldmap(seed=4), worldmap(seed=5)
    assert torch.equal(a.full_map, b.full_map) and torch.equal(a.background, b.background)
    assert not torch.equal(a.full_map, c.full_map) and not torch.equal(a.background, c.background)
    d = build_noise(dataclasses.replace(NoiseConfig(), seed_offset=7), SHAPE, seed=4)
    assert not torch.equal(a.full_map, d.full_map)


def test_output_follows_alpha_device_and_float32():
    noise = worldmap(beta=0.5)
    eps = noise(torch.tensor([1.0]), torch.tensor([2.0]), ones_alpha(1).double(), torch.Generator().manual_seed(0))
    assert eps.dtype == torch.float32 and eps.device == torch.device("cpu")


def test_render_resolution_must_be_a_multiple_of_the_noise_resolution():
    noise = worldmap()
    with pytest.raises(UserError, match="multiple"):
        noise([0.0], [0.0], torch.ones(1, 24, 32, 1))
    with pytest.raises(UserError, match="multiple"):
        build_noise(NoiseConfig(kind="random"), SHAPE, seed=0)([0.0], [0.0], torch.ones(1, 32, 40, 1))
    noise([0.0], [0.0], torch.ones(1, 16, 64, 1))  # 1x and 4x pooling are fine


@pytest.mark.parametrize(
    "field, value",
    [
        ("beta", -0.1),
        ("beta", 1.5),
        ("theta_deg", 0.0),
        ("theta_deg", 361.0),
        ("mask_threshold", 2.0),
        ("kind", "pink"),
    ],
)
def test_bad_options_are_user_errors(field, value):
    cfg = dataclasses.replace(NoiseConfig(), **{field: value})
    with pytest.raises(UserError) as info:
        build_noise(cfg, SHAPE, seed=0)
    assert "\n" not in str(info.value)


def test_tiny_theta_refuses_a_huge_map():
    with pytest.raises(UserError, match="theta"):
        build_noise(NoiseConfig(theta_deg=0.05), (4, 64, 64), seed=0)


def test_presets():
    assert NOISE_PRESETS["fsd"].kind == "worldmap" and NOISE_PRESETS["sds"].kind == "random"
    assert NoiseConfig().kind == "worldmap" and NoiseConfig().beta == 1.0 and NoiseConfig().theta_deg == 180.0


class _Cams:
    """The angles of a batch of views, as :meth:`NoiseFunction.sample` reads them from a Cameras."""

    def __init__(self, azimuth: list[float], elevation: list[float], device: str = "cpu") -> None:
        self.azimuth = torch.tensor(azimuth, device=device)
        self.elevation = torch.tensor(elevation, device=device)


def _together_and_alone(functions, cams, alphas, device: str = "cpu", batched: bool = False):
    """(sample_together's eps, each function's own sample of the same views, with twin generators); ``batched``: the
    together call must not fall back to each function's own call."""
    from fsd_gs.noise.base import sample_together

    def gens():
        return [torch.Generator(device=device).manual_seed(10 + k) for k in range(len(functions))]

    calls = []
    for f in functions:  # count the functions' own calls (instance attribute: this test's functions only)
        f.sample = lambda *a, _f=f, **k: calls.append(_f) or type(_f).sample(_f, *a, **k)
    together = sample_together(functions, cams, alphas, [None] * len(functions), gens())
    assert not (batched and calls), "sample_together fell back to one call per function"
    masks = [f.last_mask for f in functions]
    alone = [f.sample(c, a, None, g) for f, c, a, g in zip(functions, cams, alphas, gens())]
    for f, m in zip(functions, masks):
        assert (m is None and f.last_mask is None) or torch.equal(m, f.last_mask)
    return together, alone


def _views(device: str = "cpu"):
    """Three assets' views (1, 2 and 3 of them), some opacity partial or empty."""
    angles = [([10.0], [5.0]), ([100.0, 250.0], [0.0, -20.0]), ([0.0, 180.0, 359.0], [30.0, 0.0, 60.0])]
    cams = [_Cams(azimuth, elevation, device) for azimuth, elevation in angles]
    alphas = [ones_alpha(1), torch.cat([ones_alpha(1, 0.3), ones_alpha(1)]), ones_alpha(3)]
    alphas[2][1, :, RES // 2 :] = 0.0
    return cams, [a.to(device) for a in alphas]


@pytest.mark.parametrize("beta", [1.0, 0.36])
def test_world_maps_of_several_seeds_sampled_together_equal_each_alone(beta):
    """The grouped step's one noise call for its seeds: each seed's windows, silhouette, background and fresh noise
    (from its own generator) exactly as its own call; other kinds, or a view without opacity, are sampled one by one."""
    functions = [worldmap(seed, beta=beta) for seed in (0, 1, 2)]
    cams, alphas = _views()
    together, alone = _together_and_alone(functions, cams, alphas, batched=True)
    assert [e.shape[0] for e in together] == [1, 2, 3]
    for a, b in zip(together, alone):
        assert torch.equal(a, b)
    assert not torch.equal(together[0][0], together[1][0])  # the seeds' maps differ
    mixed = [worldmap(0, beta=beta), build_noise(NoiseConfig(kind="random"), SHAPE, seed=1), worldmap(2, theta_deg=90.0)]
    for a, b in zip(*_together_and_alone(mixed, cams, alphas)):
        assert torch.equal(a, b)
    for a, b in zip(*_together_and_alone(functions, cams, [alphas[0], None, alphas[2]])):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_world_maps_sampled_together_on_cuda_equal_each_alone():
    functions = [build_noise(NoiseConfig(kind="worldmap", beta=0.5), SHAPE, seed=s, device="cuda") for s in (0, 1, 2)]
    together, alone = _together_and_alone(functions, *_views("cuda"), device="cuda", batched=True)
    assert all(e.device.type == "cuda" for e in together)
    for a, b in zip(together, alone):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_cuda_noise_matches_the_cpu_map_and_stays_on_the_gpu():
    cpu = build_noise(NoiseConfig(kind="worldmap", beta=0.5), SHAPE, seed=2)
    gpu = build_noise(NoiseConfig(kind="worldmap", beta=0.5), SHAPE, seed=2, device="cuda")
    assert torch.equal(gpu.full_map.cpu(), cpu.full_map) and torch.equal(gpu.background.cpu(), cpu.background)
    alpha = ones_alpha(3).cuda()
    alpha[1] = 0.0
    az, el = torch.tensor([0.0, 90.0, 200.0]), torch.tensor([0.0, 30.0, -10.0])
    eps = gpu(az, el, alpha, torch.Generator(device="cuda").manual_seed(0))
    assert eps.device.type == "cuda" and eps.dtype == torch.float32 and eps.shape == (3, *SHAPE)
    torch.testing.assert_close(gpu.last_deterministic.cpu(), cpu._deterministic(az.double(), el.double(), alpha.cpu(), 3))
    cpu_gen_on_gpu = gpu(az, el, alpha, torch.Generator().manual_seed(0))  # a CPU generator also works
    assert cpu_gen_on_gpu.device.type == "cuda"
