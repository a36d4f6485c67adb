"""CPU tests of fsd_gs.render: the pure-torch reference against a slow brute force, gsplat's torch
projection/SH code, gradcheck, culling, background, the info contract and input validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fsd_gs.camera import Cameras, orbit_cameras
from fsd_gs.errors import UserError
from fsd_gs.gaussians import Gaussians, GaussiansConfig, num_sh_bases, random_ball_gaussians
from fsd_gs.render import RenderConfig, render
from fsd_gs.render.reference import project, rasterize_gaussians
from fsd_gs.render.sh import sh_to_color


# -- scenes -----------------------------------------------------------------------------------------
def make_params(n: int, sh_degree: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Random anisotropic Gaussians around the origin: some opaque (so pixels stop early), some faint,
    some partly or wholly off-screen."""
    g = torch.Generator().manual_seed(seed)
    direction = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    radius = 0.8 * torch.rand(n, 1, generator=g) ** 1.5
    opac = 0.02 + 0.979 * torch.rand(n, generator=g) ** 0.3
    params = {
        "means": direction * radius,
        "scales": torch.log(0.04 + 0.16 * torch.rand(n, 3, generator=g)),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.log(opac / (1 - opac)),
        "sh0": torch.randn(n, 1, 3, generator=g) * 1.2,
        "shN": torch.randn(n, num_sh_bases(sh_degree) - 1, 3, generator=g) * 0.3,
    }
    return {k: v.to(dtype) for k, v in params.items()}


def make_cameras(width: int = 23, height: int = 17, n: int = 2) -> Cameras:
    az = torch.tensor([20.0, 150.0, -70.0, 90.0])[:n]
    el = torch.tensor([10.0, 35.0, -5.0, 80.0])[:n]
    return orbit_cameras(az, el, torch.full((n,), 2.0), torch.full((n,), 50.0), width, height)


# -- the slow, obvious implementation: every pixel x every Gaussian, no tiles, no boxes -------------
def brute_force(
    params: dict[str, torch.Tensor],
    sh_degree: int,
    cams: Cameras,
    background: torch.Tensor,
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 1e10,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """gsplat's semantics written out loop by loop. Returns rgb [B,H,W,3], alpha [B,H,W,1] and the
    number of pixels that stopped early (transmittance cut-off), so tests can check it happened."""
    dtype = params["means"].dtype
    W, H = cams.width, cams.height
    means, quats = params["means"], F.normalize(params["quats"], dim=-1)
    scales, opacs = torch.exp(params["scales"]), torch.sigmoid(params["opacities"])
    coeffs = torch.cat([params["sh0"], params["shN"]], dim=1)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dtype) + 0.5, torch.arange(W, dtype=dtype) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2)
    rgbs, alphas, stopped_total = [], [], 0
    for b in range(len(cams)):
        view = cams.viewmats[b].to(dtype)
        rv, t = view[:3, :3], view[:3, 3]
        campos = torch.linalg.inv(view)[:3, 3]  # as gsplat: exact inverse, not R^T (float32 matrices)
        K = cams.Ks[b].to(dtype)
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        lim_x = ((W - cx) / fx + 0.15 * W / fx, cx / fx + 0.15 * W / fx)
        lim_y = ((H - cy) / fy + 0.15 * H / fy, cy / fy + 0.15 * H / fy)
        items = []
        for i in range(means.shape[0]):
            pc = rv @ means[i] + t
            z = pc[2]
            if not (near <= float(z.detach()) <= far):
                continue
            w, x, y, zq = quats[i]
            rot = torch.stack(
                [
                    torch.stack([1 - 2 * (y * y + zq * zq), 2 * (x * y - w * zq), 2 * (x * zq + w * y)]),
                    torch.stack([2 * (x * y + w * zq), 1 - 2 * (x * x + zq * zq), 2 * (y * zq - w * x)]),
                    torch.stack([2 * (x * zq - w * y), 2 * (y * zq + w * x), 1 - 2 * (x * x + y * y)]),
                ]
            )
            cov_c = rv @ rot @ torch.diag(scales[i] ** 2) @ rot.T @ rv.T
            tx = z * torch.clamp(pc[0] / z, -lim_x[1], lim_x[0])
            ty = z * torch.clamp(pc[1] / z, -lim_y[1], lim_y[0])
            zero = torch.zeros((), dtype=dtype)
            jac = torch.stack([torch.stack([fx / z, zero, -fx * tx / z**2]), torch.stack([zero, fy / z, -fy * ty / z**2])])
            cov2d = jac @ cov_c @ jac.T + eps2d * torch.eye(2, dtype=dtype)
            conic = torch.linalg.inv(cov2d)
            mean2d = torch.stack([fx * pc[0] / z + cx, fy * pc[1] / z + cy])
            color = sh_to_color(sh_degree, coeffs[i], means[i] - campos)
            items.append((float(z.detach()), mean2d, conic, opacs[i], color))
        items.sort(key=lambda item: item[0])
        T = torch.ones(H * W, dtype=dtype)
        done = torch.zeros(H * W, dtype=torch.bool)
        rgb = torch.zeros(H * W, 3, dtype=dtype)
        for _, mean2d, conic, opac, color in items:
            d = mean2d - pix
            sigma = 0.5 * (conic[0, 0] * d[:, 0] ** 2 + conic[1, 1] * d[:, 1] ** 2) + conic[0, 1] * d[:, 0] * d[:, 1]
            alpha = torch.clamp(opac * torch.exp(-sigma), max=0.999)
            ok = ~done & (sigma >= 0) & (alpha >= 1.0 / 255.0)
            next_T = T * (1 - alpha)
            stop = ok & (next_T <= 1e-4)
            done = done | stop
            ok = ok & ~stop
            rgb = rgb + torch.where(ok, alpha * T, torch.zeros_like(T))[:, None] * color
            T = torch.where(ok, next_T, T)
        stopped_total += int(done.sum())
        rgbs.append((rgb + T[:, None] * background[b]).reshape(H, W, 3))
        alphas.append((1 - T).reshape(H, W, 1))
    return torch.stack(rgbs), torch.stack(alphas), stopped_total


