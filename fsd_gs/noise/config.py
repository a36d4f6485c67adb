"""The run's noise options (``--noise.*``), the presets of the methods, and :func:`build_noise`.

One flat :class:`NoiseConfig` serves every kind (each kind reads the fields it needs; the others are ignored),
so the command-line flags are the same whatever the kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

from fsd_gs.errors import require
from fsd_gs.noise.base import NoiseFunction
from fsd_gs.noise.registry import NOISE_KINDS, NoiseKind


@dataclass
class NoiseConfig:
    """How the noise eps(c) of each view is chosen (docs/fsd.md sec. 3)."""

    kind: NoiseKind = "worldmap"
    """worldmap: FSD's camera-dependent world-map noise (3D); constant: one fixed noise image for every view
    (2D FSD, or the 3D ablation); random: fresh noise every step (SDS); surface: noise attached to the rendered
    surface points, the same for a surface patch from every camera (docs/surface-noise.md)."""
    beta: float = 1.0
    """Share of deterministic noise: eps = sqrt(beta) eps_det + sqrt(1-beta) fresh. 1 is pure FSD, 0 is SDS noise
    (ignored by kind=random)."""
    theta_deg: float = 180.0
    """World map: degrees of azimuth that one window (the model's width) spans; smaller values give a larger map
    and less overlap between the windows of nearby cameras."""
    seed_offset: int = 1009
    """The world map and the background noise are drawn from a generator seeded with seed + seed_offset (so the run
    seed fixes them; change it to redraw the noise with everything else the same)."""
    mask_threshold: float = 0.5
    """World map: a model-space pixel is foreground (gets world-map noise) when the rendered opacity averaged over
    its image pixels is >= this; elsewhere it gets the fixed background noise."""
    texel_size: float = 0.01
    """Surface noise: edge of one noise texel (a world-space cube), world units; aim at 3-5 texels across one
    model-space pixel's footprint on the object (0.01 suits 64-wide model spaces at camera distance 2.5)."""
    subsamples: int = 8
    """Surface noise: each model-space pixel's footprint is sampled at this many x this many points (for 512 px
    renders of a 64 px latent, 8 = the render pixels); several samples should fall on each texel."""

    def validate(self) -> None:
        """Raise :class:`UserError` on the first bad option."""
        NOISE_KINDS.get_entry(self.kind)
        require(self.texel_size > 0, f"--noise.texel-size must be positive, got {self.texel_size}")
        require(1 <= self.subsamples <= 32, f"--noise.subsamples must lie in 1..32, got {self.subsamples}")
        require(0.0 <= self.beta <= 1.0, f"--noise.beta must lie in [0, 1], got {self.beta}")
        require(0.0 < self.theta_deg <= 360.0, f"--noise.theta-deg must lie in (0, 360] degrees, got {self.theta_deg}")
        require(0.0 <= self.mask_threshold <= 1.0, f"--noise.mask-threshold must lie in [0, 1], got {self.mask_threshold}")


NOISE_PRESETS: dict[str, NoiseConfig] = {
    "fsd": NoiseConfig(kind="worldmap", beta=1.0),
    "fsd2d": NoiseConfig(kind="constant", beta=1.0),
    "sds": NoiseConfig(kind="random"),
}
"""Noise of each method: 3D FSD (world map), 2D FSD (one fixed image), SDS (fresh noise)."""


def build_noise(
    config: NoiseConfig,
    shape: Sequence[int],
    seed: int,
    device: Union[torch.device, str, None] = None,
) -> NoiseFunction:
    """The run's noise function for model space ``shape`` = (C, h, w), drawn once from ``seed``.

    The fixed tensors are drawn on the CPU from ``seed + config.seed_offset`` (so the same seed gives the same
    map on every device) and then moved to ``device`` (default: CPU).
    """
    config.validate()
    device = torch.device(device if device is not None else "cpu")
    generator = torch.Generator().manual_seed(int(seed) + int(config.seed_offset))
    return NOISE_KINDS[config.kind].build(config, shape, generator, device)
