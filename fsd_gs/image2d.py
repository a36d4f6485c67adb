"""`python -m fsd_gs.image2d --prompt "..." --method fsd --seed 0 1 2`: the paper's 2D experiments (its Fig. 3).

One image per seed, from the same prior and the same initial noise for every method (docs/fsd.md sec. 6,
paper App. 0.D.2 Tab. 3, docs/methods.md):
  * fsd:  optimise the model-space image z with Adam; ONE fixed noise per seed, t decreasing linearly;
  * sds:  the same loss with fresh noise every step (and the paper's CFG 100, lr 2e-2);
  * nfsd, csd, vsd: fresh noise like SDS, each with its own direction (fsd_gs/methods.py); VSD trains one
    LoRA per seed (single particle);
  * ddim: 50 DDIM steps from x_T = the seed's noise (the sampler FSD imitates).
The seed's noise is the same tensor for all methods, so fsd and ddim of one seed are comparable.
Writes seed<N>.png per seed, grid.png (seeds side by side), settings.json and report.json into a fresh
folder, and prints that folder as the last line. Exit codes: 0 done, 2 bad input.
scripts/methods_figure.py runs every method on the shapes prior and writes the Fig. 3 grid and its table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Optional, Sequence, cast

import numpy as np
import torch

from fsd_gs.camera import MAX_IMAGE_SIZE
from fsd_gs.config import check_seed
from fsd_gs.distill import distill_loss_z
from fsd_gs.errors import require, run_cli
from fsd_gs.io.atomic import atomic_open, atomic_write_text
from fsd_gs.methods import METHODS, Image2DSettings, MethodOptions, make_guidance
from fsd_gs.noise import NOISE_PRESETS, ConstantNoise, build_noise
from fsd_gs.prior.base import DiffusionPrior
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.prior.factory import DEFAULT_MODEL
from fsd_gs.progress import Progress
from fsd_gs.run_dir import create_fresh_dir
from fsd_gs.schedule import ScheduleConfig, sample_timestep

if TYPE_CHECKING:
    Method = str
else:
    Method = METHODS.literal("ddim")
    """Every registered method, and DDIM sampling."""
MethodSettings = Image2DSettings

METHOD_DEFAULTS: dict[str, MethodSettings] = {
    **{name: spec.image2d for name, spec in METHODS.items()},
    "ddim": MethodSettings(steps=50, guidance_scale=7.5, lr=None, fresh_noise=False),
}
"""Tab. 3 of the paper: iterations, CFG scale, Adam learning rate and noise per method (the score-distillation
methods: Adam + linear t; CSD, absent from the table, takes NFSD's column; DDIM: 50 steps)."""


@dataclass
class Image2DConfig:
    """The paper's 2D experiments: FSD, SDS, NFSD, CSD, VSD and DDIM on one image per seed (docs/fsd.md sec. 6).

    python -m fsd_gs.image2d --prompt "a photo of a red mushroom" --method fsd --seed 0 1 2
    """

    prompt: str = ""
    """The text prompt (required)."""
    method: Method = "fsd"
    """fsd: fixed noise per seed + linear t (Adam); sds, nfsd, csd, vsd: fresh noise each step + linear t (Adam), each
    with its own direction (docs/methods.md); ddim: DDIM sampling."""
    seed: tuple[int, ...] = (0,)
    """One image per seed (all seeds run together in one batch), e.g. --seed 0 1 2 3; each from 0 to 4294967295."""
    steps: Optional[int] = None
    """Optimisation iterations or DDIM steps; None: the method's default (500; ddim 50)."""
    guidance_scale: Optional[float] = None
    """Classifier-free guidance scale omega; None: the method's default (sds 100, the others 7.5)."""
    lr: Optional[float] = None
    """Adam learning rate on the model-space image; None: the method's default (fsd 3e-3, the others 2e-2)."""
    t_min: float = 0.02
    """Smallest timestep of the linear schedule, as a fraction of the model's T (not ddim)."""
    t_max: float = 0.98
    """Largest timestep of the linear schedule (the first step), as a fraction of T (not ddim)."""
    weighting: Literal["sigma_over_alpha", "sigma2", "one"] = "sigma_over_alpha"
    """w(t) of the loss: sigma_t/alpha_t (the exact DDIM step, docs/fsd.md sec. 1), sigma_t^2 or 1 (not ddim)."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance (empty: the unconditional embedding)."""
    model: str = DEFAULT_MODEL
    """Diffusion prior: a hub id (HF cache first) or a local diffusers folder."""
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    """Precision of the diffusion networks: auto = fp16 on CUDA, fp32 on CPU."""
    device: str = "auto"
    """auto (CUDA if available), cpu, cuda or cuda:N."""
    height: Optional[int] = None
    """Image height in pixels, at most 4096; None: the model's resolution (512 for SD 2.1-base). A multiple of 8 for
    latent models."""
    width: Optional[int] = None
    """Image width in pixels, at most 4096; None: the model's resolution."""
    threads: int = 1
    """CPU only: torch threads used by the optimisation, as in train (1 lets several jobs share a machine; 0: torch's
    default)."""
    output_dir: Path = Path("outputs/image2d")
    """A fresh folder <output_dir>/<prompt-slug>/<date-time>-<method>/ is created inside it (never overwritten)."""
    progress: bool = True
    """Show progress: a bar on a terminal, else a plain line every 5% of the steps."""
    method_options: MethodOptions = dataclasses.field(default_factory=MethodOptions)
    """NFSD's negative prompt and VSD's LoRA options."""

    def settings(self) -> MethodSettings:
        """The method's defaults with --steps / --guidance-scale / --lr applied."""
        base = METHOD_DEFAULTS[self.method]
        return dataclasses.replace(
            base,
            steps=base.steps if self.steps is None else self.steps,
            guidance_scale=base.guidance_scale if self.guidance_scale is None else self.guidance_scale,
            lr=base.lr if self.lr is None else self.lr,
        )

    def validate(self) -> None:
        """Check everything that can be checked before loading a model; UserError on the first problem."""
        require(self.prompt.strip() != "", 'the prompt is empty: pass --prompt "a photo of a red mushroom" (or similar)')
        require(self.method in METHOD_DEFAULTS, f"--method must be one of {', '.join(METHOD_DEFAULTS)}, got {self.method!r}")
        require(len(self.seed) > 0, "--seed needs at least one seed, e.g. --seed 0 1 2")
        require(len(set(self.seed)) == len(self.seed), f"--seed has repeated values {list(self.seed)}: give each seed once")
        for seed in self.seed:
            check_seed(seed)
        require(self.threads >= 0, f"--threads must be >= 0, got {self.threads}")
        settings = self.settings()
        require(settings.steps > 0, f"--steps must be a positive number, got {settings.steps}")
        require(settings.guidance_scale > 0, f"--guidance-scale must be positive, got {settings.guidance_scale}")
        if self.method != "ddim":
            require(settings.lr is not None and settings.lr > 0, f"--lr must be positive, got {settings.lr}")
            require(
                0.0 < self.t_min < self.t_max < 1.0, f"need 0 < --t-min < --t-max < 1, got t_min={self.t_min}, t_max={self.t_max}"
            )
            self.method_options.validate()
        for name in ("height", "width"):
            value = getattr(self, name)
            require(
                value is None or 0 < value <= MAX_IMAGE_SIZE,
                f"--{name} must be a number of pixels from 1 to {MAX_IMAGE_SIZE}, got {value}",
            )


# -- pieces ---------------------------------------------------------------------------------------
def seed_noise(seeds: Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """The fixed noise image of each seed, [S,C,h,w] float32 on the CPU (fsd_gs.noise's "constant" noise).

    FSD adds it at every step, DDIM starts from it (x_T), and all methods start their image from it.
    """
    config = NOISE_PRESETS["fsd2d"]
    return torch.stack([cast(ConstantNoise, build_noise(config, shape, seed=int(s))).image for s in seeds])  # fsd2d: constant


class FreshNoise:
    """SDS: fresh N(0, I) noise [S,C,h,w] every call, one generator per seed (fsd_gs.noise's "random" noise)."""

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], device: torch.device) -> None:
        self.functions = [build_noise(NOISE_PRESETS["sds"], shape, seed=int(s)) for s in seeds]
        self.generators = [torch.Generator().manual_seed(int(s) + FRESH_NOISE_OFFSET) for s in seeds]
        self.device = device

    def __call__(self) -> torch.Tensor:
        draws = [f(0.0, 0.0, None, g) for f, g in zip(self.functions, self.generators)]
        return torch.cat(draws).to(self.device)


