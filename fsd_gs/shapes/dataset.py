"""On-the-fly training batches of the shapes world: objects -> orbit cameras -> renders + captions + labels.

Objects are built on the CPU (:func:`fsd_gs.shapes.world.sample_object`), rendered with
:func:`fsd_gs.render.render` from the camera distribution of the built-in presets
(:func:`world_camera_config`) over a white, grey or random-colour background. Several views of each
object are drawn (stratified in azimuth, so they surround it). On CUDA all objects of a batch are
rendered in ONE rasterizer call: object j is moved to ``offset_j`` (far apart), its cameras look at it,
and the far plane hides the other objects. Same generator state, same batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fsd_gs.camera import VIEW_NAMES, CameraConfig, Cameras, orbit_cameras, wrap_azimuth
from fsd_gs.gaussians import Gaussians
from fsd_gs.render import RenderConfig, render
from fsd_gs.shapes.captions import CaptionConfig, sample_captions, view_of
from fsd_gs.shapes.world import COLOUR_NAMES, KINDS, ShapeObject, WorldConfig, sample_object

OBJECT_SPACING = 100.0
"""Distance between objects rendered together in one call (far beyond the far plane)."""
FAR_PLANE = 20.0
"""Far plane while rendering several objects at once: beyond every camera's own object, short of the others."""


def world_camera_config(resolution: int = 64) -> CameraConfig:
    """The orbit cameras of the shapes world (and of configs/shapes-*.yaml): distance 2.5, fovy 40-70 deg,
    elevation -10..80 deg (about 10% of views are "overhead"), all azimuths."""
    return CameraConfig(
        batch_size=4,
        width=resolution,
        height=resolution,
        azimuth_range=(-180.0, 180.0),
        elevation_range=(-10.0, 80.0),
        distance_range=(2.5, 2.5),
        fovy_range=(40.0, 70.0),
        stratified_azimuth=True,
    )


@dataclass
class DatasetConfig:
    """How training batches are drawn."""

    resolution: int = 64
    """Image size in pixels (square)."""
    views_per_object: int = 4
    """Views rendered of every object (stratified in azimuth around it)."""
    p_white: float = 0.6
    """Share of views over a white background."""
    p_grey: float = 0.2
    """Share of views over a uniform grey in [0.3, 1]; the rest get a uniformly random RGB colour."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """How objects are built."""
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    """How captions are drawn."""
    render: RenderConfig = field(default_factory=RenderConfig)
    """Rasterizer settings (backend auto: gsplat on CUDA, the reference rasterizer on CPU)."""


@dataclass
class Batch:
    """B = objects x views_per_object rendered views.

    Attributes:
        images: [B,3,H,W] in [0,1].
        captions: B training captions (some empty, some without colour or view).
        kind, colour, view: labels [B] (indices into KINDS, COLOUR_NAMES and VIEW_NAMES).
        azimuth, elevation: camera angles in degrees, [B].
    """

    images: torch.Tensor
    captions: list[str]
    kind: torch.Tensor
    colour: torch.Tensor
    view: torch.Tensor
    azimuth: torch.Tensor
    elevation: torch.Tensor


def sample_backgrounds(n: int, generator: torch.Generator, config: DatasetConfig) -> torch.Tensor:
    """Backgrounds [n,3]: white, a grey, or a random colour, in the shares of ``config``."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    grey = 0.3 + 0.7 * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    colour = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    bg = torch.where(
        (u < config.p_white)[:, None],
        torch.ones(n, 3, dtype=torch.float64),
        torch.where((u < config.p_white + config.p_grey)[:, None], grey.expand(n, 3), colour),
    )
    return bg.float()


