"""Noise functions eps(c): the noise each view of each step is diffused with (docs/fsd.md sec. 2-3).

Four kinds, chosen once per run by :func:`build_noise` (one module each):

* ``worldmap`` (3D FSD): a fixed noise map around the object, periodic in azimuth; each camera sees
  the window of it that its viewing direction points at, inside the rendered silhouette, and one fixed
  background noise outside it. Nearby cameras get shifted copies of the same noise.
* ``constant`` (2D FSD): one fixed noise image for every view.
* ``random`` (SDS): fresh N(0, I) noise every call.
* ``surface``: noise attached to the rendered surface points (docs/surface-noise.md).

The deterministic part is blended with fresh noise, ``eps = sqrt(beta) eps_det + sqrt(1 - beta) randn``,
which keeps every element exactly N(0, 1): beta = 1 is pure FSD, beta = 0 is SDS noise.

Modules: base (NoiseFunction, NoiseKindSpec), worldmap, constant, random, surface, registry (NOISE_KINDS;
plugins through the ``fsd_gs.noise`` entry point group), config (NoiseConfig, NOISE_PRESETS, build_noise).
Adding a kind: docs/extending.md.
"""

from fsd_gs.noise.base import Angles, NoiseFunction, NoiseKindSpec, round_half_up
from fsd_gs.noise.config import NOISE_PRESETS, NoiseConfig, build_noise
from fsd_gs.noise.constant import ConstantNoise
from fsd_gs.noise.random import RandomNoise
from fsd_gs.noise.registry import NOISE_KINDS, NoiseKind
from fsd_gs.noise.surface import SurfaceNoise
from fsd_gs.noise.worldmap import MAX_MAP_ELEMENTS, WorldMapNoise

__all__ = [
    "MAX_MAP_ELEMENTS",
    "NOISE_KINDS",
    "NOISE_PRESETS",
    "Angles",
    "ConstantNoise",
    "NoiseConfig",
    "NoiseFunction",
    "NoiseKind",
    "NoiseKindSpec",
    "RandomNoise",
    "SurfaceNoise",
    "WorldMapNoise",
    "build_noise",
    "round_half_up",
]
