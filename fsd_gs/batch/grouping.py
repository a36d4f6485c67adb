"""How many seeds of one (prompt, preset) the batch optimises together (``--group-seeds``), per prior and method.

    plan = group_plan(cfg, asked=None)       # GroupPlan(size=8, note=None) for a shapes preset
    plan = group_plan(vsd_cfg, asked=8)      # GroupPlan(size=1, note="... one at a time ...")

The defaults, and why (measured on one H200, 2026-12-04, issue #27):
  * the built-in shapes prior: 8. Its step is tiny, so one prior call for 8 seeds amortises the per-call
    overhead; 128 shapes assets with ``--group-seeds 8`` ran at ~1130 per GPU-hour.
  * Stable Diffusion 2.1-base (the model of the ``*-sd21`` presets) at one view per step: 8. Measured on one H100
    (2026-12-06, random weights, fp16, Perp-Neg on as in ``fsd-sd21``): 8 seeds of one prompt train at 174 ms a step
    together, 21.7 ms per seed, against about 45 ms estimated for one seed alone (30.6 ms measured without Perp-Neg
    on 2026-12-05, times Perp-Neg's 1.49 at one view measured on an H200);
    through the batch on Ray, 8 seeds of 400 steps took 69 s after the first group. Peak GPU memory at 8 seeds of
    100k Gaussians: 15.0 GB allocated (bench_step). On 2026-12-04 the grouped batch was slower (47.7 s per asset
    against 35.1 s): the joined render, one Adam call and no per-seed host syncs came since (BENCHMARKS.md).
  * other diffusion priors (SD 3.5, MVDream, any other folder or hub id) and several views per step: 1, not
    measured grouped; ``--group-seeds K`` asks for it.
  * methods that train a model per asset (VSD's LoRA: ``MethodSpec.stateful``): always 1, whatever is asked,
    since one LoRA cannot serve several seeds; the batch says so once instead of failing those assets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

SHAPES_GROUP_SEEDS = 8
"""Default K for the built-in shapes prior."""
SD21_GROUP_SEEDS = 8
"""Default K for Stable Diffusion 2.1-base at one view per step (measured, see above)."""
DIFFUSION_GROUP_SEEDS = 1
"""Default K for the other diffusion priors (not measured grouped, see above)."""


@dataclass(frozen=True)
class GroupPlan:
    """The K a preset's seeds are grouped by, and a note for the user when K is not what they asked for."""

    size: int
    note: Optional[str] = None


def default_group_seeds(model: str, views: int = 1) -> int:
    """The default K of a prior (the --model string) at ``views`` views per step: 8 for the shapes and shapes-flow
    priors and for Stable Diffusion 2.1-base at one view, 1 for the other diffusion priors."""
    from fsd_gs.prior.loading import DEFAULT_MODEL

    if model in ("shapes", "shapes-flow"):
        return SHAPES_GROUP_SEEDS
    return SD21_GROUP_SEEDS if model == DEFAULT_MODEL and views == 1 else DIFFUSION_GROUP_SEEDS


def group_plan(cfg: Any, asked: Optional[int], label: str = "") -> GroupPlan:
    """The K of a preset whose TrainConfig is ``cfg``: ``asked`` (--group-seeds) or the prior's default, and 1 for a
    method that trains a model per asset (with a note saying so when more was asked)."""
    from fsd_gs.methods import method_spec

    if method_spec(cfg.method).stateful:
        note = None
        if asked is not None and asked > 1:
            note = (
                f"{label or cfg.method}: --method {cfg.method} trains a model per asset, so its seeds train one "
                f"at a time (--group-seeds {asked} does not apply to it)"
            )
        return GroupPlan(1, note)
    return GroupPlan(asked if asked is not None else default_group_seeds(cfg.model, cfg.camera.batch_size))
