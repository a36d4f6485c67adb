"""``mirrored``: one fixed noise image, mirrored left-right for cameras behind the object (|azimuth| > 90 deg)."""

from __future__ import annotations

import torch

from fsd_gs.noise.base import NoiseFunction, NoiseKindSpec


class MirroredNoise(NoiseFunction):
    """A fixed image [C,h,w] for the front half of the orbit, its mirror image for the back half (each N(0, 1))."""

    kind = "mirrored"

    def __init__(self, shape, beta, generator, device):
        super().__init__(shape, beta, device)
        self.image = torch.randn(self.shape, generator=generator, dtype=torch.float32).to(self.device)

    def _deterministic(self, azimuth, elevation, alpha, batch):
        back = (torch.remainder(azimuth + 180.0, 360.0) - 180.0).abs() > 90.0  # [B]
        images = self.image.unsqueeze(0).repeat(batch, 1, 1, 1)
        return torch.where(back.to(self.device).view(-1, 1, 1, 1), images.flip(-1), images)


MIRRORED = NoiseKindSpec(
    "mirrored",
    "one fixed image, mirrored for the back half of the orbit",
    make=lambda config, shape, generator, device: MirroredNoise(shape, config.beta, generator, device),
)