def _render_params(params: dict[str, torch.Tensor], sh_degree: int, cams: Cameras, bg: torch.Tensor, **cfg):
    config = RenderConfig(backend="reference", clamp_rgb=False, **cfg)
    return render(Gaussians(params, sh_degree), cams, bg, config)


# -- SH and projection against gsplat's own pure-torch code -------------------------------------------
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat_torch_impl(degree: int) -> None:
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(50, 3, generator=g, dtype=torch.float64)
    coeffs = torch.randn(50, 16, 3, generator=g, dtype=torch.float64)
    expected = torch.clamp_min(torch_impl._spherical_harmonics(degree, dirs, coeffs) + 0.5, 0.0)
    torch.testing.assert_close(sh_to_color(degree, coeffs, dirs), expected, atol=1e-12, rtol=1e-12)


def test_projection_matches_gsplat_torch_impl() -> None:
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    p = make_params(60, 0, seed=1)
    cams = make_cameras(40, 30, n=3)
    viewmats, Ks = cams.viewmats.double(), cams.Ks.double()
    scales, opac = torch.exp(p["scales"]), torch.sigmoid(p["opacities"])
    proj = project(p["means"], p["quats"], scales, opac, viewmats, Ks, 40, 30)
    covars, _ = torch_impl._quat_scale_to_covar_preci(p["quats"], scales, compute_preci=False, triu=False)
    radii, means2d, depths, conics, _ = torch_impl._fully_fused_projection(p["means"], covars, viewmats, Ks, 40, 30)
    vis = proj.visible
    assert vis.sum() > 100
    torch.testing.assert_close(proj.means2d[vis], means2d[vis])
    torch.testing.assert_close(proj.conics[vis], conics[vis])
    torch.testing.assert_close(proj.depths, depths)
    # Box: gsplat's opacity-aware extent, a subset of the 3.33-sigma box of the torch impl.
    assert bool((proj.radii <= radii).all())
    conic_det = conics[..., 0] * conics[..., 2] - conics[..., 1] ** 2  # = 1 / det(cov2d)
    cov_diag = torch.stack([conics[..., 2], conics[..., 0]], -1) / conic_det[..., None]
    extend = torch.sqrt(2 * torch.log(opac * 255)).clamp_max(3.33)[None, :, None]
    torch.testing.assert_close(proj.radii[vis].double(), torch.ceil(extend * cov_diag.sqrt()).expand_as(proj.radii)[vis])


