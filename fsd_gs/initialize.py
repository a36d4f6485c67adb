"""The Gaussians a run starts from: a random ball, or a .ply (``--gaussians.init-ply``)."""

from __future__ import annotations

import warnings

import torch

from fsd_gs.errors import UserError
from fsd_gs.gaussians import Gaussians, GaussiansConfig, random_ball_gaussians
from fsd_gs.io.ply import read_ply


def drop_nonfinite(gaussians: Gaussians, source: str) -> Gaussians:
    """``gaussians`` without the rows that hold NaN or Inf in any parameter, with a warning that counts them.

    Raises:
        UserError: when no finite row is left.
    """
    params = gaussians.params
    keep = torch.ones(len(gaussians), dtype=torch.bool, device=gaussians.device)
    for value in params.values():
        keep &= torch.isfinite(value.detach().reshape(len(gaussians), -1)).all(dim=1)
    dropped = int((~keep).sum())
    if dropped == 0:
        return gaussians
    if dropped == len(gaussians):
        raise UserError(f"every Gaussian in {source} has NaN or Inf values: nothing to start from")
    warnings.warn(f"{source}: dropped {dropped} of {len(gaussians)} Gaussians with NaN or Inf values", stacklevel=2)
    return Gaussians({k: v.detach()[keep].clone() for k, v in params.items()}, gaussians.sh_degree,
                     gaussians.active_sh_degree)


def init_gaussians(config: GaussiansConfig, generator: torch.Generator, device: torch.device | str = "cpu") -> Gaussians:
    """Initial Gaussians: from ``config.init_ply`` if set (non-finite rows dropped), else random in a ball."""
    if config.init_ply:
        g = read_ply(config.init_ply, sh_degree=config.sh_degree)
        return drop_nonfinite(g, str(config.init_ply)).to(device)
    return random_ball_gaussians(config, generator, device)
