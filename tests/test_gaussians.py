"""Gaussians: shapes, activations, initialisation, nearest-neighbour scales, optimizers."""

import pytest
import torch

from fsd_gs.errors import UserError
from fsd_gs.gaussians import (
    PARAM_KEYS,
    Gaussians,
    GaussiansConfig,
    LearningRates,
    gaussians_from_points,
    knn_mean_distance,
    knn_mean_distance_torch,
    make_optimizers,
    random_ball_gaussians,
    rgb_to_sh0,
    sh0_to_rgb,
)


def test_random_ball_init_shapes_ranges_and_seed():
    cfg = GaussiansConfig(num_points=500, init_radius=0.7, sh_degree=2, init_opacity=0.2)
    g = random_ball_gaussians(cfg, torch.Generator().manual_seed(0))
    assert len(g) == 500
    assert g.params["shN"].shape == (500, 8, 3)
    assert g.means.norm(dim=-1).max() <= 0.7 + 1e-6
    assert torch.allclose(g.opacities, torch.full((500,), 0.2), atol=1e-6)
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(500))
    assert g.active_sh_degree == 0
    g2 = random_ball_gaussians(cfg, torch.Generator().manual_seed(0))
    assert all(torch.equal(g.params[k], g2.params[k]) for k in PARAM_KEYS)


def test_fixed_colour_round_trips_through_sh0():
    cfg = GaussiansConfig(num_points=10, init_color=(0.9, 0.1, 0.4))
    g = random_ball_gaussians(cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(g.base_colors, torch.tensor([0.9, 0.1, 0.4]).expand(10, 3), atol=1e-6)
    x = torch.rand(5, 3)
    assert torch.allclose(sh0_to_rgb(rgb_to_sh0(x)), x, atol=1e-6)


def test_knn_scales_match_brute_force():
    pts = torch.randn(200, 3, generator=torch.Generator().manual_seed(1))
    d = torch.cdist(pts, pts)
    d.fill_diagonal_(float("inf"))
    expected = d.topk(3, largest=False).values.mean(dim=1)
    assert torch.allclose(knn_mean_distance(pts), expected, atol=1e-5)
    # the GPU path, in blocks of 7 rows (exercises the chunking), agrees too
    assert torch.allclose(knn_mean_distance_torch(pts, max_elements=7 * 200), expected, atol=1e-5)
    g = gaussians_from_points(pts, torch.rand(200, 3), 0.1, 0)
    assert torch.allclose(g.scales[:, 0], expected, atol=1e-5)


def test_wrong_shapes_and_empty_sets_are_user_errors():
    g = random_ball_gaussians(GaussiansConfig(num_points=4), torch.Generator().manual_seed(0))
    bad = g.tensors()
    bad["quats"] = bad["quats"][:, :3]
    with pytest.raises(UserError, match="quats"):
        Gaussians(bad, 0)
    empty = {k: v[:0] for k, v in g.tensors().items()}
    with pytest.raises(UserError, match="empty"):
        Gaussians(empty, 0).ensure_not_empty()
    with pytest.raises(UserError):
        GaussiansConfig(num_points=0).validate()


def test_one_optimizer_per_parameter_with_its_learning_rate():
    g = random_ball_gaussians(GaussiansConfig(num_points=8), torch.Generator().manual_seed(0))
    lrs = LearningRates(means=0.1, scales=0.2, quats=0.3, opacities=0.4, sh0=0.5, shN=0.6)
    opts = make_optimizers(g, lrs)
    assert set(opts) == set(PARAM_KEYS)
    for key, opt in opts.items():
        assert opt.param_groups[0]["params"][0] is g.params[key]
        assert opt.param_groups[0]["lr"] == getattr(lrs, key)


def test_sh_degree_steps_up_to_max():
    g = random_ball_gaussians(GaussiansConfig(num_points=4, sh_degree=2), torch.Generator().manual_seed(0))
    g.step_sh_degree(999, 1000)
    assert g.active_sh_degree == 0
    g.step_sh_degree(2500, 1000)
    assert g.active_sh_degree == 2
    g.step_sh_degree(9000, 1000)
    assert g.active_sh_degree == 2