# -- the reference against the brute force ------------------------------------------------------------
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_reference_matches_brute_force(sh_degree: int) -> None:
    p = make_params(48, sh_degree, seed=2 + sh_degree)
    cams = make_cameras()
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 1.0, 1.0]], dtype=torch.float64)
    rgb_bf, alpha_bf, stopped = brute_force(p, sh_degree, cams, bg)
    assert stopped > 0, "the scene should make some pixels hit the transmittance cut-off"
    for tile_size in (1, 4, 16):
        out = _render_params(p, sh_degree, cams, bg, reference_tile_size=tile_size)
        torch.testing.assert_close(out.rgb, rgb_bf, atol=1e-10, rtol=0)
        torch.testing.assert_close(out.alpha, alpha_bf, atol=1e-10, rtol=0)


def test_reference_matches_brute_force_float32() -> None:
    p = make_params(48, 1, seed=5)
    cams = make_cameras()
    bg = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64).expand(2, 3)
    rgb_bf, alpha_bf, _ = brute_force(p, 1, cams, bg)
    p32 = {k: v.float() for k, v in p.items()}
    out = _render_params(p32, 1, cams, bg[0].float())
    assert (out.rgb.double() - rgb_bf).abs().max() < 1e-5
    assert (out.alpha.double() - alpha_bf).abs().max() < 1e-5


