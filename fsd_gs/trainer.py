"""The training loop of docs/design.md: cameras -> render -> noise -> t -> distill -> step -> densify.

Nothing in the loop knows which prior, noise or renderer it has; those are chosen once in
:meth:`Trainer.__init__` from the config.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from fsd_gs.camera import OrbitSampler, view_directions
from fsd_gs.config import TrainConfig
from fsd_gs.densify import Densifier
from fsd_gs.device import resolve_device
from fsd_gs.distill import distill_loss
from fsd_gs.gaussians import init_gaussians, make_optimizers
from fsd_gs.io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fsd_gs.io.ply import write_ply
from fsd_gs.noise import build_noise
from fsd_gs.prior.base import DiffusionPrior
from fsd_gs.profiling import StageTimer
from fsd_gs.render import render
from fsd_gs.run_dir import RunPaths
from fsd_gs.schedule import sample_timestep

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5)}
RNG_NAMES = ("camera", "timestep", "noise", "background")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@dataclass
class StepResult:
    """What one step produced (tensors stay on the device; nothing here forces a host sync)."""

    loss: torch.Tensor
    timestep: torch.Tensor
    rgb: torch.Tensor
    eps: torch.Tensor
    azimuth: torch.Tensor
    elevation: torch.Tensor


@dataclass
class RunStats:
    """Timing and bookkeeping across the run (and across resumes)."""

    wall_before: float = 0.0
    steps_this_session: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_step_s: float | None = None
    densify_counts: dict[str, int] = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.started


class Trainer:
    """Owns the parts of one run and advances it step by step."""

    def __init__(self, cfg: TrainConfig, prior: DiffusionPrior, paths: RunPaths | None = None) -> None:
        """Build every part; all checks that can fail on bad options happen here, before any file is written."""
        self.cfg = cfg
        self.paths = paths  # set before run()
        self.prior = prior
        self.device = resolve_device(cfg.device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        cam = cfg.camera
        self.prior_size = (cam.height, cam.width)
        prior.check_image_size(cam.height, cam.width)
        self.embeddings = prior.encode_prompts(cfg.prompt, cfg.negative_prompt, cfg.guidance.view_dependent)
        self.noise = build_noise(cfg.noise, prior.model_shape(cam.height, cam.width), seed=cfg.seed, device=self.device)
        self.noise.check_resolution(cam.height, cam.width)
        self.sampler = OrbitSampler(cam, device="cpu")  # sampled on the CPU: view names need no device sync
        self.generators = self._make_generators(cfg.seed)
        init_generator = torch.Generator().manual_seed(cfg.seed + 4)
        self.gaussians = init_gaussians(cfg.gaussians, init_generator, self.device)
        self.optimizers = make_optimizers(self.gaussians, cfg.optim.lr)
        self.densifier = Densifier(cfg.densify, scene_scale=1.0, total_steps=cfg.steps, seed=cfg.seed + 5)
        self.densify_state = self.densifier.initialize_state()
        self.step = 0
        self.stats = RunStats()
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_count = 0
        self._stop_requested = False
        self.timer = StageTimer(self.device, enabled=False)
        self.on_step: Optional[Callable[[Trainer, StepResult], None]] = None

    # -- set-up -----------------------------------------------------------------------------------
    def _make_generators(self, seed: int) -> dict[str, torch.Generator]:
        gens = {name: torch.Generator().manual_seed(seed + i) for i, name in enumerate(RNG_NAMES)}
        if self.device.type == "cuda":
            gens["noise"] = torch.Generator(device=self.device).manual_seed(seed + 2)
        return gens

    # -- one step ---------------------------------------------------------------------------------
    def _render_size(self) -> tuple[int, int]:
        start, until = self.cfg.optim.progressive_start, self.cfg.optim.progressive_until
        if start is None:
            return self.prior_size
        frac = min(1.0, self.step / max(1.0, until * self.cfg.steps))
        h, w = self.prior_size
        size_h = int(round(start + (h - start) * frac))
        size_w = int(round(start + (w - start) * frac))
        return max(8, min(h, size_h)), max(8, min(w, size_w))

    def _background(self, batch: int) -> torch.Tensor:
        kind = self.cfg.optim.background
        if kind == "random":
            colours = torch.rand(batch, 3, generator=self.generators["background"])
        else:
            colours = torch.tensor(BACKGROUNDS[kind]).expand(batch, 3)
        return colours.to(self.device, non_blocking=True)

    def _set_learning_rates(self) -> None:
        lr = self.cfg.optim.lr
        progress = self.step / max(1, self.cfg.steps)
        if lr.means > 0 and lr.means_final > 0:
            value = lr.means * (lr.means_final / lr.means) ** progress
        else:
            value = lr.means
        for group in self.optimizers["means"].param_groups:
            group["lr"] = value

    def train_step(self) -> StepResult:
        """One optimisation step (cameras, render, noise, t, loss, backward, Adam, densification)."""
        cfg = self.cfg
        params = self.gaussians.params
        self.gaussians.step_sh_degree(self.step, cfg.gaussians.sh_degree_interval)
        self._set_learning_rates()

        timer = self.timer
        with timer("cameras"):
            cams_cpu = self.sampler.sample(self.generators["camera"])
            views = view_directions(cams_cpu) if cfg.guidance.view_dependent else ["none"] * len(cams_cpu)
            cams = cams_cpu.to(self.device)
            rh, rw = self._render_size()
            if (rh, rw) != self.prior_size:
                cams = cams.with_resolution(rw, rh)
            background = self._background(len(cams))
        with timer("render"):
            out = render(self.gaussians, cams, background, cfg.render)
            rgb = out.rgb.permute(0, 3, 1, 2)  # [B,3,H,W]
            alpha = out.alpha.permute(0, 3, 1, 2)  # [B,1,H,W]
            if (rh, rw) != self.prior_size:
                rgb = F.interpolate(rgb, size=self.prior_size, mode="bilinear", align_corners=False)
                alpha = F.interpolate(alpha, size=self.prior_size, mode="bilinear", align_corners=False)
        with timer("noise_and_t"):
            eps = self.noise(cams_cpu.azimuth, cams_cpu.elevation, alpha.permute(0, 2, 3, 1), self.generators["noise"])
            progress = self.step / max(1, cfg.steps)
            t = sample_timestep(cfg.schedule, progress, self.generators["timestep"],
                                self.prior.num_train_timesteps, batch=len(cams)).to(self.device, non_blocking=True)
            cond, uncond = self.embeddings.select(views)
        with timer("prior"):
            result = distill_loss(self.prior, rgb, eps, t, cond, uncond, cfg.guidance.guidance_scale,
                                  weighting=cfg.guidance.weighting, hifa_lambda=cfg.guidance.hifa_lambda)
            loss = result.loss
        with timer("backward"):
            self.densifier.step_pre_backward(params, self.optimizers, self.densify_state, self.step, out.info)
            loss.backward()
        with timer("optimizer"):
            if cfg.optim.grad_clip is not None:
                for value in params.values():
                    torch.nn.utils.clip_grad_norm_([value], cfg.optim.grad_clip)
            for optimizer in self.optimizers.values():
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        with timer("densify"):
            counts = self.densifier.step_post_backward(params, self.optimizers, self.densify_state, self.step, out.info,
                                                       packed=cfg.render.packed)
        for key, value in (counts or {}).items():
            self.stats.densify_counts[key] = self.stats.densify_counts.get(key, 0) + int(value)
        self.gaussians.ensure_not_empty()
        self.step += 1
        return StepResult(loss.detach(), t, out.rgb.detach(), eps, cams_cpu.azimuth, cams_cpu.elevation)

    # -- checkpoints --------------------------------------------------------------------------------
    def params_finite(self) -> bool:
        return all(bool(torch.isfinite(v).all()) for v in self.gaussians.params.values())

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current state; refuses to overwrite a good one with NaN parameters."""
        if not self.params_finite():
            raise NonFiniteLoss("the Gaussian parameters are not finite")
        ckpt = Checkpoint(
            step=self.step,
            gaussians=self.gaussians,
            optimizer_states={k: opt.state_dict() for k, opt in self.optimizers.items()},
            densify_state=self.densifier.state_to_tensors(self.densify_state),
            rng_states={name: gen.get_state() for name, gen in self.generators.items()},
            meta={"wall_time": self.stats.wall, "densify_counts": self.stats.densify_counts},
        )
        return save_checkpoint(ckpt, self.paths.checkpoint)

    def restore(self, folder: Path) -> None:
        """Continue from the checkpoint in ``folder`` (same config, same device)."""
        ckpt = load_checkpoint(folder)
        self.gaussians = ckpt.gaussians.to(self.device)
        self.optimizers = make_optimizers(self.gaussians, self.cfg.optim.lr)
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(ckpt.optimizer_states[key])  # moves the state to the parameters' device
        self.densify_state = self.densifier.state_from_tensors(
            {k: (v.to(self.device) if v is not None else None) for k, v in ckpt.densify_state.items()}
        )
        for name, state in ckpt.rng_states.items():
            self.generators[name].set_state(state)
        self.step = ckpt.step
        self.stats.wall_before = float(ckpt.meta.get("wall_time", 0.0))
        self.stats.densify_counts = dict(ckpt.meta.get("densify_counts", {}))
        truncate_metrics(self.paths.metrics, self.step)

    # -- the loop -----------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to stop after the current step (what Ctrl-C does)."""
        self._stop_requested = True

    def run(self, viewer: Any = None) -> bool:
        """Train until cfg.steps; return False if stopped early by Ctrl-C (after saving)."""
        cfg = self.cfg
        bar = _progress_bar(cfg.steps, self.step, enabled=cfg.output.progress)
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum: int, frame: Any) -> None:
            if self._stop_requested:  # a second Ctrl-C stops at once
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            self._stop_requested = True

        in_main_thread = _is_main_thread()
        if in_main_thread:
            signal.signal(signal.SIGINT, on_sigint)
        last_time, last_step = time.perf_counter(), self.step
        try:
            while self.step < cfg.steps and not self._stop_requested:
                result = self.train_step()
                self.stats.steps_this_session += 1
                if self.stats.first_step_s is None:  # includes one-off warm-up (kernel compilation, allocator)
                    self.stats.first_step_s = time.perf_counter() - self.stats.started
                self.loss_sum += result.loss
                self.loss_count += 1
                if self.device.type == "cpu" and not torch.isfinite(result.loss):
                    raise NonFiniteLoss(f"the loss became {result.loss.item()} at step {self.step}")
                if self.step % cfg.output.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    rate = (self.step - last_step) / max(1e-9, now - last_time)
                    last_time, last_step = now, self.step
                    self._log(result, rate, bar)
                if viewer is not None:
                    self._feed_viewer(viewer, result, bar)
                if cfg.output.checkpoint_every and self.step % cfg.output.checkpoint_every == 0:
                    self.save_checkpoint()
                if cfg.output.snapshot_every and self.step % cfg.output.snapshot_every == 0:
                    self.paths.snapshots.mkdir(exist_ok=True)
                    write_ply(self.gaussians, self.paths.snapshots / f"step_{self.step:06d}.ply")
                if self.on_step is not None:
                    self.on_step(self, result)
                if bar is not None:
                    bar.update(1)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
        return self.step >= cfg.steps

    def _log(self, result: StepResult, rate: float, bar: Any) -> None:
        loss = (self.loss_sum / max(1, self.loss_count)).item()
        self.loss_sum.zero_()
        self.loss_count = 0
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"the loss became {loss} near step {self.step}")
        t = int(result.timestep[0])
        record = {"step": self.step, "loss": loss, "t": t, "num_gaussians": len(self.gaussians),
                  "it_per_s": rate, "lr_means": self.optimizers["means"].param_groups[0]["lr"],
                  "wall_time": self.stats.wall}
        with open(self.paths.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4g}", t=t, n=len(self.gaussians), refresh=False)

    def _feed_viewer(self, viewer: Any, result: StepResult, bar: Any) -> None:
        from fsd_gs.viewer.live import TrainingSnapshot

        rate = bar.format_dict.get("rate") if bar is not None else None
        rate = rate or 0.0
        eta = (self.cfg.steps - self.step) / rate if rate else float("nan")
        origin = None
        if hasattr(self.noise, "window_origin"):
            origin = self.noise.window_origin(float(result.azimuth[0]), float(result.elevation[0]))
        viewer.update(TrainingSnapshot(
            step=self.step, total_steps=self.cfg.steps, loss=result.loss, timestep=result.timestep[0],
            num_gaussians=len(self.gaussians), it_per_s=rate, eta_s=eta, gaussians=self.gaussians,
            train_rgb=result.rgb[0], noise_window=result.eps[0], window_origin=origin,
            window_size=tuple(result.eps.shape[-2:]),
        ))
        while True:
            if viewer.pop_save_request():  # also while paused: "save .ply now" must not wait for Resume
                write_ply(self.gaussians, self.paths.root / f"saved_step_{self.step:06d}.ply")
            if not viewer.paused or self._stop_requested:
                break
            time.sleep(0.05)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (written before an interruption, redone on resume)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()

