"""One optimisation step of docs/design.md, as an object built once per run.

    step = DistillStep(cfg, prior, device)       # builds sampler, Gaussians + Adam, noise, schedule, densifier, RNGs
    result = step()                              # cameras -> render -> noise -> t -> distill -> backward -> Adam -> densify
    state = step.state_dict()                    # everything that changes during a run (tensors + plain values)
    step.load_state_dict(state)                  # continue bitwise where ``state`` was taken
    step.steps_done                              # completed steps

The step's public phases, which :func:`step_together` uses to share one render call and one prior call between
assets: ``pending = step.prepare()`` (``views = step.sample_views()`` -> render -> ``step.after_render(...)``: noise,
t), ``loss = step.loss(pending)`` (the prior),
``step.pre_backward(pending)``, ``loss.backward()``, ``result = step.update(pending, loss)`` (Adam -> densify).

Nothing here reads or writes files, shows progress, handles signals or talks to the viewer: that is the
run's job (fsd_gs/run/). Nothing here knows which prior, noise kind or renderer it has.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from fsd_gs import perp_neg
from fsd_gs.adam_together import step_adams
from fsd_gs.camera import Cameras, OrbitSampler, sample_together
from fsd_gs.config import TrainConfig
from fsd_gs.densify import Densifier
from fsd_gs.distill import distill_loss
from fsd_gs.errors import UserError
from fsd_gs.gaussians import Gaussians, make_optimizers
from fsd_gs.initialize import init_gaussians
from fsd_gs.methods import make_guidance
from fsd_gs.noise import build_noise
from fsd_gs.noise.base import sample_together as noise_together
from fsd_gs.prior.base import DiffusionPrior, NegativeViews
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.profiling import StageTimer
from fsd_gs.render import render
from fsd_gs.render.joined import render_assets
from fsd_gs.schedule import sample_timestep

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5)}
RNG_NAMES = ("camera", "timestep", "noise", "background")
"""Each random choice of a step draws from its own generator, seeded seed + index (noise: seed + 2)."""


class NonFiniteLoss(RuntimeError):
    """The loss or the Gaussian parameters became NaN or Inf."""


@dataclass
class StepResult:
    """What one step produced (tensors stay on the device; nothing here forces a host sync).

    Attributes:
        loss: scalar loss (detached).
        timestep: integer timesteps [B].
        rgb: the renders [B,H,W,3] (detached).
        eps: the noise the views were diffused with [B,C,h,w].
        cameras: the step's cameras (on the CPU).
    """

    loss: torch.Tensor
    timestep: torch.Tensor
    rgb: torch.Tensor
    eps: torch.Tensor
    cameras: Cameras


@dataclass
class PendingStep:
    """A step between render and loss: what the prior call needs (used to batch several assets' prior calls)."""

    rgb: torch.Tensor  # [B,3,H,W], in the autograd graph
    eps: torch.Tensor
    t: torch.Tensor
    conditioning: Optional[Conditioning]  # the views' prompt conditioning (opaque: passed to the prior); None: not yet
    cameras: Cameras
    render_out: Any
    negatives: Optional[NegativeViews] = None  # Perp-Neg's negative prompts of the views (None: off)
    cameras_cpu: Optional[Cameras] = None  # the sampled cameras, for the result (no device-to-host copy, no sync)


@dataclass
class SampledViews:
    """A step's views as drawn on the host, before anything goes to the device.

    Attributes:
        cameras: the sampled cameras, at the prior's image size, on the CPU ([B] batch).
        names: the views' prompt names ("front", ... or "none" without view-dependent prompts), B of them.
        background: the background colour of each view, [B,3] on the CPU.
    """

    cameras: Cameras
    names: list[str]
    background: torch.Tensor


def views_on_device(views: Sequence[SampledViews], device: torch.device) -> tuple[list[Cameras], list[torch.Tensor]]:
    """Each step's cameras and backgrounds on ``device``, with one host-to-device copy per tensor for all the steps
    (non-blocking: a blocking copy would wait for the GPU's queue)."""
    cams = Cameras.cat([v.cameras for v in views]).to(device, non_blocking=True)
    backgrounds = torch.cat([v.background for v in views]).to(device, non_blocking=True)
    out_cams, out_backgrounds, start = [], [], 0
    for v in views:
        stop = start + len(v.cameras)
        out_cams.append(cams[start:stop])
        out_backgrounds.append(backgrounds[start:stop])
        start = stop
    return out_cams, out_backgrounds


@contextlib.contextmanager
def cpu_threads(count: int, device: torch.device) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads on a CPU device (restored afterwards).

    CPU results are bitwise reproducible for a fixed thread count; pinning the count makes them
    independent of OMP_NUM_THREADS and of the machine (docs/design.md, determinism).
    """
    if device.type != "cpu" or count <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class DistillStep:
    """Owns the parts of one run and advances it one optimisation step per call.

    Attributes:
        cfg: the run's configuration; prior: the diffusion prior; device: where the Gaussians live.
        steps_done: completed steps (the step counter; a run's folder and report call it steps_done too).
        gaussians: the Gaussians being optimised; optimizers: one Adam per parameter key.
        noise: the noise function eps(c); sampler: the camera sampler; densifier + densify_state.
        generators: one torch.Generator per random choice (RNG_NAMES).
        densify_counts: totals of densification events (split, duplicated, pruned, ...).
        timer: per-stage timer (off unless enabled by a benchmark).
    """

    def __init__(self, cfg: TrainConfig, prior: DiffusionPrior, device: torch.device) -> None:
        """Build every part; every check that can fail on bad options happens here, before any file is written."""
        self.cfg = cfg
        self.prior = prior
        self.device = torch.device(device)
        if cfg.deterministic and self.device.type == "cuda":
            torch.use_deterministic_algorithms(True, warn_only=True)  # what torch can; gsplat's atomics stay
        cam = cfg.camera
        self.prior_size = (cam.height, cam.width)
        prior.check_image_size(cam.height, cam.width)
        if cam.batch_size % prior.views_per_group:
            raise UserError(
                f"this prior denoises views in groups of {prior.views_per_group}: set camera.batch_size to a "
                f"multiple of {prior.views_per_group}"
            )
        self.embeddings = prior.encode_prompts(
            cfg.prompt,
            cfg.negative_prompt,
            cfg.guidance.view_dependent,
            suffixes=cfg.guidance.view_prompts.suffixes(prior.view_suffixes),
        )
        self.guidance = make_guidance(cfg.method, prior, self.embeddings, cfg.method_options, seed=cfg.seed)
        self.noise = build_noise(cfg.noise, prior.model_shape(cam.height, cam.width), seed=cfg.seed, device=self.device)
        self.noise.check_resolution(cam.height, cam.width)
        self.sampler = make_sampler(cfg.camera, prior.views_per_group)
        self.generators = make_generators(cfg.seed, self.device)
        self.gaussians = init_gaussians(cfg.gaussians, torch.Generator().manual_seed(cfg.seed + 4), self.device)
        self.optimizers = make_optimizers(self.gaussians, cfg.optim.lr)
        self.densifier = Densifier(cfg.densify, scene_scale=1.0, total_steps=cfg.steps, seed=cfg.seed + 5)
        self.densify_state = self.densifier.initialize_state()
        self.densify_counts: dict[str, int] = {}
        self.steps_done = 0
        self.timer = StageTimer(self.device, enabled=False)

    # -- schedules --------------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Fraction of the run done, tau in [0, 1]."""
        return self.steps_done / max(1, self.cfg.steps)

    def render_size(self) -> tuple[int, int]:
        """(height, width) of this step's render: the prior's size, or smaller early on with progressive resolution."""
        start, until = self.cfg.optim.progressive_start, self.cfg.optim.progressive_until
        if start is None:
            return self.prior_size
        frac = min(1.0, self.steps_done / max(1.0, until * self.cfg.steps))
        h, w = self.prior_size
        return (max(8, min(h, int(round(start + (h - start) * frac)))), max(8, min(w, int(round(start + (w - start) * frac)))))

    # -- one step, in public phases (so that several assets can share one prior call) ---------------
    def prepare(self) -> PendingStep:
        """cameras -> render -> noise -> t: everything before the prior."""
        with self.timer("cameras"):
            views = self.sample_views()
            (cams,), (background,) = views_on_device([views], self.device)
            cams = with_size(cams, self.render_size())
        with self.timer("render"):
            out = render(self.gaussians, cams, background, self.cfg.render, with_depth=self.noise.needs_depth)
        return self.after_render(views, cams, out)

    def sample_views(self, cams_cpu: Optional[Cameras] = None) -> SampledViews:
        """Start a step on the host: the SH degree and the means' learning rate of this step, then its cameras (drawn
        here, or ``cams_cpu`` when :func:`~fsd_gs.camera.sample_together` drew them from this step's camera generator),
        their view names and its backgrounds, drawn on the CPU (nothing here touches the device)."""
        cfg = self.cfg
        self.gaussians.step_sh_degree(self.steps_done, cfg.gaussians.sh_degree_interval)
        set_lr(self.optimizers["means"], means_lr(cfg.optim.lr, self.progress))
        cams = self.sampler.sample(self.generators["camera"]) if cams_cpu is None else cams_cpu
        views = cfg.guidance.view_prompts.view_names(cams) if cfg.guidance.view_dependent else ["none"] * len(cams)
        background = background_colours(cfg.optim.background, len(cams), self.generators["background"], torch.device("cpu"))
        return SampledViews(cams, list(views), background)

    def after_render(self, views: SampledViews, cams: Cameras, out: Any) -> PendingStep:
        """render -> noise -> t: the render at the prior's size, the noise, the timesteps and the views' prompts
        (:func:`after_render_together` does the same for several steps, without the prompts)."""
        cfg = self.cfg
        with self.timer("noise_and_t"):
            rgb, alpha, depth = resized_render(out, self.prior_size)
            cams = with_size(cams, self.prior_size)
            eps = self.noise.sample(cams, alpha, depth, self.generators["noise"])
            t = draw_timesteps(self, len(cams)).to(self.device, non_blocking=True)
            conditioning, negatives = select_prompts(self.embeddings, cfg.guidance, views.cameras, views.names)
        return PendingStep(rgb, eps, t, conditioning, cams, out, negatives, views.cameras)

    def pre_backward(self, pending: PendingStep) -> None:
        """Let the densifier hook the render's 2D means before backward (gsplat's strategy interface)."""
        self.densifier.step_pre_backward(
            self.gaussians.params, self.optimizers, self.densify_state, self.steps_done, pending.render_out.info
        )

    def update(self, pending: PendingStep, loss: torch.Tensor) -> StepResult:
        """optimizer -> densify, after backward has filled the gradients."""
        with self.timer("optimizer"):
            optimizer_step([self])
        return self.after_optimizer(pending, loss)

    def after_optimizer(self, pending: PendingStep, loss: torch.Tensor) -> StepResult:
        """densify, after the optimizers have stepped: the step's result."""
        cfg, timer, params = self.cfg, self.timer, self.gaussians.params
        with timer("densify"):
            info, state, packed = pending.render_out.info, self.densify_state, cfg.render.packed
            counts = self.densifier.step_post_backward(params, self.optimizers, state, self.steps_done, info, packed=packed)
            counts = counts or {}
        for key, value in counts.items():
            self.densify_counts[key] = self.densify_counts.get(key, 0) + int(value)
        self.gaussians.ensure_not_empty()
        self.steps_done += 1
        cameras = pending.cameras_cpu if pending.cameras_cpu is not None else pending.cameras.to("cpu")
        return StepResult(loss.detach(), pending.t, pending.render_out.rgb.detach(), pending.eps, cameras)

    def loss(self, pending: PendingStep) -> torch.Tensor:
        """The distillation loss of a prepared step (the prior call): a scalar in the autograd graph."""
        cfg, conditioning = self.cfg, pending.conditioning
        if conditioning is None:
            raise ValueError("a step made by after_render_together has no prompts: step_together selects them for all")
        with self.timer("prior"):
            return distill_loss(
                self.prior,
                pending.rgb,
                pending.eps,
                pending.t,
                conditioning,
                cfg.guidance.guidance_scale,
                weighting=cfg.guidance.weighting,
                hifa_lambda=cfg.guidance.hifa_lambda,
                cameras=pending.cameras,
                guidance=self.guidance,
                negatives=pending.negatives,
            ).loss

    def __call__(self) -> StepResult:
        """One optimisation step: cameras -> render -> noise -> t -> distill -> backward -> Adam -> densify."""
        with cpu_threads(self.cfg.threads, self.device):
            pending = self.prepare()
            loss = self.loss(pending)
            with self.timer("backward"):
                self.pre_backward(pending)
                loss.backward()
            return self.update(pending, loss)

    # -- state ------------------------------------------------------------------------------------
    def params_finite(self) -> bool:
        """True when every Gaussian parameter is finite (one host sync)."""
        return all(bool(torch.isfinite(v).all()) for v in self.gaussians.params.values())

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during a run: a nested dict of tensors (on the CPU) and plain values."""
        return {
            "step": self.steps_done,
            "gaussians": {
                "params": {k: v.detach().cpu() for k, v in self.gaussians.params.items()},
                "sh_degree": self.gaussians.sh_degree,
                "active_sh_degree": self.gaussians.active_sh_degree,
            },
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "densify": self.densifier.state_to_tensors(self.densify_state),
            "rng": {name: gen.get_state() for name, gen in self.generators.items()},
            "densify_counts": dict(self.densify_counts),
            "guidance": self.guidance.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (of :meth:`state_dict`, same config): the next step is bitwise the one that followed it."""
        g = state["gaussians"]
        self.gaussians = Gaussians(
            {k: v.to(self.device) for k, v in g["params"].items()}, int(g["sh_degree"]), int(g["active_sh_degree"])
        )
        self.optimizers = make_optimizers(self.gaussians, self.cfg.optim.lr)
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])  # moves the state to the parameters' device
        self.densify_state = self.densifier.state_from_tensors(
            {k: (v.to(self.device) if v is not None else None) for k, v in state["densify"].items()}
        )
        for name, value in state["rng"].items():
            self.generators[name].set_state(value)
        self.steps_done = int(state["step"])
        self.densify_counts = dict(state.get("densify_counts", {}))
        self.guidance.load_state_dict(state.get("guidance", {}))


