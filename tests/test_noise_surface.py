"""Surface-attached noise (fsd_gs/noise/surface.py) and the expected-depth render it needs.

Scenes are a "textured sphere": flat, nearly opaque Gaussians with random colours tiling a sphere of
radius 0.6 at the origin, seen by orbit cameras at distance 2.5. Measured numbers are printed (run
with ``-s``); docs/surface-noise.md records them.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from fsd_gs.camera import Cameras, orbit_cameras
from fsd_gs.errors import UserError
from fsd_gs.gaussians import Gaussians
from fsd_gs.noise import NoiseConfig, build_noise
from fsd_gs.noise.surface import SurfaceNoise
from fsd_gs.render import RenderConfig, render

RADIUS = 0.6


# -- scene helpers -----------------------------------------------------------------------------------
def sphere_gaussians(n: int, radius: float = RADIUS, seed: int = 0) -> Gaussians:
    """n flat Gaussians (Fibonacci points, normal-aligned, 98% opaque, random colours) on a sphere."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    polar = torch.acos(1 - 2 * i / n)
    az = math.pi * (1 + 5**0.5) * i
    normal = torch.stack([torch.cos(az) * torch.sin(polar), torch.sin(az) * torch.sin(polar), torch.cos(polar)], -1).float()
    quats = F.normalize(torch.stack([1 + normal[:, 2], -normal[:, 1], normal[:, 0], torch.zeros(n)], -1), dim=-1)
    spacing = math.sqrt(4 * math.pi * radius**2 / n)
    params = {
        "means": normal * radius,
        "quats": quats,  # rotates +z onto the normal: the thin axis is the normal
        "scales": torch.log(torch.tensor([spacing, spacing, 0.05 * spacing])).expand(n, 3).clone(),
        "opacities": torch.full((n,), 4.0),
        "sh0": torch.randn(n, 1, 3, generator=torch.Generator().manual_seed(seed)),
        "shN": torch.zeros(n, 0, 3),
    }
    return Gaussians(params, 0)


def cameras(azimuth: list[float], elevation: list[float], size: int, fovy: float = 50.0) -> Cameras:
    b = len(azimuth)
    return orbit_cameras(
        torch.tensor(azimuth), torch.tensor(elevation), torch.full((b,), 2.5), torch.full((b,), fovy), size, size
    )


