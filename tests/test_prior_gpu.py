"""Stable Diffusion 2.1-base size on CUDA in fp16, render-free: load, then FSD steps on a 512x512 image tensor
through encode_images + distill_loss + backward, with timings.

On the GPU machine (prints the numbers):
    pytest -s -m cuda tests/test_prior_gpu.py
The same helper runs on the CPU with the tiny pipeline (test_fsd_image_steps_on_cpu), so its logic is checked
everywhere; only the CUDA test builds the 2.6 GB random-weight SD 2.1-base pipeline (in a temporary folder).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import pytest
import torch

from fsd_gs.distill import distill_loss
from fsd_gs.noise import NOISE_PRESETS, build_noise
from fsd_gs.prior.base import DiffusionPrior
from fsd_gs.prior.factory import PriorConfig, load_prior
from fsd_gs.profiling import synchronize
from fsd_gs.schedule import FSD_SCHEDULE, sample_timestep

VIEWS = ["front", "side", "back", "overhead"]


def fsd_image_steps(
    prior: DiffusionPrior, height: int, width: int, batch: int = 1, steps: int = 3, guidance_scale: float = 7.5, lr: float = 1e-2
) -> dict[str, float]:
    """Optimise images [batch,3,H,W] (a leaf tensor) with FSD for ``steps`` Adam steps; return timings and checks.

    Step: eps = constant noise, t = FSD's sqrt schedule, loss = distill_loss(prior, images, ...), backward
    through the VAE encoder, Adam. The first step is a warm-up; "step_s" is the median of the others.
    """
    device = prior.device
    start = time.perf_counter()
    embeddings = prior.encode_prompts("a photo of a red mushroom", "", view_dependent=True)
    synchronize(device)
    encode_s = time.perf_counter() - start
    conditioning = embeddings.select([VIEWS[i % len(VIEWS)] for i in range(batch)])  # pooled rows too (SD3)
    noise = build_noise(NOISE_PRESETS["fsd2d"], prior.model_shape(height, width), seed=0, device=device)
    images = torch.full((batch, 3, height, width), 0.5, device=device, requires_grad=True)
    start_images = images.detach().clone()
    optimizer = torch.optim.Adam([images], lr=lr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses, grad_norms = [], [], []
    for step in range(steps):
        synchronize(device)
        tic = time.perf_counter()
        t = sample_timestep(FSD_SCHEDULE, step / max(1, steps), None, prior.num_train_timesteps, batch=batch).to(device)
        eps = noise(torch.zeros(batch), torch.zeros(batch))
        result = distill_loss(prior, images, eps, t, conditioning, guidance_scale)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        grad_norms.append(float(images.grad.norm()))
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - tic)
        losses.append(float(result.loss.detach()))
    timed = times[1:] if len(times) > 1 else times
    return {
        "encode_prompts_s": encode_s,
        "first_step_s": times[0],
        "step_s": statistics.median(timed),
        "loss_last": losses[-1],
        "all_finite": float(all(math.isfinite(v) for v in losses + grad_norms)),
        "min_grad_norm": min(grad_norms),
        "image_change": float((images.detach() - start_images).abs().max()),
        "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0,
    }


def check(stats: dict[str, float]) -> None:
    assert stats["all_finite"] == 1.0, stats
    assert stats["min_grad_norm"] > 0.0, "the gradient must reach the image through the VAE encoder"
    assert stats["image_change"] > 0.0


def test_fsd_image_steps_on_cpu(tiny_sd_prior):
    stats = fsd_image_steps(tiny_sd_prior, 64, 64, batch=2, steps=3)
    check(stats)
    print({k: round(v, 4) for k, v in stats.items()})


@pytest.fixture(scope="module")
def sd21_random_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pre-built folder from $FSD_GS_SD21_DIR (scripts/make_random_pipeline.py --kind sd21), else built here."""
    import os

    from fsd_gs.prior.random_pipeline import save_sd21_base_random_pipeline

    if os.environ.get("FSD_GS_SD21_DIR"):
        return Path(os.environ["FSD_GS_SD21_DIR"])

    start = time.perf_counter()
    path = save_sd21_base_random_pipeline(tmp_path_factory.mktemp("sd21") / "sd21-random", seed=0)
    print(f"\nbuilt the random SD 2.1-base pipeline in {time.perf_counter() - start:.1f} s")
    return path


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 4])
def test_sd21_size_fsd_step_fp16_cuda(sd21_random_dir, batch):
    device = torch.device("cuda")
    start = time.perf_counter()
    prior = load_prior(str(sd21_random_dir), PriorConfig(dtype="auto"), device)
    synchronize(device)
    load_s = time.perf_counter() - start
    assert prior.dtype == torch.float16 and prior.resolution == 512
    assert next(prior.unet.parameters()).device.type == "cuda"
    n_unet = sum(p.numel() for p in prior.unet.parameters())
    assert n_unet == 865_910_724
    stats = fsd_image_steps(prior, 512, 512, batch=batch, steps=6)
    check(stats)
    print(
        f"\nSD 2.1-base size, fp16, {torch.cuda.get_device_name(device)}, batch {batch} at 512x512: "
        f"load {load_s:.1f} s, prompts {stats['encode_prompts_s']:.2f} s, first step {stats['first_step_s']:.3f} s, "
        f"step {stats['step_s'] * 1000:.0f} ms (median), peak {stats['peak_gpu_gb']:.2f} GB, "
        f"text encoder on {next(prior.text_encoder.parameters()).device}"
    )
