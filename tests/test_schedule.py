"""Timestep schedules (docs/fsd.md sec. 4): annealing shape, endpoints, discretisation, random range, validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fsd_gs.errors import UserError
from fsd_gs.schedule import (
    FSD_SCHEDULE,
    SCHEDULE_PRESETS,
    SDS_SCHEDULE,
    ScheduleConfig,
    annealed_fraction,
    sample_timestep,
    to_discrete,
)


def t_at(config: ScheduleConfig, progress: float, T: int = 1000) -> int:
    return int(sample_timestep(config, progress, None, T)[0])


@pytest.mark.parametrize("kind", ["linear", "sqrt"])
def test_annealed_schedules_decrease_from_t_max_to_t_min(kind):
    cfg = ScheduleConfig(kind=kind, t_min=0.3, t_max=0.98)
    values = [t_at(cfg, p / 200) for p in range(201)]
    assert values[0] == 980 and values[-1] == 300
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[0] > values[100] > values[-1]


def test_linear_and_sqrt_shapes():
    lin = ScheduleConfig(kind="linear", t_min=0.2, t_max=0.8)
    sq = ScheduleConfig(kind="sqrt", t_min=0.2, t_max=0.8)
    assert annealed_fraction(lin, 0.25) == pytest.approx(0.8 - 0.6 * 0.25)
    assert annealed_fraction(sq, 0.25) == pytest.approx(0.8 - 0.6 * 0.5)
    assert t_at(lin, 0.5) == 500 and t_at(sq, 0.25) == 500
    # sqrt anneals faster early on: below linear everywhere inside (0, 1)
    assert all(annealed_fraction(sq, p) < annealed_fraction(lin, p) for p in (0.01, 0.3, 0.7, 0.99))
    assert annealed_fraction(sq, 1.0 / 9) == pytest.approx(0.8 - 0.6 / 3)


def test_progress_outside_the_run_is_clamped():
    cfg = ScheduleConfig(kind="sqrt", t_min=0.3, t_max=0.98)
    assert t_at(cfg, -0.5) == 980 and t_at(cfg, 1.7) == 300


def test_discrete_timesteps_round_and_clip():
    t = torch.tensor([0.0, 0.0004, 0.0016, 0.1234, 0.12351, 0.9996, 1.0], dtype=torch.float64)
    assert to_discrete(t, 1000).tolist() == [1, 1, 2, 123, 124, 999, 999]
    assert to_discrete(torch.tensor([0.25, 0.75, 0.5]), 10).tolist() == [3, 8, 5]  # halves round up
    assert to_discrete(t, 1000).dtype == torch.int64


def test_annealed_schedules_give_every_view_the_same_t_and_leave_the_generator_alone():
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    t = sample_timestep(ScheduleConfig(kind="linear", t_min=0.1, t_max=0.9), 0.5, g, 1000, batch=4)
    assert t.tolist() == [500] * 4
    assert torch.equal(g.get_state(), state)


def test_random_schedule_draws_per_view_within_range():
    cfg = ScheduleConfig(kind="random", t_min=0.2, t_max=0.4)
    g = torch.Generator().manual_seed(0)
    t = torch.cat([sample_timestep(cfg, 0.0, g, 1000, batch=8) for _ in range(250)])
    assert t.shape == (2000,) and t.dtype == torch.int64
    assert t.min() >= 200 and t.max() <= 400
    assert len(set(t[:8].tolist())) > 1  # different views, different t
    # roughly uniform: each fifth of the range holds about a fifth of the draws
    counts = torch.histc(t.double(), bins=5, min=200, max=400)
    expected = 2000 / 5
    assert (counts - expected).abs().max() < 5 * math.sqrt(expected)
    # the same generator state gives the same draws, progress does not matter
    a = sample_timestep(cfg, 0.1, torch.Generator().manual_seed(3), 1000, batch=5)
    b = sample_timestep(cfg, 0.9, torch.Generator().manual_seed(3), 1000, batch=5)
    assert torch.equal(a, b)


def test_degenerate_range_is_allowed():
    cfg = ScheduleConfig(kind="random", t_min=0.5, t_max=0.5)
    assert sample_timestep(cfg, 0.3, torch.Generator().manual_seed(0), 1000, batch=3).tolist() == [500] * 3


@pytest.mark.parametrize("t_min, t_max", [(0.0, 0.5), (0.6, 0.5), (0.3, 1.0), (-0.1, 0.5), (0.3, 1.2)])
def test_bad_ranges_are_user_errors(t_min, t_max):
    with pytest.raises(UserError, match="t_min") as info:
        ScheduleConfig(kind="sqrt", t_min=t_min, t_max=t_max).validate()
    assert "\n" not in str(info.value)


def test_bad_kind_is_a_user_error():
    with pytest.raises(UserError, match="random, linear or sqrt"):
        dataclasses.replace(ScheduleConfig(), kind="cosine").validate()


def test_method_presets_and_defaults():
    assert (FSD_SCHEDULE.kind, FSD_SCHEDULE.t_min, FSD_SCHEDULE.t_max) == ("sqrt", 0.3, 0.98)
    assert (SDS_SCHEDULE.kind, SDS_SCHEDULE.t_min, SDS_SCHEDULE.t_max) == ("random", 0.02, 0.98)
    assert SCHEDULE_PRESETS["fsd2d"].kind == "linear"
    assert ScheduleConfig() == FSD_SCHEDULE
    for preset in SCHEDULE_PRESETS.values():
        preset.validate()
