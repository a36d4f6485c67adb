"""The Gaussians a run starts from: a random ball, or a .ply (``--gaussians.init-ply``)."""

from __future__ import annotations

import torch

from fsd_gs.finite import drop_non_finite
from fsd_gs.gaussians import Gaussians, GaussiansConfig, random_ball_gaussians
from fsd_gs.io.ply import read_ply


def init_gaussians(config: GaussiansConfig, generator: torch.Generator, device: torch.device | str = "cpu") -> Gaussians:
    """Initial Gaussians: from ``config.init_ply`` if set (non-finite rows dropped), else random in a ball."""
    if config.init_ply:
        g = read_ply(config.init_ply, sh_degree=config.sh_degree)
        return drop_non_finite(g, str(config.init_ply), verb="starting from").to(device)
    return random_ball_gaussians(config, generator, device)
