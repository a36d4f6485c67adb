"""How many seeds of one (prompt, preset) the batch optimises together (``--group-seeds``), per prior and method.

    plan = group_plan(cfg, asked=None)       # GroupPlan(size=8, note=None) for a shapes preset
    plan = group_plan(vsd_cfg, asked=8)      # GroupPlan(size=1, note="... one at a time ...")

The defaults, and why (measured on one H200, 2026-12-04, issue #27):
  * the built-in shapes prior: 8. Its step is tiny, so one prior call for 8 seeds amortises the per-call
    overhead; 128 shapes assets with ``--group-seeds 8`` ran at ~1130 per GPU-hour.
  * diffusion priors (Stable Diffusion, MVDream, ...): 1. ``fsd-sd21`` with ``--group-seeds 4`` took 47.7 s per
    asset against 35.1 s one at a time; a larger default waits for a GPU run that shows grouped <= single
    (scripts/gpu_session.sh, stage batch).
  * methods that train a model per asset (VSD's LoRA: ``MethodSpec.stateful``): always 1, whatever is asked,
    since one LoRA cannot serve several seeds; the batch says so once instead of failing those assets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

SHAPES_GROUP_SEEDS = 8
"""Default K for the built-in shapes prior."""
DIFFUSION_GROUP_SEEDS = 1
"""Default K for the diffusion priors (grouped SD steps were measured slower than single ones, see above)."""


@dataclass(frozen=True)
class GroupPlan:
    """The K a preset's seeds are grouped by, and a note for the user when K is not what they asked for."""

    size: int
    note: Optional[str] = None


def default_group_seeds(model: str) -> int:
    """The default K of a prior (the --model string): 8 for the shapes and shapes-flow priors, 1 for diffusion priors."""
    return SHAPES_GROUP_SEEDS if model in ("shapes", "shapes-flow") else DIFFUSION_GROUP_SEEDS


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
    return GroupPlan(asked if asked is not None else default_group_seeds(cfg.model))
