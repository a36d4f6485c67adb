"""Surface-attached noise: eps(c) tied to the 3D surface points a view sees (docs/surface-noise.md).

World-map noise (fsd_gs/noise/worldmap.py) ties the noise to the viewing direction only. Here the noise lives on
a fixed, seeded field of i.i.d. N(0, 1) values in 3D space, one value per channel per *texel*, a cube of
edge ``texel_size`` of a regular world-space grid (the value of a texel is a hash of its integer
coordinates and the run's seed, so the field is unbounded, costs no memory, and is the same on every
device). For one view:

1. Sub-samples: S x S points inside every latent pixel (for an SD render of 512 px onto a 64 px latent
   and S = 8, exactly the render pixel centres). Their depth is the rendered expected depth interpolated
   bilinearly with alpha premultiplied (bilinear(alpha * depth) / bilinear(alpha), so silhouettes do not
   mix in the empty background's depth 0); sub-samples whose interpolated alpha is below
   ``mask_threshold`` are not on the surface and are dropped.
2. Unprojection to world points with the camera's K and viewmat (kornia), and the texel each lands in.
3. Ownership: every distinct texel the view's sub-samples hit is given to exactly ONE latent pixel, the
   one that contains the mean latent-grid position of that texel's sub-samples (the texel's surface
   centroid as this view sees it).
4. eps_det of a latent pixel = (sum of the values of the texels it owns) / sqrt(number of them).

Because distinct latent pixels own disjoint sets of distinct texels, every latent pixel of a view is
exactly N(0, 1) and independent of every other (given the geometry), while a surface patch seen from
another camera is made of the same texels, so it gets the same noise (up to the texels at the edges of
the footprint, which the two views split differently). Background latent pixels (pooled alpha below
``mask_threshold``), and the rare foreground pixel that owns no texel, get the fixed background noise.
The result is blended with fresh noise by beta like every kind.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from fsd_gs.errors import UserError, require
from fsd_gs.noise.base import NoiseFunction, NoiseKindSpec

_M32 = 0xFFFFFFFF
_COORD_BITS = 21
_COORD_OFFSET = 1 << (_COORD_BITS - 1)
"""Texel coordinates are kept in [-2^20, 2^20) per axis (clamped), so three pack into one int64 key."""
_CHANNEL_SALT = 0x9E3779B9


def _pcg(x: torch.Tensor) -> torch.Tensor:
    """PCG hash of 32-bit words held in int64 (Jarzynski & Olano 2020): [...] -> [...] in [0, 2^32).

    Every product stays below 2^63, so the int64 arithmetic is exact and the same on every device.
    """
    state = (x * 747796405 + 2891336453) & _M32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & _M32
    return ((word >> 22) ^ word) & _M32


def _uniform(bits: torch.Tensor) -> torch.Tensor:
    """32-bit words -> float64 uniforms in (0, 1) (centres of the 2^32 bins, never 0 or 1)."""
    return (bits.double() + 0.5) * (1.0 / 4294967296.0)


class SurfaceNoise(NoiseFunction):
    """Noise attached to surface points: a seeded 3D field of texels, summed over each latent pixel's footprint.

    Attributes:
        texel_size: edge of one texel (a world-space cube), in world units.
        subsamples: S, the footprint of a latent pixel is sampled at S x S points.
        mask_threshold: pooled-opacity threshold of the foreground (and per-sub-sample surface threshold).
        background: the background noise [C,h,w], the same for every view.
        field_seeds: the two 31-bit seeds of the texel hash (drawn from the run's noise generator).
        last_mask: foreground [B,1,h,w] bool of the last call.
        last_texels: how many texels each latent pixel owned in the last call, [B,1,h,w] int64.
    """

    kind = "surface"
    needs_depth = True

    def __init__(
        self,
        shape: Sequence[int],
        beta: float,
        texel_size: float,
        subsamples: int,
        generator: torch.Generator,
        device: torch.device,
        mask_threshold: float = 0.5,
    ) -> None:
        super().__init__(shape, beta, device)
        require(texel_size > 0, f"--noise.texel-size must be positive, got {texel_size}")
        require(subsamples >= 1, f"--noise.subsamples must be >= 1, got {subsamples}")
        c, h, w = self.shape
        self.texel_size = float(texel_size)
        self.subsamples = int(subsamples)
        self.mask_threshold = float(mask_threshold)
        self.background = torch.randn((c, h, w), generator=generator, dtype=torch.float32).to(self.device)
        self.field_seeds = tuple(int(s) for s in torch.randint(0, 1 << 31, (2,), generator=generator))
        self.last_texels: Optional[torch.Tensor] = None
        self._geometry: Optional[tuple[Any, torch.Tensor]] = None

    # -- the 3D field ------------------------------------------------------------------------------
    def texel_keys(self, points: torch.Tensor) -> torch.Tensor:
        """int64 key of the texel each world point [...,3] lies in, [...] (three 21-bit coordinates packed)."""
        idx = torch.floor(points.double() / self.texel_size).long().clamp(-_COORD_OFFSET, _COORD_OFFSET - 1)
        idx = idx + _COORD_OFFSET
        return (idx[..., 0] << (2 * _COORD_BITS)) | (idx[..., 1] << _COORD_BITS) | idx[..., 2]

    def texel_values(self, keys: torch.Tensor) -> torch.Tensor:
        """The field's N(0, 1) values [...,C] float32 of the texels with these keys [...] (Box-Muller of two
        independent 32-bit hashes, so two texels share values only if both hashes collide)."""
        mask = (1 << _COORD_BITS) - 1
        coords = [(keys >> (2 * _COORD_BITS)) & mask, (keys >> _COORD_BITS) & mask, keys & mask]
        words = []
        for seed in self.field_seeds:
            h = torch.full_like(keys, seed)
            for q in coords:
                h = _pcg(q ^ h)
            words.append(h)
        channels = torch.arange(self.shape[0], device=keys.device, dtype=torch.int64) * _CHANNEL_SALT & _M32
        u1 = _uniform(_pcg(words[0][..., None] ^ channels))
        u2 = _uniform(_pcg(words[1][..., None] ^ channels))
        return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).float()

    def field(self, points: torch.Tensor) -> torch.Tensor:
        """The noise field at world points [...,3]: [...,C] float32 (e.g. to colour Gaussians by their noise)."""
        return self.texel_values(self.texel_keys(points))

    # -- one batch of views ------------------------------------------------------------------------
    def foreground(self, alpha: torch.Tensor) -> torch.Tensor:
        """Foreground mask [B,1,h,w] bool: ``alpha`` [B,H,W,1] average-pooled onto the h x w grid, >= threshold."""
        _, h, w = self.shape
        a = alpha.detach().permute(0, 3, 1, 2).float()
        return F.adaptive_avg_pool2d(a, (h, w)) >= self.mask_threshold

    def surface_samples(
        self, cameras: Any, alpha: torch.Tensor, depth: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """World points of the S x S sub-samples of every latent pixel that lie on the surface.

        Args:
            cameras: B cameras (viewmats [B,4,4], Ks [B,3,3] at the render size H x W).
            alpha, depth: rendered opacity and expected depth, [B,H,W,1].
        Returns:
            points [M,3] float64 (world), view [M] int64, latent [M,2] float64: the (row, col) position of
            each sub-sample on the latent grid (pixel (i, j) covers [i, i+1) x [j, j+1)).
        """
        _, h, w = self.shape
        batch, height, width = alpha.shape[:3]
        s = self.subsamples
        dev = depth.device
        a = alpha.detach().permute(0, 3, 1, 2).float()
        d = depth.detach().permute(0, 3, 1, 2).float()
        # Sub-sample centres in latent units, then in render pixels (pixel x covers [x, x+1), K's convention).
        lat_y = (torch.arange(h * s, device=dev, dtype=torch.float64) + 0.5) / s
        lat_x = (torch.arange(w * s, device=dev, dtype=torch.float64) + 0.5) / s
        pix_y, pix_x = lat_y * (height / h), lat_x * (width / w)
        grid = torch.stack(torch.meshgrid(2.0 * pix_x / width - 1.0, 2.0 * pix_y / height - 1.0, indexing="xy"), -1)
        grid = grid.float()[None].expand(batch, -1, -1, -1)  # [B,hS,wS,2] (x, y), align_corners=False
        picked = F.grid_sample(
            torch.cat([a * d, a], 1), grid, mode="bilinear", padding_mode="border", align_corners=False
        ).double()  # [B,2,hS,wS]
        a_s = picked[:, 1]
        z = picked[:, 0] / a_s.clamp_min(1e-10)
        on_surface = (a_s >= self.mask_threshold) & (z > 0)  # [B,hS,wS]

        from kornia.geometry.camera import unproject_points
        from kornia.geometry.linalg import transform_points

        uv = torch.stack(torch.meshgrid(pix_x, pix_y, indexing="xy"), -1).reshape(1, -1, 2).expand(batch, -1, -1)
        cam_pts = unproject_points(uv, z.reshape(batch, -1, 1), cameras.Ks.to(dev, torch.float64)[:, None])
        cam_to_world = torch.linalg.inv(cameras.viewmats.to(dev, torch.float64))
        world = transform_points(cam_to_world, cam_pts)  # [B,hS*wS,3]
        keep = on_surface.reshape(batch, -1)
        view = torch.arange(batch, device=dev)[:, None].expand_as(keep)[keep]
        latent = torch.stack(torch.meshgrid(lat_y, lat_x, indexing="ij"), -1).reshape(1, -1, 2).expand(batch, -1, -1)
        return world[keep], view, latent[keep]

    def surface_noise(self, cameras: Any, alpha: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The texel sums of every latent pixel, before the background is filled in.

        Returns:
            noise [B,C,h,w] float32 (sum of owned texels / sqrt(count); 0 where a pixel owns none) and
            count [B,1,h,w] int64 (the number of texels each latent pixel owns).
        """
        c, h, w = self.shape
        batch = alpha.shape[0]
        dev = depth.device
        points, view, latent = self.surface_samples(cameras, alpha, depth)
        keys = self.texel_keys(points)
        # Distinct (view, texel) pairs: sort by texel, then split by view (stays exact for any batch size).
        texels, texel_of = torch.unique(keys, return_inverse=True)
        pairs, pair_of = torch.unique(texel_of * batch + view, return_inverse=True)
        n_pairs = pairs.shape[0]
        hits = torch.bincount(pair_of, minlength=n_pairs).double()
        centroid = torch.zeros(n_pairs, 2, dtype=torch.float64, device=dev).index_add_(0, pair_of, latent)
        centroid = centroid / hits[:, None]
        row = torch.floor(centroid[:, 0]).long().clamp(0, h - 1)
        col = torch.floor(centroid[:, 1]).long().clamp(0, w - 1)
        owner = (pairs % batch) * (h * w) + row * w + col  # [P] flat latent pixel of each (view, texel)
        values = self.texel_values(texels[torch.div(pairs, batch, rounding_mode="floor")])  # [P,C]
        sums = torch.zeros(batch * h * w, c, dtype=torch.float32, device=dev).index_add_(0, owner, values)
        count = torch.bincount(owner, minlength=batch * h * w)
        noise = sums / count.clamp_min(1).float().sqrt()[:, None]
        noise = noise.reshape(batch, h, w, c).permute(0, 3, 1, 2)
        return noise, count.reshape(batch, 1, h, w)

    def sample(
        self,
        cameras: Any,
        alpha: Optional[torch.Tensor] = None,
        depth: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Noise for a batch of views from their render: eps [B,C,h,w] float32 on alpha's device.

        Args:
            cameras: the B rendered cameras (:class:`~fsd_gs.camera.Cameras`, at the render size of alpha).
            alpha, depth: rendered opacity and expected depth [B,H,W,1] (``render(..., with_depth=True)``),
                H, W multiples of h, w.
            generator: source of the fresh noise blended in by beta.
        """
        if alpha is None or depth is None:
            raise UserError("surface noise needs the rendered alpha and depth: render with with_depth=True and pass both")
        require(depth.shape == alpha.shape, f"depth {tuple(depth.shape)} and alpha {tuple(alpha.shape)} must both be [B,H,W,1]")
        require(len(cameras) == alpha.shape[0], f"{len(cameras)} cameras for {alpha.shape[0]} rendered views")
        require(
            (int(cameras.height), int(cameras.width)) == tuple(alpha.shape[1:3]),
            f"the cameras are {cameras.width}x{cameras.height} but the render is "
            f"{alpha.shape[2]}x{alpha.shape[1]}: pass the cameras the render was made with",
        )
        self._geometry = (cameras, depth)
        try:  # the base class checks shapes, blends with fresh noise and records last_deterministic
            return self(cameras.azimuth, cameras.elevation, alpha, generator)
        finally:
            self._geometry = None

    def _deterministic(self, azimuth, elevation, alpha, batch):
        if self._geometry is None or alpha is None:
            raise UserError("surface noise depends on the rendered depth: call noise.sample(cameras, alpha, depth, generator)")
        cameras, depth = self._geometry
        noise, count = self.surface_noise(cameras, alpha, depth.to(alpha.device))
        mask = self.foreground(alpha)
        self.last_mask = mask
        self.last_texels = count
        return torch.where(mask & (count > 0), noise, self.background.to(alpha.device).unsqueeze(0))


def make_surface(config: Any, shape: Sequence[int], generator: torch.Generator, device: torch.device) -> SurfaceNoise:
    """The surface noise of ``config`` (beta, texel_size, subsamples, mask_threshold)."""
    return SurfaceNoise(shape, config.beta, config.texel_size, config.subsamples, generator, device, config.mask_threshold)


SURFACE = NoiseKindSpec("surface", "noise attached to the rendered surface points (docs/surface-noise.md)", make=make_surface)
