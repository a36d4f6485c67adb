"""Benchmark the renderer: forward + backward time per call, median over repeats.

    python scripts/bench_render.py                        # CPU reference and, if CUDA is present, gsplat
    python scripts/bench_render.py --which cpu --out bench_render.json
    python scripts/bench_render.py --which cuda --cuda-reference   # also the reference on the GPU

Cases (Gaussians from the training initialisation: random ball of radius 0.5, opacity 0.1, scales from
the 3-nearest-neighbour distance; cameras on the orbit at distance 2.5, fov 50 deg):
  cpu:  the pure-torch reference, 64x64, 4,000 Gaussians, 1 camera, ``--threads`` torch threads.
  cuda: gsplat, 512x512, 100,000 Gaussians, batch of 4 cameras (plus the reference, with --cuda-reference,
        at 128x128 / 10,000 Gaussians / batch 4, where it fits in memory).
The loss is a fixed random weighting of rgb and alpha, so every pixel sends a gradient. The machine's
1-minute load average is recorded before and after the CPU runs (the CPU box is shared).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import tyro

from fsd_gs.camera import orbit_cameras
from fsd_gs.gaussians import GaussiansConfig, random_ball_gaussians
from fsd_gs.profiling import synchronize
from fsd_gs.render import RenderConfig, render


@dataclass
class BenchConfig:
    """What to benchmark."""

    which: Literal["all", "cpu", "cuda"] = "all"
    """Which cases to run ('all' skips CUDA cases when there is no GPU)."""
    repeats: int = 21
    """Timed calls per case (the median is reported)."""
    warmup: int = 3
    """Untimed calls first (gsplat JIT-compiles on its first call)."""
    threads: int = 2
    """torch.set_num_threads for the CPU case."""
    sh_degree: int = 0
    """SH degree of the Gaussians."""
    cuda_reference: bool = False
    """Also time the pure-torch reference on the GPU (a smaller case)."""
    out: Optional[Path] = None
    """Write the results as JSON here."""
    seed: int = 0
    """Seed of the Gaussians and the loss weights."""


@dataclass
class Case:
    name: str
    backend: str
    device: str
    width: int
    height: int
    n_gaussians: int
    batch: int


def _cameras(batch: int, size: int, device: str):
    az = torch.linspace(-180.0, 180.0, batch + 1)[:batch] + 17.0
    el = torch.full((batch,), 15.0)
    return orbit_cameras(az, el, torch.full((batch,), 2.5), torch.full((batch,), 50.0), size, size).to(device)


def run_case(case: Case, cfg: BenchConfig) -> dict:
    """Median forward, backward and forward+backward milliseconds of one case."""
    gen = torch.Generator().manual_seed(cfg.seed)
    gcfg = GaussiansConfig(num_points=case.n_gaussians, sh_degree=cfg.sh_degree)
    gaussians = random_ball_gaussians(gcfg, gen, case.device)
    gaussians.active_sh_degree = cfg.sh_degree
    cams = _cameras(case.batch, case.width, case.device)
    weights = torch.rand(case.batch, case.height, case.width, 4, generator=gen).to(case.device)
    render_cfg = RenderConfig(backend=case.backend)
    bg = torch.ones(3, device=case.device)
    fwd, bwd, total = [], [], []
    n_isect = 0
    for i in range(cfg.warmup + cfg.repeats):
        for p in gaussians.params.values():
            p.grad = None
        synchronize(case.device)
        t0 = time.perf_counter()
        out = render(gaussians, cams, bg, render_cfg)
        synchronize(case.device)
        t1 = time.perf_counter()
        (torch.cat([out.rgb, out.alpha], -1) * weights).sum().backward()
        synchronize(case.device)
        t2 = time.perf_counter()
        if i >= cfg.warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            total.append(t2 - t0)
        n_isect = out.info.get("n_intersections", 0)
    ms = lambda xs: round(1e3 * statistics.median(xs), 2)  # noqa: E731
    return {
        **asdict(case),
        "fwd_ms": ms(fwd),
        "bwd_ms": ms(bwd),
        "fwd_bwd_ms": ms(total),
        "fwd_bwd_min_ms": round(1e3 * min(total), 2),
        "intersections": n_isect,
        "repeats": cfg.repeats,
    }


def main(cfg: BenchConfig) -> list[dict]:
    cases: list[Case] = []
    if cfg.which in ("all", "cpu"):
        cases.append(Case("cpu-reference-64-4k", "reference", "cpu", 64, 64, 4_000, 1))
    want_cuda = cfg.which == "cuda" or (cfg.which == "all" and torch.cuda.is_available())
    if want_cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--which cuda needs a CUDA GPU")
        cases.append(Case("cuda-gsplat-512-100k-b4", "gsplat", "cuda", 512, 512, 100_000, 4))
        if cfg.cuda_reference:
            cases.append(Case("cuda-reference-128-10k-b4", "reference", "cuda", 128, 128, 10_000, 4))

    results = []
    for case in cases:
        env: dict = {"torch": torch.__version__}
        if case.device == "cpu":
            torch.set_num_threads(cfg.threads)
            env.update(threads=torch.get_num_threads(), cpus=os.cpu_count(), load_before=os.getloadavg()[0])
        else:
            env.update(gpu=torch.cuda.get_device_name())
        result = run_case(case, cfg)
        if case.device == "cpu":
            env["load_after"] = os.getloadavg()[0]
        results.append({**result, **env})

    header = f"{'case':28s} {'fwd ms':>8s} {'bwd ms':>8s} {'fwd+bwd':>8s} {'min':>8s} {'isect':>9s}  env"
    print(header)
    print("-" * len(header))
    for r in results:
        env = f"threads={r['threads']} load {r['load_before']:.2f}->{r['load_after']:.2f}" if r["device"] == "cpu" else r["gpu"]
        print(
            f"{r['name']:28s} {r['fwd_ms']:8.2f} {r['bwd_ms']:8.2f} {r['fwd_bwd_ms']:8.2f} {r['fwd_bwd_min_ms']:8.2f} "
            f"{r['intersections']:9d}  {env}"
        )
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {cfg.out}")
    return results


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
