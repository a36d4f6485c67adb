"""Step-time benchmark: the full training step of fsd_gs.train against the cost of the diffusion model itself.

The floor of one distillation step with a latent model is the guided UNet forward (cond + uncond in one
batch) plus the VAE encoder forward and backward, at the same batch, resolution, dtype and compile
settings as the step. Everything else (rendering, noise, loss, Adam, Python, host syncs) is overhead;
this script measures both and their ratio, with a per-stage breakdown of the step and peak GPU memory.

On a CUDA GPU (builds a random-weight SD-2.1-base pipeline from its config first: same FLOPs as the
real model, no download):
    python scripts/bench_step.py --out bench_step.json
    python scripts/bench_step.py --model /tmp/sd21-random --grid quick
On the CPU with the built-in prior:
    python scripts/bench_step.py --model shapes --device cpu --grid cpu

Prints a table and writes JSON (--out). Densification is off so the Gaussian count stays as given.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import torch

from fsd_gs.profiling import synchronize


@dataclass(frozen=True)
class Variant:
    resolution: int
    views: int
    gaussians: int
    compile: bool = False

    @property
    def name(self) -> str:
        return f"{self.resolution}px/{self.views}v/{self.gaussians // 1000}k/{'compiled' if self.compile else 'eager'}"


GRIDS: dict[str, list[Variant]] = {
    # one factor at a time around the default step (512 px, 1 view, 100k Gaussians, eager)
    "default": [
        Variant(512, 1, 100_000), Variant(256, 1, 100_000), Variant(512, 4, 100_000),
        Variant(512, 1, 10_000), Variant(512, 1, 1_000_000),
        Variant(512, 1, 100_000, True), Variant(512, 4, 100_000, True),
    ],
    "quick": [Variant(512, 1, 100_000), Variant(512, 4, 100_000)],
    "cpu": [Variant(64, 1, 2_000), Variant(64, 1, 8_000), Variant(64, 4, 2_000)],
}


@dataclass
class Args:
    """Benchmark the training step against the diffusion model's own cost."""

    model: Optional[str] = None
    """Prior: a diffusers folder, "shapes", or None to build a random-weight SD-2.1-base pipeline in --work."""
    work: Path = Path("/tmp/fsd_gs_bench")
    """Scratch folder (the random pipeline is built here once)."""
    out: Path = Path("bench_step.json")
    """Where the JSON results go."""
    device: str = "auto"
    """auto, cpu or cuda."""
    grid: Literal["default", "quick", "cpu"] = "default"
    """Which variants to run (see GRIDS)."""
    warmup: int = 5
    """Untimed steps before each measurement (compilation, allocator warm-up)."""
    iters: int = 20
    """Timed steps per measurement."""
    guidance_scale: float = 100.0
    """CFG scale (the cost does not depend on it unless it is 1)."""
    prompt: Optional[str] = None
    """Prompt; None: "a red mushroom" for the shapes prior, else "a DSLR photo of a corgi"."""


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median over ``iters`` single calls of ``fn`` in milliseconds (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def measure_floor(prior, prompt: str, variant: Variant, guidance_scale: float, device: torch.device, warmup: int,
                  iters: int):
    """(guided UNet forward ms, VAE encode forward+backward ms) at the variant's batch and resolution."""
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(variant.views, 3, variant.resolution, variant.resolution, device=device, generator=gen)
    images.requires_grad_(True)
    emb = prior.encode_prompts(prompt, "", True)
    cond, uncond = emb.select(["front"] * variant.views)
    with torch.no_grad():
        z = prior.encode_images(images)
    t = torch.full((variant.views,), 500, device=device, dtype=torch.long)

    def unet() -> None:
        prior.predict_noise(z, t, cond, uncond, guidance_scale)

    def encoder() -> None:
        out = prior.encode_images(images)
        out.backward(torch.ones_like(out))
        images.grad = None

    return time_ms(unet, device, warmup, iters), time_ms(encoder, device, warmup, iters)


def build_step(prior, model: str, prompt: str, variant: Variant, device: torch.device):
    from fsd_gs.config import TrainConfig, base_config
    from fsd_gs.step import DistillStep

    cfg: TrainConfig = base_config("fsd", None)
    cfg = dataclasses.replace(
        cfg, prompt=prompt, model=model, steps=10_000, device=str(device),
        camera=dataclasses.replace(cfg.camera, width=variant.resolution, height=variant.resolution,
                                   batch_size=variant.views),
        gaussians=dataclasses.replace(cfg.gaussians, num_points=variant.gaussians),
        densify=dataclasses.replace(cfg.densify, enabled=False),
        prior=dataclasses.replace(cfg.prior, compile=variant.compile),
    )
    cfg.validate()
    return DistillStep(cfg, prior, device)


def run_variant(prior, model: str, variant: Variant, args: Args, device: torch.device) -> dict:
    prompt = args.prompt or ("a red mushroom" if model == "shapes" else "a DSLR photo of a corgi")
    unet_ms, vae_ms = measure_floor(prior, prompt, variant, args.guidance_scale, device, args.warmup, args.iters)
    step = build_step(prior, model, prompt, variant, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_ms = time_ms(step, device, args.warmup, args.iters)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    step.timer.enabled = True
    for _ in range(args.iters):
        step()
    stages = step.timer.summary()
    floor = unet_ms + (vae_ms if prior.space == "latent" else 0.0)
    return {
        "variant": variant.name, **dataclasses.asdict(variant),
        "unet_guided_ms": round(unet_ms, 2), "vae_encode_fwd_bwd_ms": round(vae_ms, 2),
        "floor_ms": round(floor, 2), "step_ms": round(step_ms, 2), "ratio": round(step_ms / floor, 3),
        "stages_ms": {k: round(v, 2) for k, v in stages.items()},
        "peak_gpu_memory_gb": round(peak, 3) if peak is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    import tyro

    from fsd_gs.device import resolve_device
    from fsd_gs.prior.factory import PriorConfig, load_prior

    args = tyro.cli(Args, args=argv)
    device = resolve_device(args.device)
    model = args.model
    if model is None:
        from fsd_gs.prior.random_pipeline import save_sd21_base_random_pipeline

        folder = args.work / "sd21-random"
        if not (folder / "model_index.json").is_file():
            print(f"building a random-weight SD-2.1-base pipeline in {folder} ...", flush=True)
            save_sd21_base_random_pipeline(folder, seed=0)
        model = str(folder)
    priors: dict[bool, object] = {}
    rows: list[dict] = []
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "model": model,
        "command": "python scripts/bench_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    for variant in GRIDS[args.grid]:
        if variant.compile not in priors:
            priors[variant.compile] = load_prior(model, PriorConfig(compile=variant.compile), device)
        print(f"-- {variant.name}", flush=True)
        try:
            rows.append(run_variant(priors[variant.compile], model, variant, args, device))
        except torch.OutOfMemoryError as exc:
            rows.append({"variant": variant.name, "error": f"out of memory: {str(exc).splitlines()[0]}"})
        print(json.dumps(rows[-1]), flush=True)
        args.out.write_text(json.dumps({"info": info, "rows": rows}, indent=1))  # after each variant
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_table(info, rows)
    return 0


def print_table(info: dict, rows: list[dict]) -> None:
    print(f"\n{info['device']}, torch {info['torch']}, {info['date']}")
    print("| variant | UNet guided ms | VAE enc f+b ms | floor ms | step ms | step/floor | peak GB | stages ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | {r['error']} |")
            continue
        stages = ", ".join(f"{k} {v}" for k, v in r["stages_ms"].items())
        print(f"| {r['variant']} | {r['unet_guided_ms']} | {r['vae_encode_fwd_bwd_ms']} | {r['floor_ms']} | "
              f"{r['step_ms']} | {r['ratio']} | {r['peak_gpu_memory_gb']} | {stages} |")


if __name__ == "__main__":
    sys.exit(main())