def step_together(steps: Sequence[DistillStep]) -> list[StepResult]:
    """One step of several assets of one prompt with ONE prior call for all their views.

    The assets are rendered by one call where the backend can (gsplat: fsd_gs/render/joined.py, each asset's
    images and screen-space gradients its own) and their renders concatenated into one batch for the prior; the
    loss of the batch, times the number of
    assets, gives each asset exactly the gradient of its own step (the assets share no parameters, and
    K / (K B) rounds to 1 / B), so only the prior's batched arithmetic differs from K separate steps.
    Every step must have the same prior, prompt, guidance and image size.
    """
    first = steps[0]
    if any(s.guidance.stateful for s in steps):
        raise UserError(
            f"--method {first.cfg.method} trains a model per asset (its LoRA): train its seeds one at a time "
            "(batch: --group-seeds 1)"
        )
    with cpu_threads(first.cfg.threads, first.device):
        with first.timer("cameras"):  # every seed's angles from its own generator, their geometry built once
            same = all(s.cfg.camera == first.cfg.camera for s in steps)
            drawn = sample_together(first.sampler, [s.generators["camera"] for s in steps]) if same else [None] * len(steps)
            views = [s.sample_views(c) for s, c in zip(steps, drawn)]
            cams, backgrounds = views_on_device(views, first.device)
            cams = [with_size(c, s.render_size()) for s, c in zip(steps, cams)]
        with first.timer("render"):  # one gsplat call for all the assets (render.join_assets)
            outs = render_assets(
                [s.gaussians for s in steps], cams, backgrounds, first.cfg.render, with_depth=first.noise.needs_depth
            )
        pending = after_render_together(steps, views, cams, outs)
        with first.timer("prompts"):  # one stage for all the seeds, as their noise_and_t (after_render_together)
            conditioning, negatives = prompts_together(steps, views)
        joined = PendingStep(
            rgb=torch.cat([p.rgb for p in pending]),
            eps=torch.cat([p.eps for p in pending]),
            t=torch.cat([p.t for p in pending]),
            conditioning=conditioning,
            cameras=Cameras.cat([p.cameras for p in pending]),
            render_out=None,
            negatives=negatives,
        )
        loss = first.loss(joined) * len(steps)
        with first.timer("backward"):
            for s, p in zip(steps, pending):
                s.pre_backward(p)
            loss.backward()  # each asset's parameters get exactly their own gradient
        with first.timer("optimizer"):
            optimizer_step(steps)
        return [s.after_optimizer(p, loss) for s, p in zip(steps, pending)]


