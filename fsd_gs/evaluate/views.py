"""The images that get scored: fixed-orbit views of assets, of the shapes world's own objects, and DDIM samples.

Every asset of every method is rendered from the same cameras (:func:`eval_cameras`: V views evenly spaced
in azimuth at one elevation, distance and field of view; the paper uses 24) over the same background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fsd_gs.camera import Cameras, turntable, view_directions
from fsd_gs.gaussians import Gaussians
from fsd_gs.render import RenderConfig, render

if TYPE_CHECKING:
    from fsd_gs.prior.base import DiffusionPrior


@dataclass
class ViewConfig:
    """The fixed orbit every asset is rendered from."""

    views: int = 24
    """Views per asset, evenly spaced in azimuth starting at the front (the paper: 24)."""
    elevation: float = 15.0
    """Elevation of the orbit, degrees."""
    distance: float = 2.5
    """Camera distance from the origin."""
    fovy: float = 50.0
    """Vertical field of view, degrees."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour (RGB in [0,1])."""


def eval_cameras(config: ViewConfig, size: int, device: torch.device | str = "cpu") -> Cameras:
    """The ``config.views`` evaluation cameras at ``size`` x ``size`` pixels."""
    return turntable(config.views, config.elevation, config.distance, config.fovy, size, size, device)


@torch.no_grad()
def render_views(
    gaussians: Gaussians,
    cameras: Cameras,
    background: tuple[float, float, float],
    render_config: RenderConfig | None = None,
    chunk: int = 8,
) -> torch.Tensor:
    """Views [V,3,H,W] in [0,1] (float32, CPU) of ``gaussians`` from ``cameras`` (on the Gaussians' device)."""
    bg = torch.tensor(background, dtype=torch.float32, device=gaussians.device)
    frames = [render(gaussians, cameras[i : i + chunk], bg, render_config).rgb for i in range(0, len(cameras), chunk)]
    return torch.cat(frames).clamp(0, 1).permute(0, 3, 1, 2).float().cpu().contiguous()


def world_object(prompt: str, index: int, seed_offset: int = 10_000) -> tuple[Gaussians, str]:
    """Object ``index`` of the shapes world for ``prompt`` (the truth): the prompt's kind, its colour or a
    uniformly random one when it names none, proportions from a generator seeded ``seed_offset + index``.
    Returns (Gaussians on the CPU, colour name)."""
    from fsd_gs.shapes.captions import parse
    from fsd_gs.shapes.world import COLOUR_NAMES, make_object

    kind, colour, _ = parse(prompt)
    if kind is None:
        raise ValueError(f"the prompt {prompt!r} names no kind of the shapes world")
    gen = torch.Generator().manual_seed(seed_offset + index)
    if colour is None:
        colour = COLOUR_NAMES[int(torch.randint(len(COLOUR_NAMES), (), generator=gen))]
    obj = make_object(kind, colour, gen)
    return obj.gaussians, obj.colour


@torch.no_grad()
def ddim_images(
    prior: DiffusionPrior, prompt: str, cameras: Cameras, n_samples: int, guidance_scale: float, steps: int, seed: int = 0
) -> torch.Tensor:
    """The paper's "DDIM images": ``n_samples`` images [S,3,H,W] in [0,1] (CPU) of ``prompt`` from the prior
    with the prior's sampler (:func:`fsd_gs.sampling.sample`: DDIM with eta 0, or Euler for a flow prior), sample i
    from x_T ~ N(0,I) seeded ``seed + i`` and prompted with the view name of camera
    ``i * V // S`` (view-dependent prompts, as in training)."""
    from fsd_gs.sampling import sample

    views = view_directions(cameras)
    names = [views[(i * len(views)) // n_samples] for i in range(n_samples)]
    emb = prior.encode_prompts(prompt, "", view_dependent=True)
    conditioning = emb.select(names)
    c, h, w = prior.model_shape(prior.resolution, prior.resolution)
    noise = torch.stack([torch.randn(c, h, w, generator=torch.Generator().manual_seed(seed + i)) for i in range(n_samples)])
    z = sample(prior, noise, conditioning, guidance_scale, steps)
    return prior.decode(z).clamp(0, 1).float().cpu()
