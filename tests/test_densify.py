"""Densification: each rule fires when it should and not otherwise, with hand-made params, optimizers and info."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from fsd_gs.densify import Densifier, DensifyConfig
from fsd_gs.errors import UserError
from fsd_gs.gaussians import PARAM_KEYS, Gaussians, GaussiansConfig, LearningRates, make_optimizers, random_ball_gaussians

W = H = 100
HIGH, LOW = 1e-3, 1e-6  # pixel-space gradients: x (W/2) = 0.05 and 5e-5 in NDC, vs grow_grad2d = 0.01
SMALL, LARGE, HUGE = 0.01, 0.1, 0.5  # stds vs grow_scale3d = 0.04 and prune_scale3d = 0.25


def config(**overrides) -> DensifyConfig:
    base = dict(
        refine_start_iter=10,
        refine_every=10,
        refine_stop_iter=100,
        reset_every=1000,
        grow_grad2d=0.01,
        grow_scale3d=0.04,
        prune_scale3d=0.25,
        prune_opa=0.005,
        max_gaussians=10_000,
    )
    base.update(overrides)
    return DensifyConfig(**base)


def make_set(stds: list[float], opacities: list[float] | None = None) -> tuple[Gaussians, dict]:
    """Gaussians with the given isotropic stds, and Adam optimizers after one step whose moments identify rows.

    Row i's gradient is (i + 1) everywhere, so its exp_avg is 0.1 (i + 1) and exp_avg_sq 0.001 (i + 1)^2.
    """
    n = len(stds)
    opacities = opacities or [0.5] * n
    gen = torch.Generator().manual_seed(0)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1)
    params = {
        "means": torch.randn(n, 3, generator=gen) * 0.3,
        "scales": torch.log(torch.tensor(stds))[:, None].repeat(1, 3),
        "quats": quats,
        "opacities": torch.logit(torch.tensor(opacities)),
        "sh0": torch.randn(n, 1, 3, generator=gen),
        "shN": torch.randn(n, 3, 3, generator=gen),
    }
    g = Gaussians(params, sh_degree=1)
    opts = make_optimizers(g, LearningRates(means=0.0, scales=0.0, quats=0.0, opacities=0.0, sh0=0.0, shN=0.0))
    rows = torch.arange(1, n + 1, dtype=torch.float32)
    for key, p in g.params.items():
        p.grad = rows.reshape(n, *([1] * (p.dim() - 1))).expand_as(p).clone()
        opts[key].step()
        opts[key].zero_grad(set_to_none=True)
    return g, opts


def make_info(grads_px: list[float], radii_px: int | list[int] = 10, cams: int = 1) -> dict:
    """What a renderer returns, after backward: means2d [B,N,2] with .grad set, radii [B,N,2] int32."""
    n = len(grads_px)
    means2d = torch.zeros(cams, n, 2, requires_grad=True)
    g = torch.tensor(grads_px, dtype=torch.float32) / cams  # the batch mean divides each view's gradient by B
    means2d.grad = torch.stack([g, torch.zeros(n)], dim=-1)[None].repeat(cams, 1, 1)
    r = torch.as_tensor(radii_px, dtype=torch.int32).expand(n)
    radii = r[None, :, None].repeat(cams, 1, 2)
    return {"means2d": means2d, "radii": radii, "width": W, "height": H, "n_cameras": cams, "gaussian_ids": None}


def post(d: Densifier, g: Gaussians, opts: dict, state: dict, step: int, info: dict, **kw) -> dict:
    d.step_pre_backward(g.params, opts, state, step, info)
    return d.step_post_backward(g.params, opts, state, step, info, **kw)


def exp_avg(opts: dict, g: Gaussians, key: str) -> torch.Tensor:
    return opts[key].state[g.params[key]]["exp_avg"]


def test_small_gaussian_with_high_gradient_is_cloned_exactly():
    g, opts = make_set([SMALL, SMALL])
    before = g.tensors()
    d = Densifier(config())
    state = d.initialize_state()
    counts = post(d, g, opts, state, 10, make_info([HIGH, LOW]))
    assert counts["n_cloned"] == 1 and counts["n_split"] == 0 and counts["n_pruned"] == 0
    assert len(g) == 3
    for key in PARAM_KEYS:
        assert torch.equal(g.params[key][:2], before[key])  # originals untouched
        assert torch.equal(g.params[key][2], before[key][0])  # exact copy of the high-gradient one
    assert torch.allclose(exp_avg(opts, g, "means")[:, 0], torch.tensor([0.1, 0.2, 0.0]))


def test_large_gaussian_with_high_gradient_is_split_in_two_smaller_ones():
    g, opts = make_set([LARGE, SMALL])
    before = g.tensors()
    d = Densifier(config())
    counts = post(d, g, opts, d.initialize_state(), 10, make_info([HIGH, LOW]))
    assert counts == {"n_cloned": 0, "n_split": 1, "n_pruned": 0, "n_reset": 0, "n_capped": 0}
    assert len(g) == 3  # parent removed, two children appended
    assert torch.equal(g.params["means"][0], before["means"][1])
    children = g.params["scales"][1:]
    assert torch.allclose(children, torch.full((2, 3), math.log(LARGE / 1.6)))
    offsets = (g.params["means"][1:] - before["means"][0]).norm(dim=-1)
    assert (offsets > 0).all() and (offsets < 6 * LARGE).all()  # drawn from the parent Gaussian
    assert not torch.equal(g.params["means"][1], g.params["means"][2])
    for key in ("quats", "opacities", "sh0", "shN"):
        assert torch.equal(g.params[key][1], before[key][0]) and torch.equal(g.params[key][2], before[key][0])


def test_no_growth_below_threshold_or_outside_refinement_steps():
    d = Densifier(config())
    g, opts = make_set([SMALL, LARGE])
    state = d.initialize_state()
    assert sum(post(d, g, opts, state, 10, make_info([LOW, LOW])).values()) == 0 and len(g) == 2
    for step in (5, 15):  # before refine_start_iter; not a multiple of refine_every
        g, opts = make_set([SMALL, LARGE])
        d2 = Densifier(config(refine_start_iter=10 if step == 15 else 20))
        assert sum(post(d2, g, opts, d2.initialize_state(), step, make_info([HIGH, HIGH])).values()) == 0
        assert len(g) == 2


def test_statistics_average_over_the_views_that_saw_the_gaussian():
    """One high gradient among 10 visible views averages below the threshold; among 9 invisible ones it does not."""
    d = Densifier(config(grow_grad2d=0.01))
    for radii_after_first, expected in ((10, 0), (0, 1)):
        g, opts = make_set([SMALL])
        state = d.initialize_state()
        for step in range(1, 11):  # step 10 refines; NDC gradient 0.05 once, then 5e-5 (or invisible)
            radii = 10 if step == 1 else radii_after_first
            counts = post(d, g, opts, state, step, make_info([HIGH if step == 1 else LOW], radii_px=radii))
        assert counts["n_cloned"] == expected
        assert state["count"].tolist() == [0.0] * len(g)  # restarted after the refinement


def test_low_opacity_is_pruned_and_opaque_kept():
    g, opts = make_set([SMALL, SMALL, SMALL], opacities=[0.001, 0.5, 0.004])
    before = g.tensors()
    d = Densifier(config())
    counts = post(d, g, opts, d.initialize_state(), 10, make_info([LOW, LOW, LOW]))
    assert counts["n_pruned"] == 2 and len(g) == 1
    assert torch.equal(g.params["means"][0], before["means"][1])
    assert torch.allclose(exp_avg(opts, g, "means")[:, 0], torch.tensor([0.2]))


def test_too_large_in_world_is_pruned_before_reset_every():
    """gsplat 1.5.3 prunes these only once step > reset_every (never in a short run); we prune at every refinement."""
    g, opts = make_set([HUGE, SMALL])
    d = Densifier(config(reset_every=1000))
    counts = post(d, g, opts, d.initialize_state(), 10, make_info([LOW, LOW]))
    assert counts["n_pruned"] == 1 and len(g) == 1
    assert torch.allclose(g.scales[0], torch.full((3,), SMALL))
    g, opts = make_set([HUGE, SMALL])  # scene_scale stretches the threshold
    d = Densifier(config(), scene_scale=4.0)
    assert post(d, g, opts, d.initialize_state(), 10, make_info([LOW, LOW]))["n_pruned"] == 0


def test_too_large_on_screen_is_pruned_and_moderately_large_split_only_while_enabled():
    # radii 40 px / 100 = 0.4 > prune_scale2d; 10 px = 0.1 > grow_scale2d 0.05 (split even with a low gradient)
    for stop, expected in ((50, {"n_pruned": 1, "n_split": 1}), (0, {"n_pruned": 0, "n_split": 0})):
        g, opts = make_set([SMALL, SMALL, SMALL])
        d = Densifier(config(refine_scale2d_stop_iter=stop, grow_scale2d=0.05, prune_scale2d=0.15))
        counts = post(d, g, opts, d.initialize_state(), 10, make_info([LOW, LOW, LOW], radii_px=[40, 10, 2]))
        assert {k: counts[k] for k in expected} == expected, stop
        assert len(g) == 3 - expected["n_pruned"] + expected["n_split"]
    g, opts = make_set([SMALL])  # after refine_scale2d_stop_iter the screen rules stop
    d = Densifier(config(refine_scale2d_stop_iter=20))
    state = d.initialize_state()
    assert post(d, g, opts, state, 20, make_info([LOW], radii_px=[40]))["n_pruned"] == 0


@pytest.mark.parametrize(
    "step, fires", [(0, False), (500, False), (999, False), (1000, True), (1001, False), (2000, True), (3000, False)]
)
def test_opacity_reset_fires_at_multiples_of_reset_every_only(step, fires):
    """The gsplat 1.5.3 trap: `step % reset_every == 0 & step > 0` is never true. Ours fires (until refine_stop_iter)."""
    g, opts = make_set([SMALL, SMALL], opacities=[0.9, 0.005 + 1e-3])
    before = g.params["opacities"].detach().clone()
    d = Densifier(config(reset_every=1000, refine_stop_iter=2500, reset_opacity=0.01))
    counts = post(d, g, opts, d.initialize_state(), step, make_info([LOW, LOW]))
    assert counts["n_reset"] == int(fires)
    if fires:
        assert torch.allclose(g.opacities, torch.tensor([0.01, 0.006]), atol=1e-6)
        assert torch.count_nonzero(exp_avg(opts, g, "opacities")) == 0
        assert torch.count_nonzero(opts["opacities"].state[g.params["opacities"]]["exp_avg_sq"]) == 0
        assert exp_avg(opts, g, "means").abs().sum() > 0  # only the opacities' moments are reset
    else:
        assert torch.equal(g.params["opacities"], before)
    d0 = Densifier(config(reset_every=0))
    g, opts = make_set([SMALL], opacities=[0.9])
    assert post(d0, g, opts, d0.initialize_state(), 1000 if step == 1000 else 20, make_info([LOW]))["n_reset"] == 0


def test_cap_keeps_the_highest_gradient_candidates():
    grads = [HIGH * (1 + i) for i in range(10)]
    g, opts = make_set([SMALL] * 10)
    before = g.tensors()
    d = Densifier(config(max_gaussians=14))
    counts = post(d, g, opts, d.initialize_state(), 10, make_info(grads))
    assert len(g) == 14 and counts["n_cloned"] == 4 and counts["n_capped"] == 6
    clones = g.params["means"][10:]
    expected = before["means"][6:10]  # the four highest gradients
    assert sorted(map(tuple, clones.tolist())) == sorted(map(tuple, expected.tolist()))
    # pruning first frees room; already full means no growth at all
    g, opts = make_set([SMALL] * 4, opacities=[0.001, 0.5, 0.5, 0.5])
    d = Densifier(config(max_gaussians=4))
    counts = post(d, g, opts, d.initialize_state(), 10, make_info([HIGH] * 4))
    assert counts["n_pruned"] == 1 and counts["n_cloned"] == 1 and len(g) == 4
    g, opts = make_set([SMALL, LARGE])
    d = Densifier(config(max_gaussians=2))
    counts = post(d, g, opts, d.initialize_state(), 10, make_info([HIGH, HIGH]))
    assert len(g) == 2 and counts["n_capped"] == 2


def test_optimizer_state_follows_every_row_through_clone_split_and_prune():
    # rows: 0 clone, 1 split, 2 pruned (opacity), 3 untouched
    g, opts = make_set([SMALL, LARGE, SMALL, SMALL], opacities=[0.5, 0.5, 0.001, 0.5])
    d = Densifier(config())
    post(d, g, opts, d.initialize_state(), 10, make_info([HIGH, HIGH, HIGH, LOW]))
    # kept rows 0 and 3, then the clone of 0, then the two children of 1
    assert len(g) == 5
    for key in PARAM_KEYS:
        p = g.params[key]
        assert opts[key].param_groups[0]["params"][0] is p
        assert len(opts[key].state) == 1 and p in opts[key].state
        state = opts[key].state[p]
        assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape
        rows = state["exp_avg"].reshape(5, -1)[:, 0]
        assert torch.allclose(rows, torch.tensor([0.1, 0.4, 0.0, 0.0, 0.0])), key
        assert state["step"].item() == 1.0
    loss = sum(p.sum() for p in g.params.values())
    loss.backward()
    for opt in opts.values():
        opt.step()  # Adam accepts the new parameters and state


def test_refine_stop_iter_and_enabled_false_stop_everything():
    for d, step in (
        (Densifier(config(refine_stop_iter=1000, reset_every=1000)), 1000),
        (Densifier(config(refine_stop_iter=None, refine_stop_fraction=0.5, reset_every=500), total_steps=1000), 500),
        (Densifier(config(enabled=False, reset_every=10)), 10),
    ):
        g, opts = make_set([SMALL, LARGE, HUGE], opacities=[0.9, 0.9, 0.001])
        before = g.tensors()
        state = d.initialize_state()
        counts = post(d, g, opts, state, step, make_info([HIGH, HIGH, HIGH]))
        assert sum(counts.values()) == 0 and len(g) == 3
        assert all(torch.equal(g.params[k], before[k]) for k in PARAM_KEYS)
        assert state["grad2d"] is None  # no statistics either
    assert Densifier(config(refine_stop_iter=None), total_steps=1200).stop_iter == 840


def test_state_round_trips_through_safetensors_and_split_draws_are_reproducible(tmp_path):
    d = Densifier(config(refine_scale2d_stop_iter=50), seed=3)
    g, opts = make_set([LARGE, LARGE])
    state = d.initialize_state()
    post(d, g, opts, state, 10, make_info([HIGH, LOW], radii_px=2))  # one split: the generator has advanced
    assert len(g) == 3
    post(d, g, opts, state, 11, make_info([HIGH, LOW, LOW], radii_px=[1, 2, 3]))
    tensors = d.state_to_tensors(state)
    save_file({k: v for k, v in tensors.items() if v is not None}, tmp_path / "s.safetensors")
    restored = d.state_from_tensors(load_file(tmp_path / "s.safetensors"))
    for key in ("grad2d", "count", "radii"):
        assert torch.equal(restored[key], state[key])
    results = []
    for s in (state, restored):
        g2 = Gaussians(g.tensors(), 1)
        opts2 = make_optimizers(g2, LearningRates())
        assert post(d, g2, opts2, s, 20, make_info([HIGH, LOW, LOW], radii_px=2))["n_split"] == 1
        results.append(g2.params["means"].detach())
    assert torch.equal(results[0], results[1])
    with pytest.raises(UserError, match="damaged"):
        d.state_from_tensors({"grad2d": torch.zeros(2, 2)})


def test_packed_info_accumulates_like_dense_info():
    d = Densifier(config(refine_scale2d_stop_iter=50))
    dense = make_info([HIGH, LOW, 2 * HIGH], radii_px=[4, 0, 9], cams=2)
    visible = (dense["radii"] > 0).all(-1)
    cam_ids, gs_ids = torch.nonzero(visible, as_tuple=True)
    means2d = torch.zeros(len(gs_ids), 2, requires_grad=True)
    means2d.grad = dense["means2d"].grad[cam_ids, gs_ids]
    packed = dict(dense, means2d=means2d, radii=dense["radii"][cam_ids, gs_ids], gaussian_ids=gs_ids)
    states = []
    for info, is_packed in ((dense, False), (packed, True)):
        g, opts = make_set([SMALL] * 3)
        state = d.initialize_state()
        post(d, g, opts, state, 3, info, packed=is_packed)
        states.append(state)
    for key in ("grad2d", "count", "radii"):
        assert torch.allclose(states[0][key], states[1][key]), key
    assert states[0]["count"].tolist() == [2.0, 0.0, 2.0]
    assert torch.allclose(states[0]["radii"], torch.tensor([0.04, 0.0, 0.09]))


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="reset-opacity"):
        DensifyConfig(prune_opa=0.05, reset_opacity=0.01).validate()
    with pytest.raises(UserError, match="refine-every"):
        DensifyConfig(refine_every=0).validate()
    d = Densifier(config(absgrad=True))
    g, opts = make_set([SMALL])
    with pytest.raises(UserError, match="render.absgrad"):
        post(d, g, opts, d.initialize_state(), 1, make_info([HIGH]))


def test_with_the_cpu_reference_renderer():
    render_mod = pytest.importorskip("fsd_gs.render", reason="fsd_gs.render is not there yet")
    from fsd_gs.camera import turntable

    g = random_ball_gaussians(GaussiansConfig(num_points=150, init_radius=0.5), torch.Generator().manual_seed(0))
    opts = make_optimizers(g, LearningRates())
    cams = turntable(2, width=32, height=32)
    d = Densifier(config(grow_grad2d=1e-6, refine_start_iter=1, refine_every=1))
    state = d.initialize_state()
    for step in range(2):
        out = render_mod.render(g, cams, torch.ones(3), render_mod.RenderConfig(backend="reference"))
        d.step_pre_backward(g.params, opts, state, step, out.info)
        (out.rgb - 0.2).square().mean().backward()
        assert out.info["means2d"].grad is not None
        for opt in opts.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        n_before = len(g)
        counts = d.step_post_backward(g.params, opts, state, step, out.info)
    assert state["count"].sum() == 0 and counts["n_cloned"] + counts["n_split"] > 0
    assert len(g) == n_before + counts["n_cloned"] + counts["n_split"] - counts["n_pruned"]
    out = render_mod.render(g, cams, torch.ones(3), render_mod.RenderConfig(backend="reference"))
    assert out.info["means2d"].shape[1] == len(g) and torch.isfinite(out.rgb).all()


@pytest.mark.cuda
def test_with_gsplat_dense_and_packed_on_cuda():
    """gsplat's info (dense [B,N,2] and packed [nnz,2] + gaussian_ids) drives the same statistics and refinement."""
    from fsd_gs.camera import turntable
    from fsd_gs.render import RenderConfig, render

    base = random_ball_gaussians(GaussiansConfig(num_points=2000, init_radius=0.5), torch.Generator().manual_seed(0))
    cams = turntable(3, width=64, height=64, device="cuda")
    stats, sizes = [], []
    for packed in (False, True):
        g = base.to("cuda")
        opts = make_optimizers(g, LearningRates())
        d = Densifier(config(grow_grad2d=1e-5, refine_start_iter=1, refine_every=1, max_gaussians=2500), seed=0)
        state = d.initialize_state()
        out = render(g, cams, torch.ones(3, device="cuda"), RenderConfig(backend="gsplat", packed=packed))
        assert out.info["radii"].shape[-1] == 2 and out.info["means2d"].shape[-1] == 2
        d.step_pre_backward(g.params, opts, state, 0, out.info)
        (out.rgb - 0.2).square().mean().backward()
        d.step_post_backward(g.params, opts, state, 0, out.info, packed=packed)  # step 0: statistics only
        stats.append((state["grad2d"].clone(), state["count"].clone()))
        counts = d.step_post_backward(g.params, opts, state, 1, out.info, packed=packed)  # refine on them
        assert counts["n_cloned"] + counts["n_split"] > 0 and len(g) <= 2500
        assert all(opts[k].param_groups[0]["params"][0] is g.params[k] for k in PARAM_KEYS)
        sizes.append(len(g))
        out = render(g, cams, torch.ones(3, device="cuda"), RenderConfig(backend="gsplat", packed=packed))
        assert torch.isfinite(out.rgb).all()
    assert torch.equal(stats[0][1], stats[1][1])
    assert torch.allclose(stats[0][0], stats[1][0], rtol=1e-4, atol=1e-7)
    assert stats[0][1].sum() > 0