def draw_timesteps(step: DistillStep, views: int) -> torch.Tensor:
    """The diffusion timesteps [views] int64 (on the CPU) of ``step``'s next views, from its timestep generator: one per
    view, or one per group of views for a multi-view prior (which denoises a group at one t)."""
    group = step.prior.views_per_group
    cfg = step.cfg
    generator = step.generators["timestep"]
    t = sample_timestep(cfg.schedule, step.progress, generator, step.prior.num_train_timesteps, batch=views // group)
    return t.repeat_interleave(group)


def after_render_together(
    steps: Sequence[DistillStep], views: Sequence[SampledViews], cams: Sequence[Cameras], outs: Sequence[Any]
) -> list[PendingStep]:
    """Each step's :meth:`DistillStep.after_render` without prompts, with the same numbers, in fewer device calls: one
    noise call for all the steps' views (:func:`fsd_gs.noise.base.sample_together`) and one copy of all their
    timesteps to the device (the grouped step's per-seed work between the render and the prior)."""
    first = steps[0]
    with first.timer("noise_and_t"):
        resized = [resized_render(out, s.prior_size) for s, out in zip(steps, outs)]
        cams = [with_size(c, s.prior_size) for s, c in zip(steps, cams)]
        eps = noise_together(
            [s.noise for s in steps],
            cams,
            [alpha for _, alpha, _ in resized],
            [depth for _, _, depth in resized],
            [s.generators["noise"] for s in steps],
        )
        drawn = [draw_timesteps(s, len(c)) for s, c in zip(steps, cams)]
        ts = torch.cat(drawn).to(first.device, non_blocking=True).split([len(t) for t in drawn])
    return [
        PendingStep(rgb, e, t, None, c, out, None, v.cameras)
        for (rgb, _, _), e, t, c, out, v in zip(resized, eps, ts, cams, outs, views)
    ]


def optimizer_step(steps: Sequence[DistillStep]) -> None:
    """Each step's gradients clipped to its ``optim.grad_clip`` (if set), then one Adam update of all their optimizers:
    each parameter key's tensors of every step in one call (fsd_gs/adam_together.py), gradients then cleared."""
    for step in steps:
        if step.cfg.optim.grad_clip is not None:
            for value in step.gaussians.params.values():
                torch.nn.utils.clip_grad_norm_([value], step.cfg.optim.grad_clip)
    step_adams([optimizer for step in steps for optimizer in step.optimizers.values()])


def make_sampler(camera: Any, views_per_group: int) -> Any:
    """Cameras are sampled on the CPU (view names need no device sync); multi-view priors get view groups."""
    if views_per_group > 1:
        from fsd_gs.prior.mvdream_cameras import MultiViewOrbitSampler

        return MultiViewOrbitSampler(camera, views_per_group, device="cpu")
    return OrbitSampler(camera, device="cpu")


def make_generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """One generator per random choice (RNG_NAMES), seeded seed + index; the noise's lives on a CUDA device."""
    gens = {name: torch.Generator().manual_seed(seed + i) for i, name in enumerate(RNG_NAMES)}
    if device.type == "cuda":
        gens["noise"] = torch.Generator(device=device).manual_seed(seed + 2)
    return gens


def background_colours(kind: str, batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """[batch,3] background colours: random (drawn on the CPU from ``generator``) or one of BACKGROUNDS."""
    if kind == "random":
        colours = torch.rand(batch, 3, generator=generator)
    else:
        colours = torch.tensor(BACKGROUNDS[kind]).expand(batch, 3)
    return colours.to(device, non_blocking=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def with_size(cams: Cameras, size: tuple[int, int]) -> Cameras:
    """The cameras rendering at ``size`` (height, width): themselves at that size, else with rescaled intrinsics."""
    return cams if (cams.height, cams.width) == tuple(size) else cams.with_resolution(size[1], size[0])


def means_lr(lr: Any, progress: float) -> float:
    """The means' learning rate at ``progress`` in [0, 1]: exponential from lr.means to lr.means_final (0: constant)."""
    return lr.means * (lr.means_final / lr.means) ** progress if lr.means > 0 and lr.means_final > 0 else lr.means


def resized_render(out: Any, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(rgb [B,3,h,w], alpha [B,h,w,1], depth [B,h,w,1] or None) of a render, resized bilinearly to ``size`` (h, w)."""
    rgb = out.rgb.permute(0, 3, 1, 2)  # [B,3,H,W]
    alpha, depth = out.alpha, out.depth
    if tuple(rgb.shape[-2:]) != tuple(size):
        rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
        alpha = _resize_bhwc(alpha, size)
        if depth is not None:  # resized premultiplied, so silhouettes do not pull in the background's 0
            depth = _resize_bhwc(depth * out.alpha, size) / alpha.clamp_min(1e-10)
    return rgb, alpha, depth


def select_prompts(
    embeddings: Any, guidance: Any, cams_cpu: Cameras, views: Sequence[str]
) -> tuple[Conditioning, Optional[NegativeViews]]:
    """(conditioning, Perp-Neg negatives or None) of the views: by view name, or Perp-Neg's by azimuth and elevation."""
    if guidance.perp_neg:
        return perp_neg.select(
            embeddings, cams_cpu.azimuth, cams_cpu.elevation, guidance.perp_neg_weights, guidance.view_prompts.overhead_above
        )
    return embeddings.select(views), None


def prompts_together(steps: Sequence[DistillStep], views: Sequence[SampledViews]) -> tuple[Conditioning, Optional[NegativeViews]]:
    """The prompts of every step's views as one batch, in order: ONE :func:`select_prompts` over all the views when the
    steps share their prompt embeddings (the prior's cache gives one prompt's steps the same object), else one per
    step, concatenated. Selection is per view, so both give each view the rows its own step would select."""
    first = steps[0]
    if all(s.embeddings is first.embeddings for s in steps):
        names = [name for v in views for name in v.names]
        return select_prompts(first.embeddings, first.cfg.guidance, Cameras.cat([v.cameras for v in views]), names)
    parts = [select_prompts(s.embeddings, s.cfg.guidance, v.cameras, v.names) for s, v in zip(steps, views)]
    present = [n for _, n in parts if n is not None]
    return Conditioning.cat([c for c, _ in parts]), NegativeViews.cat(present) if present else None


def _resize_bhwc(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B,H,W,C] -> [B,h,w,C] bilinear."""
    return F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
