"""What every noise kind is: a :class:`NoiseFunction` eps(c) and a :class:`NoiseKindSpec` that builds one.

The deterministic part of a kind is blended with fresh noise, ``eps = sqrt(beta) eps_det + sqrt(1 - beta) randn``,
which keeps every element exactly N(0, 1): beta = 1 is pure FSD, beta = 0 is SDS noise. A kind is one module of
this package (worldmap, constant, random, surface) holding its function and its spec; registry.py registers them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from fsd_gs.errors import UserError, require

Angles = Union[torch.Tensor, Sequence[float], float]


def round_half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves up (Python's round() would round halves to even)."""
    return int(math.floor(x + 0.5))


# -- the noise functions ---------------------------------------------------------------------------
class NoiseFunction:
    """eps(c): call with the cameras' angles and rendered opacity, get one noise image per view.

    Attributes:
        shape: (C, h, w), the model space the noise lives in.
        beta: the blend weight of the deterministic part (see :class:`NoiseConfig`).
        device: where the fixed tensors live.
        world_map: the world map [C, rows, W_map] for display, or None (only ``worldmap`` has one).
        last_deterministic: eps_det [B,C,h,w] of the last call (detached), or None (``random``).
        last_mask: the foreground mask [B,1,h,w] bool of the last call, or None (only ``worldmap``).
    """

    kind: str = "random"
    world_map: Optional[torch.Tensor] = None
    needs_depth: bool = False
    """True when :meth:`sample` needs the rendered expected depth (surface-attached noise)."""

    def __init__(self, shape: Sequence[int], beta: float, device: torch.device) -> None:
        require(
            len(shape) == 3 and all(int(s) > 0 for s in shape),
            f"the noise shape must be (C, h, w) with positive sizes, got {tuple(shape)}",
        )
        self.shape = tuple(int(s) for s in shape)
        self.beta = float(beta)
        self.device = torch.device(device)
        self.last_deterministic: Optional[torch.Tensor] = None
        self.last_mask: Optional[torch.Tensor] = None

    @property
    def window_size(self) -> tuple[int, int]:
        """(h, w): the size of one view's noise (and of one world-map window)."""
        return self.shape[1], self.shape[2]

    def check_resolution(self, height: int, width: int) -> None:
        """UserError unless a render of ``height`` x ``width`` pixels pools evenly onto the h x w noise grid."""
        _, h, w = self.shape
        if height % h or width % w:
            raise UserError(
                f"the render resolution {height}x{width} is not a multiple of the noise resolution {h}x{w}: "
                f"use a camera width and height that are multiples of {w} and {h}"
            )

    def sample(
        self,
        cameras: Any,
        alpha: Optional[torch.Tensor] = None,
        depth: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Noise for a batch of views, as the training step asks for it.

        Args:
            cameras: the views' :class:`~fsd_gs.camera.Cameras` (B cameras, any device).
            alpha: rendered opacity [B,H,W,1] (see :meth:`__call__`).
            depth: rendered expected depth [B,H,W,1]; only read when :attr:`needs_depth`.
            generator: source of the fresh noise.
        Returns:
            eps [B,C,h,w] float32.
        """
        return self(cameras.azimuth, cameras.elevation, alpha, generator)

    def window_origin(self, azimuth: float, elevation: float) -> Optional[tuple[int, int]]:
        """(row0, col0) of the world-map window a camera sees, for display; None without a world map."""
        return None

    def __call__(
        self,
        azimuth: Angles,
        elevation: Angles,
        alpha: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Noise for a batch of views.

        Args:
            azimuth, elevation: camera angles in degrees, [B] (any device; floats are fine).
            alpha: rendered opacity [B,H,W,1] with H, W multiples of h, w; None = every pixel foreground.
            generator: source of the fresh noise (on any device; the result is moved to alpha's device).
        Returns:
            eps [B,C,h,w] float32 on alpha's device (or the function's device when alpha is None).
        """
        az = as_angles(azimuth)
        el = as_angles(elevation)
        batch = az.numel()
        if el.numel() != batch:
            raise ValueError(f"azimuth and elevation must have one entry per view, got {az.numel()} and {el.numel()}")
        device = self.device
        if alpha is not None:
            self.check_alpha(alpha, batch)
            device = alpha.device
        det = self._deterministic(az, el, alpha, batch)
        if det is None:
            self.last_deterministic = None
            return fresh_noise((batch, *self.shape), generator).to(device)
        det = det.to(device)
        self.last_deterministic = det
        return self.blend(det, batch, generator, device)

    def check_alpha(self, alpha: torch.Tensor, batch: int) -> None:
        """Raise ValueError unless ``alpha`` is [batch,H,W,1]; UserError when H, W do not fit the noise's size."""
        if alpha.dim() != 4 or alpha.shape[-1] != 1 or alpha.shape[0] != batch:
            raise ValueError(f"alpha must be [B,H,W,1] with B={batch}, got {tuple(alpha.shape)}")
        self.check_resolution(int(alpha.shape[1]), int(alpha.shape[2]))

    def _deterministic(
        self, azimuth: torch.Tensor, elevation: torch.Tensor, alpha: Optional[torch.Tensor], batch: int
    ) -> Optional[torch.Tensor]:
        """eps_det [B,C,h,w] float32, or None for pure fresh noise."""
        return None

    @classmethod
    def sample_many(
        cls,
        functions: Sequence[NoiseFunction],
        cameras: Sequence[Any],
        alphas: Sequence[Optional[torch.Tensor]],
        depths: Sequence[Optional[torch.Tensor]],
        generators: Sequence[Optional[torch.Generator]],
    ) -> list[torch.Tensor]:
        """Each function's :meth:`sample` of its own views (several assets' functions of this kind, one step): here one
        call each; a kind may override it with fewer, batched device calls that give the same numbers."""
        return [f.sample(c, a, d, g) for f, c, a, d, g in zip(functions, cameras, alphas, depths, generators)]

    def blend(self, det: torch.Tensor, batch: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
        """eps [batch,C,h,w] = sqrt(beta) ``det`` + sqrt(1 - beta) fresh noise drawn from ``generator`` (``det`` alone
        when beta >= 1, nothing drawn)."""
        if self.beta >= 1.0:
            return det
        fresh = fresh_noise((batch, *self.shape), generator).to(device)
        return math.sqrt(self.beta) * det + math.sqrt(1.0 - self.beta) * fresh


def sample_together(
    functions: Sequence[NoiseFunction],
    cameras: Sequence[Any],
    alphas: Sequence[Optional[torch.Tensor]],
    depths: Sequence[Optional[torch.Tensor]],
    generators: Sequence[Optional[torch.Generator]],
) -> list[torch.Tensor]:
    """``[f.sample(cameras[k], alphas[k], depths[k], generators[k]) for each function f]`` (eps [B_k,C,h,w] float32 of
    asset k), as one batched call of the kind when every function is of one kind (:meth:`NoiseFunction.sample_many`;
    the batch's grouped step: one call for its seeds instead of one each)."""
    kind = type(functions[0])
    if any(type(f) is not kind for f in functions):
        return NoiseFunction.sample_many(functions, cameras, alphas, depths, generators)
    return kind.sample_many(functions, cameras, alphas, depths, generators)


@dataclass(frozen=True)
class NoiseKindSpec:
    """One noise kind of ``--noise.kind``: its name, what it is, and how it builds its function from the config."""

    name: str
    description: str
    """One line for docs and --help: what the noise of one view is."""
    make: Callable[[Any, Sequence[int], torch.Generator, torch.device], NoiseFunction]
    """(the run's :class:`~fsd_gs.noise.config.NoiseConfig`, shape (C, h, w), the seeded CPU generator, device)."""

    def build(self, config: Any, shape: Sequence[int], generator: torch.Generator, device: torch.device) -> NoiseFunction:
        """The kind's noise function for model space ``shape``, its fixed tensors drawn from ``generator``."""
        return self.make(config, shape, generator, device)


# -- helpers --------------------------------------------------------------------------------------
def as_angles(values: Angles) -> torch.Tensor:
    """Angles as a flat float64 CPU-or-device tensor [B] (float64 so that +360 deg lands on the same column)."""
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1)


def fresh_noise(shape: tuple[int, ...], generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard normal noise of ``shape`` float32, drawn on the generator's device."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
