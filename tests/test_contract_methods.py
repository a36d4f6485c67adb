"""The contract every registered method keeps (fsd_gs/methods/): one test per entry of METHODS, plugins included.

Shapes and finiteness of the direction and of the update's logs, the same seed giving the same direction,
the state round trip (a fresh guidance continues exactly from another's state_dict), a short training run on
the shapes prior, and --help listing the method among --method's choices.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fsd_gs.methods import METHODS, make_guidance
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.train import parse_config
from tests.contract import help_choices, tiny_step
from tests.test_distill import TinyPixelPrior, make_inputs, sd_alphas_cumprod, tiny_unet

NAMES = list(METHODS)
OMEGA = 7.5


@pytest.fixture(scope="module")
def prior() -> TinyPixelPrior:
    return TinyPixelPrior(tiny_unet(dtype=torch.float64), sd_alphas_cumprod().double())


def inputs(prior, batch: int = 2) -> dict:
    """z [B,3,16,16] in [-1, 1], z_t, eps, t [B], cond/uncond [B,L,D] of the tiny prior."""
    images, eps, t = make_inputs(batch)
    z = images.detach() * 2 - 1
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    _conditioning = prior.encode_prompts("a red mushroom").select(["none"] * batch)
    cond, uncond = _conditioning.cond, _conditioning.uncond
    return dict(z=z, z_t=abar.sqrt() * z + (1 - abar).sqrt() * eps, eps=eps, t=t, cond=cond, uncond=uncond)


def direction(guidance, prior, x: dict) -> torch.Tensor:
    return guidance.direction(prior, x["z"], x["z_t"], x["eps"], x["t"], Conditioning(x["cond"], x["uncond"]), OMEGA)


def guidance(name: str, prior, seed: int = 0):
    torch.manual_seed(1234 + seed)  # whatever torch's global generator holds, the seed alone decides
    return make_guidance(name, prior, prior.encode_prompts("a red mushroom"), seed=seed)


@pytest.mark.parametrize("name", NAMES)
def test_direction_and_update_have_the_right_shapes_and_are_finite(name, prior):
    x = inputs(prior)
    g = guidance(name, prior)
    assert g.name == name and g.stateful == METHODS[name].stateful
    d = direction(g, prior, x)
    assert d.shape == x["eps"].shape and d.dtype == x["z"].dtype and torch.isfinite(d).all()
    logs = g.update(prior, x["z"])
    assert all(v.dim() == 0 and torch.isfinite(v) for v in logs.values())
    assert bool(logs) == g.stateful  # a stateful method trains (and logs) something, a stateless one nothing


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_gives_the_same_direction(name, prior):
    x = inputs(prior)
    a = guidance(name, prior, seed=3)
    torch.rand(7)  # the global generator moves on between the two builds
    b = guidance(name, prior, seed=3)
    assert torch.equal(direction(a, prior, x), direction(b, prior, x))
    a.update(prior, x["z"])
    b.update(prior, x["z"])
    assert torch.equal(direction(a, prior, x), direction(b, prior, x))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_exactly(name, prior):
    x = inputs(prior)
    a = guidance(name, prior, seed=1)
    a.update(prior, x["z"])
    state = copy.deepcopy(a.state_dict())
    assert bool(state) == a.stateful
    b = guidance(name, prior, seed=99)  # another seed: everything must come from the state
    b.load_state_dict(state)
    assert torch.equal(direction(a, prior, x), direction(b, prior, x))
    la, lb = a.update(prior, x["z"]), b.update(prior, x["z"])
    assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)
    assert torch.equal(direction(a, prior, x), direction(b, prior, x))


@pytest.mark.parametrize("name", NAMES)
def test_a_short_training_run_on_the_shapes_prior(name, shapes_prior):
    runs = [tiny_step(shapes_prior, "--method", name) for _ in range(2)]
    spec = METHODS[name]
    assert runs[0].cfg.noise.kind == spec.noise.kind and runs[0].cfg.schedule.kind == spec.schedule.kind
    means = runs[0].gaussians.params["means"].detach().clone()
    for _ in range(3):
        a, b = runs[0](), runs[1]()
        assert torch.isfinite(a.loss) and torch.equal(a.loss, b.loss)  # bitwise reproducible on the CPU
    assert not torch.equal(means, runs[0].gaussians.params["means"])


@pytest.mark.parametrize("name", NAMES)
def test_help_lists_the_method(name):
    assert name in help_choices(parse_config, "--method")
