"""The contract every registered noise kind keeps (fsd_gs/noise/): one test per entry of NOISE_KINDS, plugins included.

Through the training step on the shapes prior: the noise of each view is [B,C,h,w] float32, finite and close to
N(0, 1); the same seed gives the same noise; a step restored from another's state_dict draws the same noise;
the run trains; --help lists the kind among --noise.kind's choices.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fsd_gs.noise import NOISE_KINDS, NoiseFunction
from fsd_gs.train import parse_config
from tests.contract import help_choices, tiny_step

KINDS = list(NOISE_KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_noise_shape_finiteness_distribution_and_determinism(kind, shapes_prior):
    a, b = (tiny_step(shapes_prior, "--noise.kind", kind, "--method", "fsd") for _ in range(2))
    assert isinstance(a.noise, NoiseFunction) and a.noise.kind == kind
    eps = []
    for _ in range(3):
        ra, rb = a(), b()
        assert ra.eps.shape == (1, *a.noise.shape) and ra.eps.dtype == torch.float32
        assert torch.isfinite(ra.eps).all() and torch.equal(ra.eps, rb.eps)
        eps.append(ra.eps)
    values = torch.cat(eps).flatten()
    assert abs(float(values.mean())) < 0.2 and 0.8 < float(values.std()) < 1.2  # N(0, 1) per element


@pytest.mark.parametrize("kind", KINDS)
def test_a_restored_step_draws_the_same_noise(kind, shapes_prior):
    a = tiny_step(shapes_prior, "--noise.kind", kind, "--method", "fsd")
    a()
    b = tiny_step(shapes_prior, "--noise.kind", kind, "--method", "fsd")  # its fixed noise comes from the seed
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # the random state of the fresh part comes from the state
    for _ in range(2):
        ra, rb = a(), b()
        assert torch.equal(ra.eps, rb.eps) and torch.equal(ra.loss, rb.loss)


@pytest.mark.parametrize("kind", KINDS)
def test_a_short_training_run_changes_the_gaussians(kind, shapes_prior):
    step = tiny_step(shapes_prior, "--noise.kind", kind)
    means = step.gaussians.params["means"].detach().clone()
    for _ in range(3):
        assert torch.isfinite(step().loss)
    assert not torch.equal(means, step.gaussians.params["means"])


@pytest.mark.parametrize("kind", KINDS)
def test_help_lists_the_kind(kind):
    assert kind in help_choices(parse_config, "--noise.kind")
