"""``random`` (SDS): fresh N(0, I) noise on every call, independent of the camera."""

from __future__ import annotations

from typing import Sequence

import torch

from fsd_gs.noise.base import NoiseFunction, NoiseKindSpec


class RandomNoise(NoiseFunction):
    """SDS: fresh N(0, I) noise on every call, independent of the camera."""

    kind = "random"

    def __init__(self, shape: Sequence[int], device: torch.device) -> None:
        super().__init__(shape, beta=0.0, device=device)


RANDOM = NoiseKindSpec(
    "random", "fresh N(0, I) noise every step (SDS)", make=lambda config, shape, generator, device: RandomNoise(shape, device)
)
