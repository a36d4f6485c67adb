"""What the live viewer costs training: a fake training loop with and without it, same work, same seed.

Each step renders 4096 Gaussians at 64x64 from a random orbit camera (the reference rasterizer on the
CPU, gsplat on CUDA), takes a loss and its backward, steps Adam and builds the same TrainingSnapshot the
trainer builds; the "viewer" runs add LiveViewer.update(snapshot) at default ViewerConfig settings.
Runs alternate (off, on, off, on, ...) so that load from other processes hits both alike; the slowdown is
the ratio of the median step times. --browser also keeps a headless Chromium on the page (on the same
machine, so its software WebGL competes for the same cores: an upper bound).

    python scripts/bench_viewer.py --steps 200 --repeats 3 [--device cpu] [--browser] [--out bench_viewer.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fsd_gs.camera import CameraConfig, OrbitSampler  # noqa: E402
from fsd_gs.gaussians import GaussiansConfig, LearningRates, make_optimizers, random_ball_gaussians  # noqa: E402
from fsd_gs.render import render  # noqa: E402
from fsd_gs.viewer.config import ViewerConfig  # noqa: E402
from fsd_gs.viewer.live import LiveViewer, TrainingSnapshot  # noqa: E402


def run(steps: int, device: str, viewer: LiveViewer | None, num_points: int, size: int) -> float:
    """Seconds for ``steps`` fake training steps."""
    gens = {k: torch.Generator().manual_seed(i) for i, k in enumerate(("init", "camera", "noise"))}
    g = random_ball_gaussians(GaussiansConfig(num_points=num_points, init_opacity=0.5), gens["init"], device)
    optimizers = make_optimizers(g, LearningRates())
    sampler = OrbitSampler(CameraConfig(width=size, height=size))
    world_map = torch.randn(4, 16, 16, generator=gens["noise"]).to(device)
    background = torch.ones(3, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        cams = sampler.sample(gens["camera"]).to(device)
        out = render(g, cams, background)
        loss = (out.rgb - 0.5).square().mean()
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        if viewer is not None:
            viewer.update(
                TrainingSnapshot(
                    step=step,
                    total_steps=steps,
                    loss=loss.detach(),
                    timestep=torch.tensor(900 - step),
                    num_gaussians=len(g),
                    it_per_s=0.0,
                    eta_s=float("nan"),
                    gaussians=g,
                    train_rgb=out.rgb[0].detach(),
                    noise_window=world_map[:, 4:12, 4:12],
                    window_origin=(4, 4),
                    window_size=(8, 8),
                )
            )
            while viewer.paused:
                time.sleep(0.05)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--browser", action="store_true", help="keep a headless Chromium on the page")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    cfg = ViewerConfig(port=0)
    viewer = LiveViewer(cfg, total_steps=args.steps, noise_map=torch.randn(4, 16, 16))
    browser = None
    if args.browser:
        from tests.browser import HeadlessChromium

        browser = HeadlessChromium(1100, 850).__enter__()
        browser.open(viewer.url)
        browser.wait_for_text(["Training progress"], timeout=60)
    run(10, args.device, None, args.points, args.size)  # warm-up
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for _ in range(args.repeats):
            times["off"].append(run(args.steps, args.device, None, args.points, args.size))
            before = dict(viewer.stats)
            times["on"].append(run(args.steps, args.device, viewer, args.points, args.size))
            viewer._sent_step = -(10**9)  # the next run starts again at step 1
            print(
                f"off {times['off'][-1]:.2f} s  on {times['on'][-1]:.2f} s  "
                f"published {viewer.stats['published'] - before['published']}",
                flush=True,
            )
    finally:
        if browser is not None:
            browser.__exit__(None, None, None)
        viewer.close()
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    published = viewer.stats["published"]
    result = {
        "device": args.device,
        "steps": args.steps,
        "repeats": args.repeats,
        "gaussians": args.points,
        "size": args.size,
        "browser": args.browser,
        "viewer_config": {"update_every": cfg.update_every, "min_interval_s": cfg.min_interval_s},
        "median_s_off": round(off, 3),
        "median_s_on": round(on, 3),
        "ms_per_step_off": round(1e3 * off / args.steps, 2),
        "ms_per_step_on": round(1e3 * on / args.steps, 2),
        "slowdown_percent": round(100.0 * (on / off - 1.0), 2),
        "published": published,
        "viewer_thread_ms_per_publish": round(1e3 * viewer.stats["publish_cpu_s"] / max(1, published), 2),
        "runs_off": [round(t, 3) for t in times["off"]],
        "runs_on": [round(t, 3) for t in times["on"]],
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
