"""``worldmap`` (3D FSD): windows of a fixed noise map around the object, periodic in azimuth (docs/fsd.md sec. 3).

Each camera sees the window of the map that its viewing direction points at, inside the rendered silhouette,
and one fixed background noise outside it. Nearby cameras get shifted copies of the same noise.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from fsd_gs.errors import UserError
from fsd_gs.noise.base import Angles, NoiseFunction, NoiseKindSpec, as_angles, round_half_up

MAX_MAP_ELEMENTS = 1 << 27
"""Largest world map (elements; 512 MiB in float32) :func:`build_noise` agrees to draw."""


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
        """Top-left corners (row0 [B], col0 [B]) int64 of the windows of cameras at these angles (deg), on the angles'
        device (no copy to the host: on CUDA that would wait for the GPU's queue at every step)."""
        h_map, w_map = self.map_size
        az = as_angles(azimuth)
        el = as_angles(elevation)
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
        rows = row0.to(self.device, non_blocking=True)[:, None] + self._rows  # [B,h]
        cols = col0.to(self.device, non_blocking=True)[:, None] + self._cols  # [B,w]
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

    @classmethod
    def sample_many(
        cls,
        functions: Sequence[NoiseFunction],
        cameras: Sequence[Any],
        alphas: Sequence[Optional[torch.Tensor]],
        depths: Sequence[Optional[torch.Tensor]],
        generators: Sequence[Optional[torch.Generator]],
    ) -> list[torch.Tensor]:
        """Several assets' world maps sampled in one gather: the windows of every view from the stacked maps
        [K,C,H_map+h,W_map+w], one foreground pooling and one blend; each asset's fresh noise still comes from its own
        generator, so asset k's eps [B_k,C,h,w] equals its own :meth:`sample` bitwise. Maps of other sizes,
        thresholds, betas or devices, or a view without opacity, fall back to one call each."""
        maps = [f for f in functions if isinstance(f, WorldMapNoise)]
        first = maps[0] if maps else None
        if (
            first is None
            or len(maps) != len(functions)
            or len(maps) == 1
            or any(a is None for a in alphas)
            or any(_settings(f) != _settings(first) for f in maps)
        ):
            return super().sample_many(functions, cameras, alphas, depths, generators)
        counts = [int(c.azimuth.numel()) for c in cameras]
        for f, alpha, n in zip(maps, alphas, counts):
            f.check_alpha(alpha, n)  # type: ignore[arg-type]
        row0, col0 = first.window_origins(torch.cat([c.azimuth for c in cameras]), torch.cat([c.elevation for c in cameras]))
        device = first.device
        asset = torch.repeat_interleave(torch.arange(len(maps)), torch.tensor(counts)).to(device, non_blocking=True)
        rows = row0.to(device, non_blocking=True)[:, None] + first._rows  # [B,h]
        cols = col0.to(device, non_blocking=True)[:, None] + first._cols  # [B,w]
        stacked = torch.stack([f.full_map for f in maps])  # [K,C,H_map+h,W_map+w]
        window = stacked[asset[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [B,C,h,w]
        mask = first.foreground(torch.cat(list(alphas))).to(device)  # type: ignore[arg-type]
        backgrounds = torch.stack([f.background for f in maps])[asset]  # [B,C,h,w]
        det = torch.where(mask, window, backgrounds).to(alphas[0].device)  # type: ignore[union-attr]
        out = []
        for f, d, m, n, g in zip(maps, det.split(counts), mask.split(counts), counts, generators):
            f.last_mask, f.last_deterministic = m, d
            out.append(f.blend(d, n, g, d.device))
        return out


def _settings(noise: WorldMapNoise) -> tuple:
    """What must agree for world maps to be sampled together: sizes, threshold, beta, device."""
    return (noise.shape, noise.map_size, noise.mask_threshold, noise.beta, noise.device)


def make_world_map(config: Any, shape: Sequence[int], generator: torch.Generator, device: torch.device) -> WorldMapNoise:
    """The world map of ``config`` (beta, theta_deg, mask_threshold)."""
    return WorldMapNoise(shape, config.beta, config.theta_deg, generator, device, config.mask_threshold)


WORLDMAP = NoiseKindSpec("worldmap", "FSD's camera-dependent world-map noise (3D)", make=make_world_map)
