"""Finite Gaussians only: rows with a NaN or Inf in any parameter are dropped, with a warning that counts them.

A NaN in one Gaussian (a diverged optimiser step, a damaged file) would make a viewer show nothing, or
garbage, for the whole asset; one Inf breaks the quantisation ranges of the compressed formats. So every
writer in :mod:`fsd_gs.export`, the initialisation from a .ply and the standalone viewer first call
:func:`drop_non_finite`, which keeps the finite rows and says how many it dropped through
:class:`NonFiniteWarning` (a ``UserWarning``; the command lines print it as a ``warning:`` line,
see :func:`fsd_gs.errors.warnings_as_lines`).
"""

from __future__ import annotations

import warnings

import torch

from fsd_gs.errors import UserError
from fsd_gs.gaussians import PARAM_KEYS, Gaussians


class ExportWarning(UserWarning):
    """Something was left out of an exported file (the message says what and how many)."""


class NonFiniteWarning(ExportWarning):
    """Gaussians with NaN or Inf parameters were dropped from an export."""


def finite_mask(gaussians: Gaussians) -> torch.Tensor:
    """[N] bool: True where every parameter of the row (means, scales, quats, opacities, sh0, shN) is finite."""
    mask = torch.ones(len(gaussians), dtype=torch.bool, device=gaussians.device)
    for key in PARAM_KEYS:
        value = gaussians.params[key].detach()
        mask &= torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1)
    return mask


def subset(gaussians: Gaussians, mask: torch.Tensor) -> Gaussians:
    """The Gaussians where ``mask`` [N] is True (detached copies, same device and SH degrees)."""
    params = {k: v.detach()[mask] for k, v in gaussians.params.items()}
    return Gaussians(params, gaussians.sh_degree, gaussians.active_sh_degree)


def drop_non_finite(gaussians: Gaussians, what: str = "the export", verb: str = "writing") -> Gaussians:
    """``gaussians`` without the rows that hold a NaN or Inf anywhere, warning with the count if any were dropped.

    Args:
        gaussians: N Gaussians on any device.
        what: named in the warning ("the export", "model.splat", ...).
        verb: what would have been done with them, for the error ("writing", "loading", ...).
    Returns:
        The finite rows (the same object when all N are finite).
    Raises:
        UserError: the set is empty, or no row is finite (nothing could be written).
    """
    n = len(gaussians)
    if n == 0:
        raise UserError(f"not {verb} {what}: the Gaussian set is empty")
    mask = finite_mask(gaussians)
    kept = int(mask.sum())
    if kept == n:
        return gaussians
    if kept == 0:
        raise UserError(f"not {verb} {what}: all {n} Gaussians have NaN or Inf parameters")
    warnings.warn(f"dropped {n - kept} of {n} Gaussians with NaN or Inf parameters from {what}", NonFiniteWarning, stacklevel=2)
    return subset(gaussians, mask)
