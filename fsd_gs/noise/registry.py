"""The noise-kind registry: every ``--noise.kind`` by name, and the names for tyro's choices.

Built-in kinds (one module each): worldmap (3D FSD), constant (2D FSD), random (SDS), surface. A third-party
kind is a :class:`~fsd_gs.noise.base.NoiseKindSpec` named by an entry point of the ``fsd_gs.noise`` group
(docs/extending.md); it reads its options from the run's flat NoiseConfig.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fsd_gs.noise.base import NoiseKindSpec
from fsd_gs.noise.constant import CONSTANT
from fsd_gs.noise.random import RANDOM
from fsd_gs.noise.surface import SURFACE
from fsd_gs.noise.worldmap import WORLDMAP
from fsd_gs.registry import Registry

NOISE_KINDS: Registry[NoiseKindSpec] = Registry("noise kind", "--noise.kind", entry_point_group="fsd_gs.noise")
"""Every noise kind by name (a read-only mapping): the built-ins, then the ``fsd_gs.noise`` entry points."""
for _kind in (WORLDMAP, CONSTANT, RANDOM, SURFACE):
    NOISE_KINDS.register(_kind)

if TYPE_CHECKING:
    NoiseKind = str
else:
    NoiseKind = NOISE_KINDS.literal()
    """``Literal`` of the registered kinds: the choices of ``--noise.kind``."""
