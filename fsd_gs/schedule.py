"""Timestep schedules t(progress) (docs/fsd.md sec. 4).

t is a fraction of the model's T training steps; the discrete timestep is round(T t) clipped to [1, T-1].

* ``random`` (SDS): t ~ U[t_min, t_max], drawn per view.
* ``linear`` (2D FSD): t = t_max - (t_max - t_min) tau, tau the optimisation progress in [0, 1].
* ``sqrt`` (HiFA's annealing, 3D FSD): t = t_max - (t_max - t_min) sqrt(tau).

The annealed schedules decrease monotonically and give every view of a step the same t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from fsd_gs.errors import require

ScheduleKind = Literal["random", "linear", "sqrt"]


@dataclass
class ScheduleConfig:
    """How the diffusion timestep t of each step is chosen (fractions of the model's T steps)."""

    kind: ScheduleKind = "sqrt"
    """random: t ~ U[t_min, t_max] per view (SDS); linear or sqrt: t falls from t_max to t_min over the run
    (FSD; sqrt is HiFA's annealing, linear the 2D experiments')."""
    t_min: float = 0.3
    """Smallest t (HiFA: 0.3 for sqrt annealing; lower over-sharpens). SDS uses 0.02."""
    t_max: float = 0.98
    """Largest t (the first step of an annealed schedule)."""

    def validate(self) -> None:
        """Raise :class:`~fsd_gs.errors.UserError` on the first bad option."""
        require(self.kind in ("random", "linear", "sqrt"), f"--schedule.kind must be random, linear or sqrt, got {self.kind!r}")
        require(
            0.0 < self.t_min <= self.t_max < 1.0,
            f"the timestep range must satisfy 0 < t_min <= t_max < 1, got t_min={self.t_min} and t_max={self.t_max}",
        )


FSD_SCHEDULE = ScheduleConfig(kind="sqrt", t_min=0.3, t_max=0.98)
"""3D FSD: HiFA's sqrt annealing from 0.98 to 0.3."""
FSD_2D_SCHEDULE = ScheduleConfig(kind="linear", t_min=0.02, t_max=0.98)
"""2D FSD (the paper's image experiments): linear annealing."""
SDS_SCHEDULE = ScheduleConfig(kind="random", t_min=0.02, t_max=0.98)
"""SDS: t ~ U[0.02, 0.98] per view."""
SCHEDULE_PRESETS: dict[str, ScheduleConfig] = {"fsd": FSD_SCHEDULE, "fsd2d": FSD_2D_SCHEDULE, "sds": SDS_SCHEDULE}
"""Schedule of each method (copy with dataclasses.replace before changing one)."""


def annealed_fraction(config: ScheduleConfig, progress: float) -> float:
    """t in [t_min, t_max] of an annealed (linear or sqrt) schedule at ``progress`` (clamped to [0, 1])."""
    tau = min(1.0, max(0.0, float(progress)))
    if config.kind == "linear":
        shape = tau
    elif config.kind == "sqrt":
        shape = math.sqrt(tau)
    else:
        raise ValueError(f"schedule {config.kind!r} is not annealed")
    return config.t_max - (config.t_max - config.t_min) * shape


def to_discrete(t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Fractions t [B] -> integer timesteps round(T t) (halves up) clipped to [1, T-1], int64."""
    steps = torch.floor(t.double() * num_train_timesteps + 0.5).long()
    return steps.clamp(1, num_train_timesteps - 1)


def sample_timestep(
    config: ScheduleConfig,
    progress: float,
    generator: Optional[torch.Generator] = None,
    num_train_timesteps: int = 1000,
    batch: int = 1,
) -> torch.Tensor:
    """Integer timesteps [batch] (int64, on the generator's device, CPU without one) for this step.

    Args:
        config: the schedule.
        progress: optimisation progress tau in [0, 1] (step / total steps; clamped).
        generator: random source of the ``random`` schedule (untouched by the annealed ones).
        num_train_timesteps: the model's T.
        batch: number of views; ``random`` draws one t per view, the annealed schedules repeat theirs.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    if config.kind == "random":
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        t = config.t_min + (config.t_max - config.t_min) * u
    else:
        t = torch.full((batch,), annealed_fraction(config, progress), dtype=torch.float64, device=device)
    return to_discrete(t, num_train_timesteps)
