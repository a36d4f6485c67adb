"""fsd_gs/adam_together.py: many Adams stepped in one functional call per setting, as each would step alone."""

from __future__ import annotations

import pytest
import torch

from fsd_gs.adam_together import step_adams


def _assets(k: int, lrs=(0.01, 0.1)) -> list[dict[str, torch.optim.Optimizer]]:
    """k assets of two parameter keys (one Adam each, as fsd_gs.gaussians.make_optimizers builds them)."""
    gen = torch.Generator().manual_seed(0)
    assets = []
    for i in range(k):
        params = {"means": torch.randn(5 + i, 3, generator=gen), "opacities": torch.randn(5 + i, generator=gen)}
        assets.append(
            {
                key: torch.optim.Adam([{"params": [p.requires_grad_()], "lr": lr, "name": key}], eps=1e-15)
                for (key, p), lr in zip(params.items(), lrs)
            }
        )
    return assets


def _clone(assets):
    out = _assets(len(assets))
    for a, b in zip(assets, out):
        for key in a:
            with torch.no_grad():
                b[key].param_groups[0]["params"][0].copy_(a[key].param_groups[0]["params"][0])
    return out


def _fill_grads(assets, step: int) -> None:
    for i, asset in enumerate(assets):
        for j, opt in enumerate(asset.values()):
            p = opt.param_groups[0]["params"][0]
            p.grad = torch.sin(torch.arange(p.numel(), dtype=p.dtype) * (1 + i + j + step)).reshape(p.shape)


def test_joined_adam_matches_each_optimizer_alone():
    alone = _assets(3)
    joined = _clone(alone)
    for step in range(4):
        _fill_grads(alone, step)
        _fill_grads(joined, step)
        for asset in alone:
            for opt in asset.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
        calls = step_adams([opt for asset in joined for opt in asset.values()])
        assert calls == 2  # one per key: the three assets' means together, their opacities together
    for a, b in zip(alone, joined):
        for key in a:
            pa, pb = a[key].param_groups[0]["params"][0], b[key].param_groups[0]["params"][0]
            assert torch.equal(pa, pb) and pb.grad is None
            sa, sb = a[key].state[pa], b[key].state[pb]
            assert float(sa["step"]) == float(sb["step"]) == 4.0
            assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
            assert a[key].state_dict()["param_groups"] == b[key].state_dict()["param_groups"]


def test_different_settings_and_other_optimizers_step_apart():
    assets = _assets(2) + _assets(1, lrs=(0.5, 0.1))  # the third asset's means have their own learning rate
    sgd_param = torch.ones(3, requires_grad=True)
    sgd = torch.optim.SGD([sgd_param], lr=1.0)
    _fill_grads(assets, 0)
    sgd_param.grad = torch.ones(3)
    skipped = assets[0]["opacities"].param_groups[0]["params"][0]
    skipped.grad = None  # a parameter without a gradient is left alone, as Adam.step leaves it
    calls = step_adams([opt for asset in assets for opt in asset.values()] + [sgd])
    assert calls == 3  # means at lr 0.01, means at lr 0.5, opacities at 0.1; SGD by its own step()
    assert torch.equal(sgd_param.detach(), torch.zeros(3)) and sgd_param.grad is None
    assert len(assets[0]["opacities"].state) == 0 and len(assets[1]["opacities"].state) == 1
    lone = _assets(1, lrs=(0.5, 0.1))[0]["means"]
    p = lone.param_groups[0]["params"][0]
    p.grad = torch.sin(torch.arange(p.numel(), dtype=p.dtype) * 3).reshape(p.shape)  # _fill_grads of asset 2, key 0
    lone.step()
    assert torch.equal(p, assets[2]["means"].param_groups[0]["params"][0])


@pytest.mark.cuda
def test_fused_adams_on_cuda_match_each_optimizer_alone():
    """On CUDA (fused Adam, as fsd_gs.gaussians.make_optimizers builds it) the joined call gives the same parameters
    and moments as each optimizer's own step, bit for bit: the fused kernel works per tensor."""
    cuda = torch.device("cuda")

    def build():
        gen = torch.Generator().manual_seed(1)
        params = [torch.randn(1000 + 7 * i, 3, generator=gen).to(cuda).requires_grad_() for i in range(8)]
        return [torch.optim.Adam([p], lr=0.01, eps=1e-15, fused=True) for p in params]

    alone, joined = build(), build()
    for step in range(3):
        for opts in (alone, joined):
            for i, opt in enumerate(opts):
                p = opt.param_groups[0]["params"][0]
                p.grad = torch.cos(torch.arange(p.numel(), device=cuda, dtype=p.dtype) * (i + step + 1)).reshape(p.shape)
        for opt in alone:
            opt.step()
            opt.zero_grad(set_to_none=True)
        assert step_adams(joined) == 1
    for a, b in zip(alone, joined):
        pa, pb = a.param_groups[0]["params"][0], b.param_groups[0]["params"][0]
        assert torch.equal(pa, pb)
        assert torch.equal(a.state[pa]["exp_avg_sq"], b.state[pb]["exp_avg_sq"]) and float(b.state[pb]["step"]) == 3.0
