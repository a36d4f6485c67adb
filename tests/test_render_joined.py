"""One render call for the assets of a grouped step (fsd_gs/render/joined.py), on the CPU.

gsplat's batched call needs CUDA (tests/test_render_gpu.py checks it against separate gsplat renders); here the
batched call is made of reference renders, one per padded asset, so what is tested is everything around it: the
padding (invisible, culled), the slicing of images and info back to each asset, the screen-space gradients the
densifier reads through :class:`RowsOf`, and the grouped step that uses it.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from fsd_gs.camera import orbit_cameras
from fsd_gs.gaussians import Gaussians, num_sh_bases
from fsd_gs.render import RenderConfig, render
from fsd_gs.render.joined import RowsOf, padded_params, render_assets
from fsd_gs.render.reference import rasterize_gaussians
from fsd_gs.step import DistillStep, step_together
from tests.contract import tiny_cfg


def reference_batch(params, sh_degree, viewmats, Ks, width, height, backgrounds, config, with_depth=False):
    """A batched rasterizer with gsplat's batch layout, made of one reference render per leading index."""
    parts = [
        rasterize_gaussians(
            {key: value[k] for key, value in params.items()},
            sh_degree,
            viewmats[k],
            Ks[k],
            width,
            height,
            backgrounds[k],
            config,
            with_depth=with_depth,
        )
        for k in range(viewmats.shape[0])
    ]
    meta = {key: torch.stack([info[key] for _, _, info in parts]) for key in ("radii", "depths", "conics")}
    meta["means2d"] = StackedMeans2d([info["means2d"] for _, _, info in parts])
    meta["flatten_ids"] = torch.empty(sum(info["n_intersections"] for _, _, info in parts))
    return torch.stack([c for c, _, _ in parts]), torch.stack([a for _, a, _ in parts]), meta


class StackedMeans2d:
    """Stands for gsplat's batched means2d [K,C,N,2]: a stack of the reference renders' own means2d tensors would not
    be on the path from the loss to the parameters, so its gradients are the parts' gradients, stacked."""

    def __init__(self, parts: list[torch.Tensor]) -> None:
        self.parts = parts
        self.requires_grad = parts[0].requires_grad

    @property
    def retains_grad(self) -> bool:
        return all(p.retains_grad for p in self.parts)

    def retain_grad(self) -> None:
        for p in self.parts:
            p.retain_grad()

    def _stacked(self, name: str):
        values = [getattr(p, name, None) for p in self.parts]
        return None if any(v is None for v in values) else torch.stack(values)

    @property
    def grad(self):
        return self._stacked("grad")

    @property
    def absgrad(self):
        return self._stacked("absgrad")


def gaussians(n: int, seed: int, sh_degree: int = 1) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    opac = 0.1 + 0.8 * torch.rand(n, generator=g)
    params = {
        "means": F.normalize(torch.randn(n, 3, generator=g), dim=-1) * 0.5 * torch.rand(n, 1, generator=g),
        "scales": torch.log(0.03 + 0.05 * torch.rand(n, 3, generator=g)),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.log(opac / (1 - opac)),
        "sh0": torch.randn(n, 1, 3, generator=g) * 0.8,
        "shN": torch.randn(n, num_sh_bases(sh_degree) - 1, 3, generator=g) * 0.2,
    }
    return Gaussians(params, sh_degree)


def cameras(seed: int, size: int = 24):
    g = torch.Generator().manual_seed(100 + seed)
    azimuth, elevation = 360 * torch.rand(2, generator=g), 30 * torch.rand(2, generator=g)
    return orbit_cameras(azimuth, elevation, torch.full((2,), 2.0), torch.full((2,), 50.0), size, size)


def weighted_loss(outs) -> torch.Tensor:
    total = torch.zeros(())
    for k, out in enumerate(outs):
        w = torch.rand(out.rgb.shape[:-1] + (5,), generator=torch.Generator().manual_seed(k))
        total = total + (torch.cat([out.rgb, out.alpha, out.depth], -1) * w).sum()
    return total


