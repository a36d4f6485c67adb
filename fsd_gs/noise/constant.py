"""``constant`` (2D FSD, or the 3D ablation): one fixed noise image for every view."""

from __future__ import annotations

from typing import Sequence

import torch

from fsd_gs.noise.base import NoiseFunction, NoiseKindSpec


class ConstantNoise(NoiseFunction):
    """2D FSD: one fixed noise image [C,h,w] for every view (no mask), blended with fresh noise by beta."""

    kind = "constant"

    def __init__(self, shape: Sequence[int], beta: float, generator: torch.Generator, device: torch.device) -> None:
        super().__init__(shape, beta, device)
        self.image = torch.randn(self.shape, generator=generator, dtype=torch.float32).to(self.device)
        """The fixed noise image [C,h,w]."""

    def _deterministic(self, azimuth, elevation, alpha, batch):
        return self.image.unsqueeze(0).repeat(batch, 1, 1, 1)


CONSTANT = NoiseKindSpec(
    "constant",
    "one fixed noise image for every view (2D FSD, or the 3D ablation)",
    make=lambda config, shape, generator, device: ConstantNoise(shape, config.beta, generator, device),
)