def render_depth(g: Gaussians, cams: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = render(g, cams, torch.ones(3), with_depth=True)
    return out.alpha, out.depth


@pytest.fixture(scope="module")
def sphere_views():
    """8 views of the sphere at 64x64 (the shapes prior's render size), alpha and depth [8,64,64,1]."""
    g = sphere_gaussians(4000)
    gen = torch.Generator().manual_seed(5)
    az = (torch.rand(8, generator=gen) * 360 - 180).tolist()
    el = (torch.rand(8, generator=gen) * 70 - 10).tolist()
    cams = cameras(az, el, 64)
    alpha, depth = render_depth(g, cams)
    return cams, alpha, depth


def surface(shape=(3, 64, 64), seed=0, **kw) -> SurfaceNoise:
    kw.setdefault("texel_size", 0.02)
    kw.setdefault("subsamples", 4)
    noise = build_noise(NoiseConfig(kind="surface", **kw), shape, seed=seed)
    assert isinstance(noise, SurfaceNoise)
    return noise


# -- expected depth from the renderer ------------------------------------------------------------------
def _one(mean: list[float], opacity: float, scale: float = 0.1, flat: bool = False) -> dict[str, torch.Tensor]:
    scales = [scale, scale, scale * (0.01 if flat else 1.0)]
    return {
        "means": torch.tensor([mean]),
        "scales": torch.log(torch.tensor([scales])),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        "opacities": torch.tensor([math.log(opacity / (1 - opacity))]),
        "sh0": torch.zeros(1, 1, 3),
        "shN": torch.zeros(1, 0, 3),
    }


def _cat(*parts: dict[str, torch.Tensor]) -> Gaussians:
    return Gaussians({k: torch.cat([p[k] for p in parts]) for k in parts[0]}, 0)


def test_reference_depth_of_one_gaussian_is_its_depth() -> None:
    cams = cameras([0.0], [0.0], 32)  # at (2.5, 0, 0) looking down -x
    with torch.no_grad():
        out = render(_cat(_one([0.3, 0.1, -0.05], 0.99)), cams, torch.ones(3), with_depth=True)
    assert out.depth is not None and out.depth.shape == (1, 32, 32, 1)
    drawn = out.alpha[..., 0] > 0
    assert 50 < int(drawn.sum()) < 32 * 32
    torch.testing.assert_close(out.depth[..., 0][drawn], torch.full((int(drawn.sum()),), 2.2), rtol=0, atol=1e-5)
    assert float(out.depth[..., 0][~drawn].abs().max()) == 0.0  # gsplat's ED: 0 / max(alpha, 1e-10)
    assert render(_cat(_one([0.0, 0.0, 0.0], 0.9)), cams, torch.ones(3)).depth is None


def test_reference_depth_of_a_flat_plane_and_its_gradient() -> None:
    # A plane x = 0.4 tiled by flat Gaussians (thin along x), facing the camera at (2.5, 0, 0): depth 2.1.
    ys = torch.linspace(-0.5, 0.5, 21)
    grid = torch.stack(torch.meshgrid(ys, ys, indexing="ij"), -1).reshape(-1, 2)
    n = grid.shape[0]
    params = {
        "means": torch.cat([torch.full((n, 1), 0.4), grid], 1),
        "scales": torch.log(torch.tensor([[0.0005, 0.05, 0.05]])).expand(n, 3).clone(),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(n, 4).clone(),
        "opacities": torch.full((n,), 3.0),
        "sh0": torch.rand(n, 1, 3),
        "shN": torch.zeros(n, 0, 3),
    }
    g = Gaussians(params, 0)
    out = render(g, cameras([0.0], [0.0], 32), torch.ones(3), with_depth=True)
    inside = out.alpha.detach()[0, 8:24, 8:24, 0]
    assert float(inside.min()) > 0.99
    torch.testing.assert_close(out.depth.detach()[0, 8:24, 8:24, 0], torch.full((16, 16), 2.1), rtol=0, atol=1e-5)
    out.depth[0, 8:24, 8:24].sum().backward()  # depth is differentiable w.r.t. the means (their x is the depth)
    assert float(g.params["means"].grad[:, 0].abs().sum()) > 0


def test_reference_depth_is_normalised_by_alpha() -> None:
    # Two Gaussians on the optical axis: ED = (a1 z1 + a2 (1 - a1) z2) / (a1 + a2 (1 - a1)), with the alphas
    # a1, a2 each one has alone; at 50% opacity the sum of weights is well below 1, so this checks the division.
    cams = cameras([0.0], [0.0], 16)
    front, back = _one([0.5, 0.0, 0.0], 0.5), _one([-0.3, 0.0, 0.0], 0.5)
    a1 = render(_cat(front), cams, torch.ones(3)).alpha.detach()[..., 0]
    a2 = render(_cat(back), cams, torch.ones(3)).alpha.detach()[..., 0]
    both = render(_cat(front, back), cams, torch.ones(3), with_depth=True)
    w1, w2 = a1, a2 * (1 - a1)
    expected = (w1 * 2.0 + w2 * 2.8) / (w1 + w2)
    drawn = (w1 + w2) > 0.05
    assert float(both.alpha.detach()[..., 0][drawn].max()) < 0.9
    torch.testing.assert_close(both.depth.detach()[..., 0][drawn], expected[drawn], rtol=0, atol=1e-4)


@pytest.mark.cuda
def test_gsplat_depth_matches_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    n = 2000
    direction = F.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    opac = 0.05 + 0.9 * torch.rand(n, generator=gen)
    params = {
        "means": direction * 0.6 * torch.rand(n, 1, generator=gen) ** (1 / 3),
        "scales": torch.log(0.01 + 0.04 * torch.rand(n, 3, generator=gen)),
        "quats": torch.randn(n, 4, generator=gen),
        "opacities": torch.log(opac / (1 - opac)),
        "sh0": torch.randn(n, 1, 3, generator=gen),
        "shN": torch.zeros(n, 0, 3),
    }
    cams = cameras([30.0, 200.0], [15.0, 40.0], 128).to("cuda")
    outs = {}
    for backend in ("gsplat", "reference"):
        g = Gaussians({k: v.clone().cuda() for k, v in params.items()}, 0)
        out = render(g, cams, torch.ones(3, device="cuda"), RenderConfig(backend=backend), with_depth=True)
        out.depth.sum().backward()
        outs[backend] = (out.alpha.detach(), out.depth.detach(), g.params["means"].grad.detach())
    (a_gs, d_gs, g_gs), (a_ref, d_ref, g_ref) = outs["gsplat"], outs["reference"]
    seen = a_ref[..., 0] > 0.05  # where ED is well conditioned (it divides by alpha)
    err = (d_gs - d_ref)[..., 0][seen].abs()
    grad_rel = float((g_gs - g_ref).norm() / g_ref.norm())
    print(
        f"depth: max abs {float(err.max()):.2e}, mean abs {float(err.mean()):.2e} over {int(seen.sum())} pixels; "
        f"d sum(depth)/d means rel L2 {grad_rel:.2e}"
    )
    assert float(err.mean()) < 1e-4 and float((err > 1e-2).float().mean()) < 1e-3
    assert float(d_gs[a_gs == 0].abs().max()) == 0.0 and float(d_ref[a_ref == 0].abs().max()) == 0.0
    assert grad_rel < 1e-2


# -- per-view statistics --------------------------------------------------------------------------------
def test_each_view_is_iid_standard_normal(sphere_views) -> None:
    cams, alpha, depth = sphere_views
    values, right, down = [], [], []
    for seed in range(4):
        noise = surface(seed=seed)
        eps = noise.sample(cams, alpha, depth)
        fg = noise.last_mask[:, 0] & (noise.last_texels[:, 0] > 0)  # [B,h,w] pixels that got surface noise
        assert float(fg.float().mean()) > 0.15
        values.append(eps.permute(1, 0, 2, 3)[:, fg].reshape(-1))
        pair_x = fg[:, :, 1:] & fg[:, :, :-1]
        pair_y = fg[:, 1:, :] & fg[:, :-1, :]
        right.append(
            torch.stack(
                [
                    eps[..., 1:].permute(1, 0, 2, 3)[:, pair_x].reshape(-1),
                    eps[..., :-1].permute(1, 0, 2, 3)[:, pair_x].reshape(-1),
                ]
            )
        )
        down.append(
            torch.stack(
                [
                    eps[:, :, 1:].permute(1, 0, 2, 3)[:, pair_y].reshape(-1),
                    eps[:, :, :-1].permute(1, 0, 2, 3)[:, pair_y].reshape(-1),
                ]
            )
        )
        orphans = int((noise.last_mask & (noise.last_texels == 0)).sum())
        assert orphans <= 0.01 * int(noise.last_mask.sum())  # foreground pixels that own no texel are rare
    v = torch.cat(values)
    corr_x = float(torch.corrcoef(torch.cat(right, 1))[0, 1])
    corr_y = float(torch.corrcoef(torch.cat(down, 1))[0, 1])
    print(
        f"surface noise per view: {v.numel()} values, mean {float(v.mean()):+.4f}, std {float(v.std()):.4f}, "
        f"neighbour corr x {corr_x:+.4f} y {corr_y:+.4f}"
    )
    assert abs(float(v.mean())) < 0.05 and abs(float(v.std()) - 1.0) < 0.05
    assert abs(corr_x) < 0.1 and abs(corr_y) < 0.1


def test_texels_own_disjoint_sets_and_sums_are_exact(sphere_views) -> None:
    cams, alpha, depth = sphere_views
    noise = surface()
    cams1, alpha1, depth1 = cams[0], alpha[:1], depth[:1]
    det, count = noise.surface_noise(cams1, alpha1, depth1)
    points, view, latent = noise.surface_samples(cams1, alpha1, depth1)
    keys = noise.texel_keys(points)
    distinct = torch.unique(keys)
    assert int(count.sum()) == distinct.numel()  # every distinct texel is owned by exactly one latent pixel
    # Recompute one pixel by hand: the texels whose samples' mean latent position falls in it.
    i, j = (int(x) for x in torch.nonzero(count[0, 0] == count[0, 0].max())[0])
    owned = [k for k in distinct.tolist() if tuple(torch.floor(latent[keys == k].mean(0)).long().tolist()) == (i, j)]
    vals = noise.texel_values(torch.tensor(owned))
    torch.testing.assert_close(det[0, :, i, j], vals.sum(0) / math.sqrt(len(owned)))


def test_texel_values_are_standard_normal_and_device_free() -> None:
    noise = surface(seed=7)
    pts = torch.rand(200_000, 3, generator=torch.Generator().manual_seed(0)) * 40 - 20  # ~ distinct texels
    v = noise.field(pts)
    assert v.shape == (200_000, 3)
    assert abs(float(v.mean())) < 0.01 and abs(float(v.std()) - 1.0) < 0.01
    assert abs(float(torch.corrcoef(v.T)[0, 1])) < 0.01  # channels are independent
    # Points in one texel share its value; the field is a function of the seed only.
    inside = torch.tensor([[0.001, 0.002, 0.003], [0.019, 0.011, 0.0199]])
    assert torch.equal(noise.field(inside)[0], noise.field(inside)[1])
    assert torch.equal(surface(seed=7).field(pts[:100]), v[:100])
    assert not torch.equal(surface(seed=8).field(pts[:100]), v[:100])


# -- 3D consistency ---------------------------------------------------------------------------------------
def _centre_points(cams: Cameras, alpha: torch.Tensor, depth: torch.Tensor, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World points seen by the centres of the h x h latent pixels of one view [h,h,3], and where that is the surface."""
    size = alpha.shape[1]
    c = (torch.arange(h, dtype=torch.float64) + 0.5) * (size / h)
    y, x = torch.meshgrid(c, c, indexing="ij")
    grid = torch.stack([2 * x / size - 1, 2 * y / size - 1], -1)[None].float()
    a = alpha[..., 0][None].float()
    picked = F.grid_sample(torch.cat([a * depth[..., 0][None], a], 1), grid, align_corners=False)[0].double()
    z = picked[0] / picked[1].clamp_min(1e-10)
    K, cam_to_world = cams.Ks[0].double(), torch.linalg.inv(cams.viewmats[0].double())
    cam = torch.stack([(x - K[0, 2]) / K[0, 0] * z, (y - K[1, 2]) / K[1, 1] * z, z], -1)
    return cam @ cam_to_world[:3, :3].T + cam_to_world[:3, 3], picked[1] >= 0.5


def matched_pairs(cams_a, alpha_a, depth_a, cams_b, depth_b, h: int, radius: float):
    """Latent pixels (of A, of B) that see the same surface point: A's centre point, projected into B, is
    visible there (B's depth agrees within 0.02) and lies within ``radius`` latent pixels (max-norm) of the
    centre of B's latent pixel. Returns index tensors (ia, ja, ib, jb)."""
    points, on_surface = _centre_points(cams_a, alpha_a, depth_a, h)
    view = cams_b.viewmats[0].double()
    K = cams_b.Ks[0].double()
    cam = points @ view[:3, :3].T + view[:3, 3]
    k = alpha_a.shape[1] / h
    u = (K[0, 0] * cam[..., 0] / cam[..., 2] + K[0, 2]) / k
    v = (K[1, 1] * cam[..., 1] / cam[..., 2] + K[1, 2]) / k
    ib, jb = torch.floor(v).long(), torch.floor(u).long()
    inside = (ib >= 0) & (ib < h) & (jb >= 0) & (jb < h)
    ib, jb = ib.clamp(0, h - 1), jb.clamp(0, h - 1)
    seen_z = depth_b[0, ..., 0][(ib.double() + 0.5).mul(k).long(), (jb.double() + 0.5).mul(k).long()].double()
    visible = (seen_z - cam[..., 2]).abs() < 0.02
    offset = torch.maximum((v - ib - 0.5).abs(), (u - jb - 0.5).abs())
    ia, ja = torch.nonzero(on_surface & inside & visible & (offset <= radius), as_tuple=True)
    return ia, ja, ib[ia, ja], jb[ia, ja]


def pair_correlation(eps_a: torch.Tensor, eps_b: torch.Tensor, pairs) -> float:
    ia, ja, ib, jb = pairs
    return float(torch.corrcoef(torch.stack([eps_a[0][:, ia, ja].reshape(-1), eps_b[0][:, ib, jb].reshape(-1)]))[0, 1])


def test_same_surface_point_gets_the_same_noise_from_two_cameras() -> None:
    h = 64
    g = sphere_gaussians(16000)
    cams_a, cams_b = cameras([0.0], [10.0], 128), cameras([15.0], [10.0], 128)
    (alpha_a, depth_a), (alpha_b, depth_b) = render_depth(g, cams_a), render_depth(g, cams_b)
    figures = {}
    for radius in (0.5, 0.15):
        pairs = matched_pairs(cams_a, alpha_a, depth_a, cams_b, depth_b, h, radius)
        xs, ys = [], []
        for seed in range(4):
            noise = surface((3, h, h), seed=seed, texel_size=0.015, subsamples=8)
            ea, eb = noise.sample(cams_a, alpha_a, depth_a), noise.sample(cams_b, alpha_b, depth_b)
            xs.append(ea[0][:, pairs[0], pairs[1]].reshape(-1))
            ys.append(eb[0][:, pairs[2], pairs[3]].reshape(-1))
        figures[radius] = (float(torch.corrcoef(torch.stack([torch.cat(xs), torch.cat(ys)]))[0, 1]), pairs[0].numel())
    world = build_noise(NoiseConfig(kind="worldmap"), (3, h, h), seed=0)
    pairs = matched_pairs(cams_a, alpha_a, depth_a, cams_b, depth_b, h, 0.5)
    world_corr = pair_correlation(world.sample(cams_a, alpha_a), world.sample(cams_b, alpha_b), pairs)
    print(
        f"15 deg apart, 128 px render, 3x64x64: surface noise corr {figures[0.15][0]:.3f} over {figures[0.15][1]} "
        f"pixel pairs whose centres see the same point (within 0.15 px), {figures[0.5][0]:.3f} over {figures[0.5][1]} "
        f"nearest-pixel pairs (footprint-overlap bound 0.5625); world map {world_corr:.3f} on the nearest-pixel pairs"
    )
    assert figures[0.15][1] >= 60 and figures[0.5][1] >= 500
    assert figures[0.15][0] >= 0.7
    assert figures[0.5][0] >= 0.4


# -- determinism, batching, beta, devices ---------------------------------------------------------------
def test_deterministic_and_batched_equals_per_view(sphere_views) -> None:
    cams, alpha, depth = sphere_views
    batched = surface(seed=3).sample(cams, alpha, depth)
    again = surface(seed=3).sample(cams, alpha, depth)
    assert torch.equal(batched, again)
    assert not torch.equal(batched, surface(seed=4).sample(cams, alpha, depth))
    single = torch.cat([surface(seed=3).sample(cams[i], alpha[i : i + 1], depth[i : i + 1]) for i in range(len(cams))])
    assert torch.equal(batched, single)


def test_beta_blend_keeps_standard_normal(sphere_views) -> None:
    cams, alpha, depth = sphere_views
    det = surface(seed=1).sample(cams, alpha, depth)
    noise = surface(seed=1, beta=0.3)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([noise.sample(cams, alpha, depth, gen) for _ in range(6)])  # [6,B,C,h,w]
    assert torch.equal(noise.last_deterministic, det)
    fresh = (draws - math.sqrt(0.3) * det) / math.sqrt(0.7)
    assert abs(float(fresh.mean())) < 0.02 and abs(float(fresh.std()) - 1.0) < 0.02
    assert abs(float(draws.mean())) < 0.05 and abs(float(draws.std()) - 1.0) < 0.05
    assert not torch.equal(draws[0], draws[1])


@pytest.mark.cuda
def test_cpu_and_cuda_agree(sphere_views) -> None:
    cams, alpha, depth = sphere_views
    cpu = surface(seed=2, beta=1.0).sample(cams, alpha, depth)
    gpu_noise = build_noise(NoiseConfig(kind="surface", texel_size=0.02, subsamples=4), (3, 64, 64), seed=2, device="cuda")
    gpu = gpu_noise.sample(cams.to("cuda"), alpha.cuda(), depth.cuda()).cpu()
    close = (gpu - cpu).abs().amax(1) < 1e-4  # [B,h,w]
    print(
        f"CPU vs CUDA: {float(close.float().mean()):.5f} of latent pixels within 1e-4, "
        f"max abs diff {float((gpu - cpu).abs().max()):.2e}"
    )
    assert float(close.float().mean()) > 0.995  # a sample on a texel boundary may round the other way


# -- interface and errors ------------------------------------------------------------------------------------
def test_interface_and_errors(sphere_views) -> None:
    cams, alpha, depth = sphere_views
    noise = surface()
    assert noise.kind == "surface" and noise.needs_depth and noise.world_map is None
    with pytest.raises(UserError, match="depth"):
        noise.sample(cams, alpha, None)
    with pytest.raises(UserError, match="depth"):
        noise(cams.azimuth, cams.elevation, alpha)  # the angle-only interface cannot serve surface noise
    with pytest.raises(UserError, match="cameras"):
        noise.sample(cams.with_resolution(32, 32), alpha, depth)
    for field, value in (("texel_size", 0.0), ("subsamples", 0), ("subsamples", 64)):
        with pytest.raises(UserError):
            NoiseConfig(kind="surface", **{field: value}).validate()
    with pytest.raises(UserError, match="surface"):
        NoiseConfig(kind="pink").validate()  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["shapes-fsd-surface", "fsd-sd21-surface"])
def test_presets_select_surface_noise(name: str) -> None:
    from fsd_gs.config import presets_dir

    data = yaml.safe_load((presets_dir() / f"{name}.yaml").read_text())
    cfg = NoiseConfig(**data["noise"])
    cfg.validate()
    assert cfg.kind == "surface"