@pytest.mark.parametrize("absgrad", [False, True])
def test_one_call_gives_each_asset_its_own_render_and_gradients(absgrad):
    counts = (40, 64, 25)  # padded to 64: the first and last get invisible Gaussians
    cfg = RenderConfig(backend="reference", clamp_rgb=False, absgrad=absgrad)
    runs = {}
    for mode in ("joined", "alone"):
        assets = [gaussians(n, seed) for seed, n in enumerate(counts)]
        cams = [cameras(seed) for seed in range(3)]
        bgs = [torch.rand(2, 3, generator=torch.Generator().manual_seed(7 + k)) for k in range(3)]
        if mode == "joined":
            outs = render_assets(assets, cams, bgs, cfg, with_depth=True, batch_rasterizer=reference_batch)
        else:
            outs = [render(g, c, b, cfg, with_depth=True) for g, c, b in zip(assets, cams, bgs)]
        weighted_loss(outs).backward()
        runs[mode] = (assets, outs)
    for k, n in enumerate(counts):
        joined, alone = runs["joined"][1][k], runs["alone"][1][k]
        assert isinstance(joined.info["means2d"], RowsOf)
        assert joined.rgb.shape == alone.rgb.shape == (2, 24, 24, 3)
        for name in ("rgb", "alpha", "depth"):
            torch.testing.assert_close(getattr(joined, name), getattr(alone, name), rtol=0, atol=1e-6)
        assert torch.equal(joined.info["radii"], alone.info["radii"]) and joined.info["radii"].shape == (2, n, 2)
        torch.testing.assert_close(joined.info["means2d"].grad, alone.info["means2d"].grad, rtol=1e-5, atol=1e-8)
        if absgrad:
            torch.testing.assert_close(joined.info["means2d"].absgrad, alone.info["means2d"].absgrad, rtol=1e-5, atol=1e-8)
        assert joined.info["means2d"].grad.abs().sum() > 0
        for key, p in runs["joined"][0][k].params.items():
            torch.testing.assert_close(p.grad, runs["alone"][0][k].params[key].grad, rtol=1e-5, atol=1e-7)


def test_padding_is_invisible_and_keeps_the_graph():
    a, b = gaussians(5, 0), gaussians(3, 1)
    params = padded_params([a, b], 5)
    assert params["means"].shape == (2, 5, 3) and params["shN"].shape == (2, 5, 3, 3)
    assert torch.sigmoid(params["opacities"][1, 3:]).max() < 1.0 / 255  # culled by both backends
    assert torch.equal(params["quats"][1, 3:], torch.tensor([[1.0, 0, 0, 0]] * 2))
    params["means"][1, :3].sum().backward()
    assert torch.equal(b.params["means"].grad, torch.ones(3, 3)) and not a.params["means"].grad.any()


def test_falls_back_to_one_call_per_asset_where_one_call_cannot_serve():
    cfg = RenderConfig(backend="reference")
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return reference_batch(*args, **kwargs)

    bgs = [torch.ones(3)] * 2
    render_assets([gaussians(8, 0), gaussians(8, 1)], [cameras(0), cameras(1)], bgs, cfg, batch_rasterizer=spy)
    assert calls == [1]
    outs = render_assets([gaussians(8, 0), gaussians(8, 1)], [cameras(0), cameras(1, size=16)], bgs, cfg, batch_rasterizer=spy)
    assert calls == [1] and outs[1].rgb.shape == (2, 16, 16, 3)  # two image sizes: two calls
    for other in (RenderConfig(backend="reference", packed=True), RenderConfig(backend="reference", join_assets=False)):
        render_assets([gaussians(8, 0), gaussians(8, 1)], [cameras(0), cameras(1)], bgs, other, batch_rasterizer=spy)
    render_assets([gaussians(8, 0), gaussians(8, 1, sh_degree=0)], [cameras(0), cameras(1)], bgs, cfg, batch_rasterizer=spy)
    assert calls == [1]
    outs = render_assets([gaussians(8, 0), gaussians(8, 1)], [cameras(0), cameras(1)], bgs, cfg)  # no batch call on the CPU
    assert len(outs) == 2 and outs[0].info["backend"] == "reference"


def test_a_grouped_step_through_one_render_call_trains_as_with_one_call_per_asset(shapes_prior, monkeypatch):
    """Past a densification (refine at step 2), with different Gaussian counts per seed: the same assets."""
    runs = {}
    for mode in ("joined", "alone"):
        if mode == "joined":
            monkeypatch.setattr("fsd_gs.step.render_assets", functools.partial(render_assets, batch_rasterizer=reference_batch))
        else:
            monkeypatch.undo()
        steps = [
            DistillStep(tiny_cfg(seed, "--gaussians.num-points", str(n)), shapes_prior, torch.device("cpu"))
            for seed, n in enumerate((150, 200, 120))
        ]
        for _ in range(4):
            step_together(steps)
        runs[mode] = steps
    counts = [len(s.gaussians) for s in runs["joined"]]
    assert counts == [len(s.gaussians) for s in runs["alone"]] and len(set(counts)) > 1
    for joined, alone in zip(runs["joined"], runs["alone"]):
        changed = sum(joined.densify_counts.get(key, 0) for key in ("n_pruned", "n_cloned", "n_split"))
        assert joined.densify_counts == alone.densify_counts and changed > 0
        for key, value in joined.gaussians.params.items():
            torch.testing.assert_close(value, alone.gaussians.params[key], rtol=1e-3, atol=1e-5)  # Adam amplifies rounding
