"""Noise functions eps(c): the noise each view of each step is diffused with (docs/fsd.md sec. 2-3).

Three kinds, chosen once per run by :func:`build_noise`:

* ``worldmap`` (3D FSD): a fixed noise map around the object, periodic in azimuth; each camera sees
  the window of it that its viewing direction points at, inside the rendered silhouette, and one fixed
  background noise outside it. Nearby cameras get shifted copies of the same noise.
* ``constant`` (2D FSD): one fixed noise image for every view.
* ``random`` (SDS): fresh N(0, I) noise every call.

The deterministic part is blended with fresh noise, ``eps = sqrt(beta) eps_det + sqrt(1 - beta) randn``,
which keeps every element exactly N(0, 1): beta = 1 is pure FSD, beta = 0 is SDS noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from fsd_gs.errors import UserError, require

NoiseKind = Literal["worldmap", "constant", "random"]
Angles = Union[torch.Tensor, Sequence[float], float]

MAX_MAP_ELEMENTS = 1 << 27
"""Largest world map (elements; 512 MiB in float32) :func:`build_noise` agrees to draw."""


@dataclass
class NoiseConfig:
    """How the noise eps(c) of each view is chosen (docs/fsd.md sec. 3)."""

    kind: NoiseKind = "worldmap"
    """worldmap: FSD's camera-dependent world-map noise (3D); constant: one fixed noise image for every view
    (2D FSD, or the 3D ablation); random: fresh noise every step (SDS)."""
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

    def validate(self) -> None:
        """Raise :class:`UserError` on the first bad option."""
        require(self.kind in ("worldmap", "constant", "random"),
                f"--noise.kind must be worldmap, constant or random, got {self.kind!r}")
        require(0.0 <= self.beta <= 1.0, f"--noise.beta must lie in [0, 1], got {self.beta}")
        require(0.0 < self.theta_deg <= 360.0, f"--noise.theta-deg must lie in (0, 360] degrees, got {self.theta_deg}")
        require(0.0 <= self.mask_threshold <= 1.0,
                f"--noise.mask-threshold must lie in [0, 1], got {self.mask_threshold}")


NOISE_PRESETS: dict[str, NoiseConfig] = {
    "fsd": NoiseConfig(kind="worldmap", beta=1.0),
    "fsd2d": NoiseConfig(kind="constant", beta=1.0),
    "sds": NoiseConfig(kind="random"),
}
"""Noise of each method: 3D FSD (world map), 2D FSD (one fixed image), SDS (fresh noise)."""


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
        require(len(shape) == 3 and all(int(s) > 0 for s in shape),
                f"the noise shape must be (C, h, w) with positive sizes, got {tuple(shape)}")
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
        az = _angles(azimuth)
        el = _angles(elevation)
        batch = az.numel()
        if el.numel() != batch:
            raise ValueError(f"azimuth and elevation must have one entry per view, got {az.numel()} and {el.numel()}")
        device = self.device
        if alpha is not None:
            if alpha.dim() != 4 or alpha.shape[-1] != 1 or alpha.shape[0] != batch:
                raise ValueError(f"alpha must be [B,H,W,1] with B={batch}, got {tuple(alpha.shape)}")
            self.check_resolution(int(alpha.shape[1]), int(alpha.shape[2]))
            device = alpha.device
        det = self._deterministic(az, el, alpha, batch)
        if det is None:
            self.last_deterministic = None
            return _randn((batch, *self.shape), generator).to(device)
        det = det.to(device)
        self.last_deterministic = det
        if self.beta >= 1.0:
            return det
        fresh = _randn((batch, *self.shape), generator).to(device)
        return math.sqrt(self.beta) * det + math.sqrt(1.0 - self.beta) * fresh

    def _deterministic(
        self, azimuth: torch.Tensor, elevation: torch.Tensor, alpha: Optional[torch.Tensor], batch: int
    ) -> Optional[torch.Tensor]:
        """eps_det [B,C,h,w] float32, or None for pure fresh noise."""
        return None


class RandomNoise(NoiseFunction):
    """SDS: fresh N(0, I) noise on every call, independent of the camera."""

    kind = "random"

    def __init__(self, shape: Sequence[int], device: torch.device) -> None:
        super().__init__(shape, beta=0.0, device=device)


class ConstantNoise(NoiseFunction):
    """2D FSD: one fixed noise image [C,h,w] for every view (no mask), blended with fresh noise by beta."""

    kind = "constant"

    def __init__(self, shape: Sequence[int], beta: float, generator: torch.Generator, device: torch.device) -> None:
        super().__init__(shape, beta, device)
        self.image = torch.randn(self.shape, generator=generator, dtype=torch.float32).to(self.device)
        """The fixed noise image [C,h,w]."""

    def _deterministic(self, azimuth, elevation, alpha, batch):
        return self.image.unsqueeze(0).repeat(batch, 1, 1, 1)


class WorldMapNoise(NoiseFunction):
    """3D FSD: windows of a fixed world map, periodic in azimuth, inside the silhouette; fixed noise outside.

    Map geometry (docs/fsd.md sec. 3): W_map = round(360 / Theta * w) columns cover 360 deg of azimuth and
    H_map = round(180 / Theta * h) rows cover 180 deg of polar angle; the stored map is
    C x (H_map + h) x (W_map + w), its last w columns copies of its first w (periodic). A camera at azimuth
    phi and elevation theta sees ``map[:, row0:row0+h, col0:col0+w]`` with
    col0 = floor(phi / 360 * W_map) mod W_map and row0 = clamp(floor((90 - theta) / 180 * H_map), 0, H_map).

    Attributes:
        theta_deg: Theta, the azimuth span of one window.
        map_size: (H_map, W_map).
        full_map: the stored map [C, H_map+h, W_map+w] (with the periodic copy).
        background: the background noise [C,h,w], the same for every view.
        mask_threshold: pooled-opacity threshold of the foreground.
    """

    kind = "worldmap"

    def __init__(
        self,
        shape: Sequence[int],
        beta: float,
        theta_deg: float,
        generator: torch.Generator,
        device: torch.device,
        mask_threshold: float = 0.5,
    ) -> None:
        super().__init__(shape, beta, device)
        c, h, w = self.shape
        self.theta_deg = float(theta_deg)
        self.mask_threshold = float(mask_threshold)
        h_map = round_half_up(180.0 / self.theta_deg * h)
        w_map = round_half_up(360.0 / self.theta_deg * w)
        self.map_size = (h_map, w_map)
        elements = c * (h_map + h) * (w_map + w)
        if elements > MAX_MAP_ELEMENTS:
            raise UserError(
                f"--noise.theta-deg {self.theta_deg:g} is too small for {c}x{h}x{w} noise: the world map would hold "
                f"{elements:,} values (limit {MAX_MAP_ELEMENTS:,}); use a larger theta"
            )
        full = torch.randn((c, h_map + h, w_map + w), generator=generator, dtype=torch.float32)
        full[:, :, w_map:] = full[:, :, :w]  # periodic in azimuth by copy (copies stay N(0, 1))
        self.full_map = full.to(self.device)
        self.background = torch.randn((c, h, w), generator=generator, dtype=torch.float32).to(self.device)
        self._rows = torch.arange(h, device=self.device)
        self._cols = torch.arange(w, device=self.device)

    @property
    def world_map(self) -> torch.Tensor:  # type: ignore[override]
        """The map without its periodic copy, [C, H_map + h, W_map]: every distinct value once.

        Rows H_map .. H_map+h-1 are real map rows (the windows of cameras looking up from below reach them);
        the window of a camera is ``world_map[:, row0:row0+h, (col0 + arange(w)) % W_map]``.
        """
        return self.full_map[:, :, : self.map_size[1]]

    def window_origins(self, azimuth: Angles, elevation: Angles) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-left corners (row0 [B], col0 [B]) int64 on the CPU of the windows of cameras at these angles (deg)."""
        h_map, w_map = self.map_size
        az = _angles(azimuth).cpu()
        el = _angles(elevation).cpu()
        col0 = torch.remainder(torch.floor(az / 360.0 * w_map), w_map).long()
        row0 = torch.floor((90.0 - el) / 180.0 * h_map).clamp(0, h_map).long()
        return row0, col0

    def window_origin(self, azimuth: float, elevation: float) -> tuple[int, int]:
        """(row0, col0) of the window of one camera (degrees), for drawing it on :attr:`world_map`."""
        row0, col0 = self.window_origins(float(azimuth), float(elevation))
        return int(row0[0]), int(col0[0])

    def windows(self, azimuth: Angles, elevation: Angles) -> torch.Tensor:
        """The world-map windows [B,C,h,w] (float32, on the function's device) of cameras at these angles."""
        row0, col0 = self.window_origins(azimuth, elevation)
        rows = row0.to(self.device)[:, None] + self._rows  # [B,h]
        cols = col0.to(self.device)[:, None] + self._cols  # [B,w]
        picked = self.full_map[:, rows[:, :, None], cols[:, None, :]]  # [C,B,h,w]
        return picked.permute(1, 0, 2, 3)

    def foreground(self, alpha: torch.Tensor) -> torch.Tensor:
        """Foreground mask [B,1,h,w] bool: ``alpha`` [B,H,W,1] average-pooled onto the h x w grid, >= threshold."""
        _, h, w = self.shape
        a = alpha.detach().permute(0, 3, 1, 2).float()
        kernel = (a.shape[2] // h, a.shape[3] // w)
        pooled = F.avg_pool2d(a, kernel_size=kernel, stride=kernel) if kernel != (1, 1) else a
        return pooled >= self.mask_threshold

    def _deterministic(self, azimuth, elevation, alpha, batch):
        window = self.windows(azimuth, elevation)
        if alpha is None:
            self.last_mask = None
            return window
        mask = self.foreground(alpha).to(self.device)
        self.last_mask = mask
        return torch.where(mask, window, self.background.unsqueeze(0))


# -- construction ---------------------------------------------------------------------------------
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
    if config.kind == "random":
        return RandomNoise(shape, device)
    if config.kind == "constant":
        return ConstantNoise(shape, config.beta, generator, device)
    return WorldMapNoise(shape, config.beta, config.theta_deg, generator, device, config.mask_threshold)


# -- helpers --------------------------------------------------------------------------------------
def _angles(values: Angles) -> torch.Tensor:
    """Angles as a flat float64 CPU-or-device tensor [B] (float64 so that +360 deg lands on the same column)."""
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1)


def _randn(shape: tuple[int, ...], generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard normal noise of ``shape`` float32, drawn on the generator's device."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