def sample_cameras(
    n_objects: int, views: int, config: CameraConfig, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Cameras:
    """``views`` cameras per object, [n_objects * views], drawn like :class:`fsd_gs.camera.OrbitSampler` does:
    azimuth stratified per object (a random rotation plus one random angle per bin of 360/views degrees, so the
    views surround it), elevation uniform on the sphere's band, distance and fovy uniform."""
    n = n_objects * views
    lo, hi = config.azimuth_range
    bins = torch.arange(views, dtype=torch.float64).repeat(n_objects) + torch.rand(n, generator=generator, dtype=torch.float64)
    offset = torch.rand(n_objects, generator=generator, dtype=torch.float64).repeat_interleave(views)
    azimuth = wrap_azimuth((lo + (hi - lo) * ((bins / views + offset) % 1.0)).float())
    s_lo, s_hi = (math.sin(math.radians(e)) for e in config.elevation_range)
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    elevation = torch.rad2deg(torch.asin((s_lo + (s_hi - s_lo) * u[:, 0]).clamp(-1, 1))).float()
    distance = (config.distance_range[0] + (config.distance_range[1] - config.distance_range[0]) * u[:, 1]).float()
    fovy = (config.fovy_range[0] + (config.fovy_range[1] - config.fovy_range[0]) * u[:, 2]).float()
    return orbit_cameras(azimuth, elevation, distance, fovy, config.width, config.height).to(device)


def _translated(cameras: Cameras, offsets: torch.Tensor) -> Cameras:
    """The cameras looking at objects moved by ``offsets`` [B,3] (viewmat @ translate(-offset))."""
    shift = torch.eye(4, device=offsets.device).repeat(offsets.shape[0], 1, 1)
    shift[:, :3, 3] = -offsets
    return Cameras(
        cameras.viewmats @ shift,
        cameras.Ks,
        cameras.width,
        cameras.height,
        cameras.azimuth,
        cameras.elevation,
        cameras.distance,
        cameras.fovy,
    )


def render_objects(
    objects: list[Gaussians],
    cameras: Cameras,
    backgrounds: torch.Tensor,
    views_per_object: int,
    config: RenderConfig | None = None,
    together: bool | None = None,
) -> torch.Tensor:
    """Render view ``i`` of ``cameras`` [B = len(objects) x views] of object ``i // views_per_object``.

    ``together`` (default: on CUDA) renders all objects in one call, moved ``OBJECT_SPACING`` apart.
    Returns images [B,3,H,W] in [0,1].
    """
    config = config or RenderConfig()
    device = cameras.device
    together = device.type == "cuda" if together is None else together
    if not together:
        outs = []
        for j, g in enumerate(objects):
            sl = slice(j * views_per_object, (j + 1) * views_per_object)
            outs.append(render(g, cameras[sl], backgrounds[sl], config).rgb)
        return torch.cat(outs).permute(0, 3, 1, 2).contiguous()
    offsets = torch.zeros(len(objects), 3, device=device)
    offsets[:, 0] = OBJECT_SPACING * torch.arange(len(objects), device=device)
    params = {key: torch.cat([g.params[key].detach() for g in objects]) for key in objects[0].params}
    counts = torch.tensor([len(g) for g in objects], device=device)
    params["means"] = params["means"] + torch.repeat_interleave(offsets, counts, dim=0)
    merged = Gaussians(params, sh_degree=objects[0].sh_degree)
    cams = _translated(cameras, offsets.repeat_interleave(views_per_object, dim=0))
    cfg = RenderConfig(**{**config.__dict__, "far_plane": FAR_PLANE})
    return render(merged, cams, backgrounds, cfg).rgb.permute(0, 3, 1, 2).contiguous()


class ShapesDataset:
    """Draws :class:`Batch` es of freshly built and rendered objects."""

    def __init__(self, config: DatasetConfig | None = None, device: torch.device | str = "cpu") -> None:
        self.config = config or DatasetConfig()
        self.device = torch.device(device)
        self.camera_config = world_camera_config(self.config.resolution)

    def objects(self, n: int, generator: torch.Generator) -> list[ShapeObject]:
        """``n`` random objects (CPU)."""
        return [sample_object(generator, self.config.world) for _ in range(n)]

    def cameras(self, n_objects: int, generator: torch.Generator) -> Cameras:
        """The ``n_objects * views_per_object`` cameras of one batch (:func:`sample_cameras`; subclasses may draw
        other views, e.g. the multi-view trainer's groups 90 deg apart)."""
        return sample_cameras(n_objects, self.config.views_per_object, self.camera_config, generator, self.device)

    def render(self, objects: list[ShapeObject], generator: torch.Generator, together: bool | None = None) -> Batch:
        """Render ``views_per_object`` random views of every object, with captions and labels."""
        cfg = self.config
        v = cfg.views_per_object
        cameras = self.cameras(len(objects), generator)
        backgrounds = sample_backgrounds(len(objects) * v, generator, cfg).to(self.device)
        gaussians = [o.gaussians if o.gaussians.device.type == self.device.type else o.gaussians.to(self.device) for o in objects]
        with torch.no_grad():
            images = render_objects(gaussians, cameras, backgrounds, v, cfg.render, together)
        kinds = [o.kind for o in objects for _ in range(v)]
        colours = [o.colour for o in objects for _ in range(v)]
        az, el = cameras.azimuth.cpu(), cameras.elevation.cpu()
        views = [VIEW_NAMES.index(view_of(a, e)) for a, e in zip(az.tolist(), el.tolist())]
        return Batch(
            images=images,
            captions=sample_captions(kinds, colours, az, el, generator, cfg.captions),
            kind=torch.tensor([KINDS.index(k) for k in kinds]),
            colour=torch.tensor([COLOUR_NAMES.index(c) for c in colours]),
            view=torch.tensor(views),
            azimuth=az,
            elevation=el,
        )

    def sample(self, n_objects: int, generator: torch.Generator) -> Batch:
        """``n_objects`` new objects x ``views_per_object`` views."""
        return self.render(self.objects(n_objects, generator), generator)
