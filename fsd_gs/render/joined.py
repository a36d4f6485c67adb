"""One render call for the assets of a grouped step (``--group-seeds``): gsplat's batch dimension over assets.

    outs = render_assets([g1, g2], [cams1, cams2], [bg1, bg2], RenderConfig())   # one RenderOutput per asset

Each asset's Gaussians are padded to the largest count with invisible ones (opacity sigmoid(-30) ~ 1e-13, below
gsplat's 1/255: its projection culls them, radius 0) and the K assets go through one ``gsplat.rasterization`` call
with a leading batch dimension: one projection, one tile intersection and one rasterization per step instead of K,
and one backward of each. Each asset gets exactly its own render back: its images, and info rows [C,N_k,...] of its
own Gaussians; its "means2d" is a :class:`RowsOf`, whose ``.grad`` (and ``.absgrad``) are its rows of the batch's
screen-space gradient after backward, which is what the densifier reads.

Where one call cannot serve, each asset is rendered on its own by :func:`fsd_gs.render.render`: the reference
backend (the CPU has no batch kernel to share), packed info, ``render.join_assets`` off, or assets whose image
size, camera count, SH degrees or dtype differ.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from fsd_gs.camera import Cameras
from fsd_gs.gaussians import Gaussians
from fsd_gs.render.config import RenderConfig, RenderOutput
from fsd_gs.render.dispatch import Prepared, finish, prepare, rasterize_prepared

BatchRasterizer = Callable[..., tuple[torch.Tensor, torch.Tensor, dict]]
"""``(params [K,N,...], sh_degree, viewmats [K,C,4,4], Ks [K,C,3,3], width, height, backgrounds [K,C,3], config,
with_depth=...) -> (colors [K,C,H,W,D], alphas [K,C,H,W,1], meta)``: gsplat's rasterization with a batch dimension."""

PAD_VALUES = {"means": 0.0, "scales": -7.0, "opacities": -30.0, "sh0": 0.0, "shN": 0.0}
"""Raw values of padding Gaussians (quats: the identity rotation): at the origin, scale e^-7, opacity ~1e-13."""


class RowsOf:
    """Asset k's rows [C,N_k,2] of a batch's screen-space means [K,C,N,2], as the densifier uses them.

    A slice of the batch tensor would never receive a gradient (backward flows through the batch tensor, not
    through a view taken off it), so ``grad`` and ``absgrad`` slice the batch's after backward.
    """

    def __init__(self, batch: torch.Tensor, index: int, count: int) -> None:
        self.batch, self.index, self.count = batch, index, count
        self.is_leaf = False

    @property
    def requires_grad(self) -> bool:
        return self.batch.requires_grad

    @property
    def retains_grad(self) -> bool:
        return self.batch.retains_grad

    def retain_grad(self) -> None:
        self.batch.retain_grad()

    def _rows(self, value: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if value is None else value[self.index, :, : self.count]

    @property
    def grad(self) -> Optional[torch.Tensor]:
        """d loss / d means2d of this asset's rows, [C,N_k,2] (None before backward)."""
        return self._rows(self.batch.grad)

    @property
    def absgrad(self) -> Optional[torch.Tensor]:
        """gsplat's summed |d loss / d means2d| of this asset's rows (None unless rendered with absgrad)."""
        return self._rows(getattr(self.batch, "absgrad", None))


def render_assets(
    assets: Sequence[Gaussians],
    cameras: Sequence[Cameras],
    backgrounds: Sequence[torch.Tensor],
    config: RenderConfig | None = None,
    with_depth: bool = False,
    batch_rasterizer: Optional[BatchRasterizer] = None,
) -> list[RenderOutput]:
    """Render asset k's Gaussians into cameras[k] over backgrounds[k], for every k: one batched call where it can.

    Args:
        assets: K Gaussian sets (counts may differ). cameras: K camera batches (C each, on the assets' device).
        backgrounds: K backgrounds, [3] or [C,3] each. config, with_depth: as :func:`fsd_gs.render.render`.
        batch_rasterizer: the batched call (None: gsplat's, on CUDA); tests pass one made of reference renders.
    Returns:
        K RenderOutputs, each what ``render(assets[k], cameras[k], backgrounds[k], config, with_depth)`` gives, up to
        float summation order.
    """
    cfg = config if config is not None else RenderConfig()
    if not len(assets) == len(cameras) == len(backgrounds):
        raise ValueError(f"{len(assets)} assets, {len(cameras)} camera batches and {len(backgrounds)} backgrounds")
    prepared = [prepare(g, c, b, cfg) for g, c, b in zip(assets, cameras, backgrounds)]
    if batch_rasterizer is None and prepared and prepared[0].backend == "gsplat":
        from fsd_gs.render.gsplat_backend import rasterize_gsplat

        batch_rasterizer = rasterize_gsplat
    if batch_rasterizer is None or not joinable(assets, prepared, cfg):
        return [rasterize_prepared(g, p, cfg, with_depth) for g, p in zip(assets, prepared)]
    first = prepared[0]
    counts = [len(g) for g in assets]
    params = padded_params(assets, max(counts))
    colors, alphas, meta = batch_rasterizer(
        params,
        first.sh_degree,
        torch.stack([p.viewmats for p in prepared]),
        torch.stack([p.Ks for p in prepared]),
        first.width,
        first.height,
        torch.stack([p.backgrounds for p in prepared]),
        cfg,
        with_depth=with_depth,
    )
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    n_cams = first.viewmats.shape[0]
    outs = []
    for k, count in enumerate(counts):
        info = {
            "means2d": RowsOf(means2d, k, count),
            "radii": meta["radii"][k, :, :count],
            "depths": meta["depths"][k, :, :count],
            "conics": meta["conics"][k, :, :count],
            "gaussian_ids": None,
            "camera_ids": None,
            "n_intersections": int(meta["flatten_ids"].shape[0]),  # of the whole batch: gsplat does not split it
            "width": first.width,
            "height": first.height,
            "n_cameras": n_cams,
            "backend": first.backend,
        }
        outs.append(finish(colors[k], alphas[k], info, cfg, with_depth))
    return outs


def joinable(assets: Sequence[Gaussians], prepared: Sequence[Prepared], cfg: RenderConfig) -> bool:
    """True when one batched call can render every asset: several of them, dense info, one image size, camera count,
    SH degree (stored and rendered), dtype and device."""
    if len(assets) < 2 or not cfg.join_assets or cfg.packed:
        return False
    first, g0 = prepared[0], assets[0]

    def key(p: Prepared, g: Gaussians) -> tuple:
        return (p.width, p.height, p.viewmats.shape[0], p.sh_degree, g.sh_degree, g.params["means"].dtype, g.device)

    return all(key(p, g) == key(first, g0) for p, g in zip(prepared, assets))


def padded_params(assets: Sequence[Gaussians], count: int) -> dict[str, torch.Tensor]:
    """The assets' raw parameters stacked along a new leading dimension, each padded to ``count`` Gaussians with
    invisible ones (PAD_VALUES): [K,count,...] per key, in the autograd graph of every asset's parameters."""
    out = {}
    for key in assets[0].params.keys():
        rows = []
        for g in assets:
            value = g.params[key]
            extra = count - value.shape[0]
            if extra:
                if key == "quats":
                    pad = value.new_zeros(extra, 4)
                    pad[:, 0] = 1.0  # a fill on the device: no host-to-device copy, no wait for the GPU's queue
                else:
                    pad = value.new_full((extra, *value.shape[1:]), PAD_VALUES[key])
                value = torch.cat([value, pad])
            rows.append(value)
        out[key] = torch.stack(rows)
    return out
