"""One Adam update for many optimizers: the grouped step's seeds (fsd_gs/step.py ``step_together``) each own one Adam
per parameter key, so K seeds make 6 K ``optimizer.step()`` calls per step. On a GPU each call costs more host time
than its fused kernel takes (3.9 ms of a 20.9 ms 8-seed shapes step on one H200, 2026-12-06), so the seeds' tensors
of one key go through ONE call of PyTorch's functional ``adam`` instead (one fused multi-tensor kernel on CUDA):

    step_adams([opt for step in steps for opt in step.optimizers.values()])   # after backward

The arithmetic is PyTorch's own, per tensor, so the parameters and moments come out as K separate steps would give
them (tests/test_adam_together.py). Each optimizer keeps its own state (``optimizer.state[p]``, created by Adam's
own ``_init_group`` on first use), so checkpoints, gsplat's densification (which edits that state) and resuming
see no difference. Optimizers that are not plain ``torch.optim.Adam``, or whose settings differ, are stepped apart.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Hashable, Sequence

import torch
from torch.optim.adam import Adam, adam

SETTINGS = (
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "amsgrad",
    "maximize",
    "foreach",
    "capturable",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
)
"""The parameter-group entries that must agree for groups to share one functional call."""


def _key(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> Hashable | None:
    """The settings of ``group`` as a hashable key, or None when it must be stepped by its optimizer (not a plain
    Adam, a tensor learning rate, a grad scaler's attributes, or an entry this PyTorch does not have)."""
    if type(optimizer) is not Adam or getattr(optimizer, "grad_scale", None) is not None:
        return None
    if getattr(optimizer, "found_inf", None) is not None or any(name not in group for name in SETTINGS):
        return None
    if isinstance(group["lr"], torch.Tensor):
        return None
    return tuple((name, tuple(group[name]) if name == "betas" else group[name]) for name in SETTINGS)


def step_adams(optimizers: Sequence[torch.optim.Optimizer], zero_grad: bool = True) -> int:
    """Step every optimizer of ``optimizers`` once, the parameter groups of equal settings in one functional call.

    Args:
        optimizers: the optimizers (any kind; those this cannot join are stepped with their own ``step()``).
        zero_grad: set the stepped parameters' ``.grad`` to None afterwards (``zero_grad(set_to_none=True)``).
    Returns the number of functional ``adam`` calls made (for tests and benchmarks).
    """
    joined: dict[Hashable, list[tuple[Adam, dict[str, Any]]]] = defaultdict(list)
    for optimizer in optimizers:
        keys = [_key(optimizer, group) for group in optimizer.param_groups]
        if any(k is None for k in keys):
            optimizer.step()
            if zero_grad:
                optimizer.zero_grad(set_to_none=True)
            continue
        for key, group in zip(keys, optimizer.param_groups):
            joined[key].append((optimizer, group))  # pyright: ignore[reportArgumentType]
    for members in joined.values():
        _step_joined(members)
        if zero_grad:
            for _, group in members:
                for p in group["params"]:
                    p.grad = None
    return len(joined)


@torch.no_grad()
def _step_joined(members: list[tuple[Adam, dict[str, Any]]]) -> None:
    """One functional ``adam`` call over the parameters with gradients of ``members`` (groups of equal settings)."""
    params: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    exp_avgs: list[torch.Tensor] = []
    exp_avg_sqs: list[torch.Tensor] = []
    max_exp_avg_sqs: list[torch.Tensor] = []
    steps: list[torch.Tensor] = []
    has_complex = False
    for optimizer, group in members:  # Adam's own bookkeeping: state created on first use, steps counted
        has_complex |= bool(optimizer._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps))
    if not params:
        return
    group = members[0][1]
    beta1, beta2 = group["betas"]
    adam(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        steps,
        amsgrad=group["amsgrad"],
        has_complex=has_complex,
        beta1=beta1,
        beta2=beta2,
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=group["maximize"],
        foreach=group["foreach"],
        capturable=group["capturable"],
        differentiable=group["differentiable"],
        fused=group["fused"],
        decoupled_weight_decay=group["decoupled_weight_decay"],
    )