def test_gradients_match_brute_force() -> None:
    """Autograd through the vectorised reference equals autograd through the loop-by-loop brute force."""
    p = make_params(30, 2, seed=7)
    cams = make_cameras(19, 15)
    bg = torch.tensor([[0.2, 0.5, 0.9], [0.7, 0.1, 0.3]], dtype=torch.float64)
    weights = torch.randn(2, 15, 19, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def grads(fn):
        leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        rgb, alpha = fn(leaves)
        (torch.cat([rgb, alpha], -1) * weights).sum().backward()
        return {k: v.grad for k, v in leaves.items()}

    g_bf = grads(lambda q: brute_force(q, 2, cams, bg)[:2])
    g_ref = grads(
        lambda q: rasterize_gaussians(
            q, 2, cams.viewmats.double(), cams.Ks.double(), 19, 15, bg, RenderConfig(reference_tile_size=4)
        )[:2]
    )
    for key in p:
        assert g_bf[key].abs().max() > 0, key
        torch.testing.assert_close(g_ref[key], g_bf[key], atol=1e-9, rtol=1e-7, msg=key)


def test_gradcheck_tiny_scene() -> None:
    p = make_params(5, 1, seed=11)
    p["opacities"] = p["opacities"].clamp(-2.0, 2.0)  # keep away from the 0.999 alpha clamp
    cams = make_cameras(9, 8, n=1)
    viewmats, Ks = cams.viewmats.double(), cams.Ks.double()
    bg = torch.tensor([[0.3, 0.6, 0.2]], dtype=torch.float64)
    keys = list(p)

    def fn(*tensors):
        rgb, alpha, _ = rasterize_gaussians(
            dict(zip(keys, tensors)), 1, viewmats, Ks, 9, 8, bg, RenderConfig(reference_tile_size=4)
        )
        return torch.cat([rgb, alpha], -1)

    inputs = tuple(p[k].clone().requires_grad_(True) for k in keys)
    assert fn(*inputs)[..., 3].max() > 0.2  # something is actually drawn
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


# -- behaviour ---------------------------------------------------------------------------------------
def _one_gaussian(mean: list[float], opacity: float = 0.9, scale: float = 0.1) -> Gaussians:
    params = {
        "means": torch.tensor([mean]),
        "scales": torch.full((1, 3), math.log(scale)),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        "opacities": torch.tensor([math.log(opacity / (1 - opacity))]),
        "sh0": torch.zeros(1, 1, 3),
        "shN": torch.zeros(1, 0, 3),
    }
    return Gaussians(params, 0)


def test_gaussian_behind_camera_is_culled() -> None:
    cams = make_cameras(16, 16, n=1)
    centre = cams.camera_centers()[0]
    behind = _one_gaussian((centre * 1.2).tolist())  # on the far side of the camera from the origin
    bg = torch.tensor([0.1, 0.2, 0.3])
    out = render(behind, cams, bg)
    assert int(out.info["radii"].abs().sum()) == 0
    assert float(out.alpha.detach().abs().max()) == 0.0
    torch.testing.assert_close(out.rgb, bg.expand(1, 16, 16, 3))
    in_front = render(_one_gaussian([0.0, 0.0, 0.0]), cams, bg)  # the same Gaussian at the origin is drawn
    assert bool((in_front.info["radii"] > 0).all()) and float(in_front.alpha.detach().max()) > 0.5


def test_background_where_alpha_is_zero_and_ranges() -> None:
    g = random_ball_gaussians(
        GaussiansConfig(num_points=300, init_radius=0.3, init_opacity=0.5), torch.Generator().manual_seed(0)
    )
    cams = make_cameras(32, 32, n=2)
    bg = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    out = render(g, cams, bg)
    assert out.rgb.shape == (2, 32, 32, 3) and out.alpha.shape == (2, 32, 32, 1)
    empty = out.alpha[..., 0] == 0
    assert empty.any(dim=(1, 2)).all() and (~empty).any()
    for b in range(2):
        torch.testing.assert_close(out.rgb[b][empty[b]], bg[b].expand(int(empty[b].sum()), 3))
    alpha, rgb = out.alpha.detach(), out.rgb.detach()
    assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0


def test_means2d_gets_screen_space_gradient() -> None:
    g = random_ball_gaussians(GaussiansConfig(num_points=200), torch.Generator().manual_seed(1))
    cams = make_cameras(24, 24, n=2)
    out = render(g, cams, torch.ones(3), RenderConfig(absgrad=True))
    info = out.info
    assert info["means2d"].shape == (2, 200, 2) and info["radii"].shape == (2, 200, 2)
    assert info["radii"].dtype == torch.int32 and info["gaussian_ids"] is None
    assert (info["width"], info["height"], info["n_cameras"], info["backend"]) == (24, 24, 2, "reference")
    (out.rgb * torch.linspace(0, 1, 24)[None, :, None, None]).sum().backward()
    grad = info["means2d"].grad
    visible = (info["radii"] > 0).all(-1)
    assert grad is not None and float(grad[visible].abs().sum()) > 0
    assert float(grad[~visible].abs().sum()) == 0
    assert bool((info["means2d"].absgrad >= grad.abs() - 1e-6).all())
    assert g.params["means"].grad is not None and g.params["sh0"].grad is not None


def test_absgrad_is_sum_of_per_pixel_absolute_gradients() -> None:
    """gsplat's absgrad: sum over pixels of |d (loss at that pixel) / d means2d|, per axis."""
    p = {k: v.float() for k, v in make_params(4, 0, seed=13).items()}
    cams = make_cameras(6, 5, n=1)
    weights = torch.randn(1, 5, 6, 4, generator=torch.Generator().manual_seed(1))
    cfg = RenderConfig(absgrad=True, clamp_rgb=False)
    g = Gaussians(p, 0)
    out = render(g, cams, torch.full((3,), 0.5), cfg)
    (torch.cat([out.rgb, out.alpha], -1) * weights).sum().backward()
    absgrad = out.info["means2d"].absgrad
    expected = torch.zeros_like(absgrad)
    for y in range(5):
        for x in range(6):
            g_px = Gaussians(p, 0)
            o = render(g_px, cams, torch.full((3,), 0.5), RenderConfig(clamp_rgb=False))
            (torch.cat([o.rgb, o.alpha], -1)[0, y, x] * weights[0, y, x]).sum().backward()
            expected += o.info["means2d"].grad.abs()
    assert float(expected.sum()) > 0
    torch.testing.assert_close(absgrad, expected, atol=1e-5, rtol=1e-4)


def test_packed_info_matches_unpacked() -> None:
    g = random_ball_gaussians(GaussiansConfig(num_points=150), torch.Generator().manual_seed(2))
    cams = make_cameras(20, 20, n=2)
    dense = render(g, cams, torch.zeros(3))
    dense.rgb.sum().backward()
    g2 = Gaussians(g.tensors(), g.sh_degree)
    packed = render(g2, cams, torch.zeros(3), RenderConfig(packed=True))
    packed.rgb.sum().backward()
    torch.testing.assert_close(packed.rgb, dense.rgb)
    vis = (dense.info["radii"] > 0).all(-1)
    cam_ids, gs_ids = torch.nonzero(vis, as_tuple=True)
    assert torch.equal(packed.info["gaussian_ids"], gs_ids) and torch.equal(packed.info["camera_ids"], cam_ids)
    torch.testing.assert_close(packed.info["means2d"].grad, dense.info["means2d"].grad[vis])


def test_densification_strategy_accepts_info() -> None:
    strategy_mod = pytest.importorskip("gsplat.strategy")
    from fsd_gs.gaussians import LearningRates, make_optimizers

    g = random_ball_gaussians(GaussiansConfig(num_points=100), torch.Generator().manual_seed(3))
    optimizers = make_optimizers(g, LearningRates())
    strategy = strategy_mod.DefaultStrategy(refine_start_iter=0, refine_every=1, reset_every=1000, verbose=False)
    state = strategy.initialize_state()
    cams = make_cameras(16, 16, n=2)
    out = render(g, cams, torch.ones(3))
    strategy.step_pre_backward(g.params, optimizers, state, 0, out.info)
    out.rgb.mean().backward()
    strategy.step_post_backward(g.params, optimizers, state, 0, out.info, packed=False)
    assert state["grad2d"] is not None and float(state["count"].sum()) > 0


def test_no_grad_render_works() -> None:
    g = random_ball_gaussians(GaussiansConfig(num_points=50), torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = render(g, make_cameras(8, 8, n=1), torch.ones(3))
    assert not out.rgb.requires_grad and out.info["means2d"].grad is None


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_inputs_raise_user_error() -> None:
    g = random_ball_gaussians(GaussiansConfig(num_points=10), torch.Generator().manual_seed(5))
    cams = make_cameras(8, 8, n=2)
    empty = Gaussians({k: v[:0] for k, v in g.tensors().items()}, 0)
    with pytest.raises(UserError, match="empty Gaussian set"):
        render(empty, cams, torch.ones(3))
    zero = Cameras(cams.viewmats, cams.Ks, 0, 8, cams.azimuth, cams.elevation, cams.distance, cams.fovy)
    with pytest.raises(UserError, match="image size"):
        render(g, zero, torch.ones(3))
    with pytest.raises(UserError, match="background"):
        render(g, cams, torch.ones(3, 3))
    with pytest.raises(UserError, match="background"):
        render(g, cams, torch.ones(4))
    with pytest.raises(UserError, match="CUDA"):
        render(g, cams, torch.ones(3), RenderConfig(backend="gsplat"))
    with pytest.raises(UserError, match="sh_degree"):
        render(g, cams, torch.ones(3), RenderConfig(sh_degree=2))
    for bad in (
        RenderConfig(backend="vulkan"),
        RenderConfig(near_plane=0.0),
        RenderConfig(eps2d=-1.0),
        RenderConfig(far_plane=0.001),
        RenderConfig(reference_tile_size=0),
    ):
        with pytest.raises(UserError):
            render(g, cams, torch.ones(3), bad)