FRESH_NOISE_OFFSET = 7919
"""SDS's fresh noise of seed s comes from a generator seeded with s + this (independent of the seed's fixed noise)."""


@contextlib.contextmanager
def _progress(total: int, enabled: bool, desc: str) -> Iterator[Progress]:
    """train's progress: a bar on a terminal, else a plain line every 5% of the steps."""
    bar = Progress(total, 0, enabled, label=f"{desc}: ")
    try:
        yield bar
    finally:
        bar.close()


def optimise(prior: DiffusionPrior, cfg: Image2DConfig, noise: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
    """A score-distillation method: Adam on the model-space images z [S,C,h,w] for settings.steps iterations.

    Start: z = (1 - sigma_T) / alpha_T * noise, the clean-image variable of DDIM's x_T = noise (docs/fsd.md sec. 1).
    FSD adds the seed's noise at every step; the others draw fresh noise per step from per-seed generators.
    A stateful method (VSD) gets one guidance per seed: each seed is its own particle.
    Returns z (detached).
    """
    n_seeds = len(cfg.seed)  # a local: narrowing len(cfg.seed) would make pyright think cfg.seed may be empty below
    if METHODS[cfg.method].stateful and n_seeds > 1:
        return torch.cat(
            [
                optimise(prior, dataclasses.replace(cfg, seed=(s,)), noise[i : i + 1], conditioning.index(torch.tensor([i])))
                for i, s in enumerate(cfg.seed)
            ]
        )
    settings = cfg.settings()
    device = prior.device
    batch = len(cfg.seed)
    schedule = ScheduleConfig(kind="linear", t_min=cfg.t_min, t_max=cfg.t_max)
    schedule.validate()
    embeddings = prior.encode_prompts(cfg.prompt, cfg.negative_prompt, view_dependent=False)
    guidance = make_guidance(cfg.method, prior, embeddings, cfg.method_options, seed=cfg.seed[0])
    noise = noise.to(device)
    alpha_T, sigma_T = prior.process.alpha_sigma(sample_timestep(schedule, 0.0, None, prior.num_train_timesteps).to(device))
    z = (((1.0 - sigma_T) / alpha_T).view(1, 1, 1, 1) * noise).clone().requires_grad_(True)
    if settings.lr is None:  # validate() requires --lr for every method but ddim, which does not optimise
        raise ValueError(f"{cfg.method} needs a learning rate")
    optimizer = torch.optim.Adam([z], lr=settings.lr)
    fresh = FreshNoise(cfg.seed, tuple(noise.shape[1:]), device) if settings.fresh_noise else None
    with _progress(settings.steps, cfg.progress, cfg.method) as bar:
        for step in range(settings.steps):
            progress = step / max(1, settings.steps - 1)  # the last step lands on t_min
            t = sample_timestep(schedule, progress, None, prior.num_train_timesteps, batch=batch).to(device)
            eps = fresh() if fresh is not None else noise
            result = distill_loss_z(
                prior, z, eps, t, conditioning, settings.guidance_scale, weighting=cfg.weighting, guidance=guidance
            )
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            optimizer.step()
            bar.update(
                step + 1,
                {"t": int(t[0]), "loss": f"{result.loss.detach().item():.4g}"}
                if step % 10 == 0 or step == settings.steps - 1
                else {},
            )
    return z.detach()


def ddim_sample(prior: DiffusionPrior, cfg: Image2DConfig, noise: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
    """The DDIM row of the 2D experiment: the prior's sampler (:func:`fsd_gs.sampling.sample`: DDIM, or Euler for a
    flow prior) from x_T = noise [S,C,h,w]."""
    from fsd_gs.sampling import sample

    settings = cfg.settings()
    with _progress(settings.steps, cfg.progress, "ddim") as bar:
        return sample(
            prior, noise, conditioning, settings.guidance_scale, settings.steps, on_step=lambda i: bar.update(i + 1, {})
        )


# -- outputs --------------------------------------------------------------------------------------
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [0,1] -> [B,H,W,3] uint8."""
    return (images.clamp(0, 1).permute(0, 2, 3, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


def save_images(images: torch.Tensor, seeds: Sequence[int], folder: Path, gap: int = 4) -> dict[str, str]:
    """Write seed<N>.png per image and grid.png (all seeds side by side, white gaps); returns name -> path."""
    from PIL import Image

    pixels = to_uint8(images)
    outputs: dict[str, str] = {}
    for seed, image in zip(seeds, pixels):
        path = folder / f"seed{seed}.png"
        with atomic_open(path) as f:
            Image.fromarray(image).save(f, format="PNG")
        outputs[f"seed{seed}"] = str(path)
    n, h, w, _ = pixels.shape
    grid = np.full((h, n * w + (n - 1) * gap, 3), 255, dtype=np.uint8)
    for i, image in enumerate(pixels):
        grid[:, i * (w + gap) : i * (w + gap) + w] = image
    with atomic_open(folder / "grid.png") as f:
        Image.fromarray(grid).save(f, format="PNG")
    outputs["grid"] = str(folder / "grid.png")
    return outputs


# -- main -----------------------------------------------------------------------------------------
def image_size(cfg: Image2DConfig, prior: DiffusionPrior) -> tuple[int, int]:
    """(height, width): --height/--width or the model's resolution; UserError if the prior cannot take it."""
    height = cfg.height or prior.resolution
    width = cfg.width or prior.resolution
    prior.check_image_size(height, width)
    return height, width


def generate(cfg: Image2DConfig, prior: DiffusionPrior) -> torch.Tensor:
    """Images [S,3,H,W] in [0,1], one per seed, by cfg.method."""
    height, width = image_size(cfg, prior)
    embeddings = prior.encode_prompts(cfg.prompt, cfg.negative_prompt, view_dependent=False)
    conditioning = embeddings.select(["none"] * len(cfg.seed))
    noise = seed_noise(cfg.seed, prior.model_shape(height, width))
    if cfg.method == "ddim":
        z = ddim_sample(prior, cfg, noise, conditioning)
    else:
        z = optimise(prior, cfg, noise, conditioning)
    with torch.no_grad():
        return prior.decode(z).float().cpu()


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt(signum) inside the block, like Ctrl-C (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parse_config(argv: Sequence[str]) -> Image2DConfig:
    from fsd_gs.cli import tyro_cli

    return tyro_cli(Image2DConfig, "python -m fsd_gs.image2d", argv)


def run(argv: Sequence[str]) -> int:
    from fsd_gs.device import resolve_device
    from fsd_gs.prior.factory import PriorConfig, load_prior
    from fsd_gs.resources import warn_if_oversubscribed
    from fsd_gs.step import cpu_threads

    cfg = parse_config(argv)
    cfg.validate()
    device = resolve_device(cfg.device)
    settings = cfg.settings()
    prior = load_prior(cfg.model, PriorConfig(dtype=cfg.dtype), device)
    height, width = image_size(cfg, prior)  # before the output folder: bad input leaves nothing behind
    if device.type == "cpu":
        warn_if_oversubscribed(cfg.threads)
    folder = create_fresh_dir(cfg.output_dir, cfg.prompt, cfg.method)
    start = time.perf_counter()
    try:
        with _signals_interrupt(), cpu_threads(cfg.threads, device):
            images = generate(cfg, prior)
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else int(signal.SIGINT)
        with contextlib.suppress(OSError):
            folder.rmdir()  # nothing was written into it yet
            folder.parent.rmdir()  # the prompt's folder too, when this run made it (only if empty)
        print(
            f"stopped by {signal.Signals(signum).name} after {time.perf_counter() - start:.1f} s: no images were "
            "written (image2d keeps no checkpoints; run it again)",
            file=sys.stderr,
        )
        return 128 + signum
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    outputs = save_images(images, cfg.seed, folder)
    resolved = {
        **json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
        **dataclasses.asdict(settings),
        "height": height,
        "width": width,
    }
    atomic_write_text(folder / "settings.json", json.dumps(resolved, indent=2) + "\n")
    report = {
        "method": cfg.method,
        "seeds": list(cfg.seed),
        "steps": settings.steps,
        "wall_time_s": round(wall, 3),
        "steps_per_s": round(settings.steps / max(wall, 1e-9), 3),
        "device": str(device),
        "dtype": str(prior.dtype).replace("torch.", ""),
        "outputs": outputs,
    }
    atomic_write_text(folder / "report.json", json.dumps(report, indent=2) + "\n")
    print(f"done: {cfg.method}, {len(cfg.seed)} seed(s) x {settings.steps} steps in {wall:.1f} s on {device}")
    print(folder)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: UserError -> one line on stderr and exit code 2."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
