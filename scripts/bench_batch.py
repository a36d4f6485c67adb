"""Throughput of many assets: sequential `python -m fsd_gs.train` runs vs the batch engine vs K seeds together.

Modes (each trains the same grid from scratch into its own folder, timed end to end, start-up included):
  * sequential: one `python -m fsd_gs.train` process per asset, one after another (today's way: each
    process imports torch and loads the prior again; torch uses every core);
  * batch:      `python -m fsd_gs.batch` on a private local Ray (long-lived workers, prior loaded once per
    worker; CPU workers one torch thread each);
  * grouped:    the same with --group-seeds K (K seeds of a prompt share one batched prior call per step).

Default grid: 2 prompts x 2 seeds x shapes-fsd/shapes-sds (8 assets) on the CPU with the shapes prior. On a GPU
with full-size random weights (scripts/make_random_pipeline.py --kind sd21 --out /tmp/sd21-random):
    python scripts/bench_batch.py --model /tmp/sd21-random --presets fsd-sd21 --steps 200 --gpus-per-worker 1
CPU:
    python scripts/bench_batch.py --steps 100 --out bench_batch.json

Prints one line per mode and writes JSON (--out) after each mode: wall seconds, assets done, assets/hour, and what
the assets' report.json files say about where the wall time went (``reports``: the median wall seconds of an asset's
run, the slowest first step, the steady step rate, the prior load), so a slow mode shows whether compilation,
start-up or the steps themselves cost it.
Everything after -- is passed to the train options of every asset in every mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

ROOT = Path(__file__).resolve().parent.parent
Mode = Literal["sequential", "batch", "grouped"]


@dataclass
class Args:
    """Assets per hour of sequential train runs, the batch engine and K-batched seeds, on one grid."""

    prompts: tuple[str, ...] = ("a red mushroom", "a blue car")
    """Prompts of the grid."""
    presets: tuple[str, ...] = ("shapes-fsd", "shapes-sds")
    """Presets of the grid (names or YAML paths)."""
    seeds: tuple[str, ...] = ("0-1",)
    """Seeds of the grid (numbers and ranges)."""
    steps: int = 100
    """Training steps per asset."""
    model: Optional[str] = None
    """Replace the presets' model (e.g. a random-weight SD folder from scripts/make_random_pipeline.py)."""
    modes: tuple[Mode, ...] = ("sequential", "batch", "grouped")
    """Which ways to run the grid."""
    group_seeds: int = 2
    """K of the grouped mode."""
    workers: Optional[int] = None
    """Batch workers (default: the batch command's: CPUs, or GPUs / gpus-per-worker)."""
    gpus_per_worker: Optional[float] = None
    """Passed to the batch command (default: its own)."""
    work_dir: Optional[Path] = None
    """Where the runs go (default: a temporary folder, removed at the end)."""
    out: Path = Path("bench_batch.json")
    """The JSON results file (rewritten after each mode)."""


def grid_size(args: Args) -> int:
    from fsd_gs.batch.grid import parse_seeds

    return len(args.prompts) * len(args.presets) * len(parse_seeds(args.seeds))


def train_args(args: Args, extra: list[str]) -> list[str]:
    model = ["--model", args.model] if args.model else []
    return ["--steps", str(args.steps), *model, *extra]


def run_sequential(args: Args, folder: Path, extra: list[str]) -> int:
    from fsd_gs.batch.cli import preset_file
    from fsd_gs.batch.grid import parse_seeds

    done = 0
    for preset in args.presets:
        for prompt in args.prompts:
            for seed in parse_seeds(args.seeds):
                cmd = [
                    sys.executable,
                    "-m",
                    "fsd_gs.train",
                    "--config",
                    preset_file(preset),
                    "--prompt",
                    prompt,
                    "--seed",
                    str(seed),
                    "--output-dir",
                    str(folder),
                    "--viewer.no-enabled",
                    "--output.no-progress",
                    *train_args(args, extra),
                ]
                done += subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode == 0
    return done


def run_batch(args: Args, folder: Path, extra: list[str], group: int) -> int:
    cmd = [
        sys.executable,
        "-m",
        "fsd_gs.batch",
        "--out",
        str(folder),
        "--no-progress",
        "--prompts",
        *args.prompts,
        "--presets",
        *args.presets,
        "--seeds",
        *args.seeds,
        "--group-seeds",
        str(group),
    ]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.gpus_per_worker is not None:
        cmd += ["--gpus-per-worker", str(args.gpus_per_worker)]
    subprocess.run([*cmd, "--", *train_args(args, extra)], cwd=ROOT, stdout=subprocess.DEVNULL)
    manifest = json.loads((folder / "manifest.json").read_text())
    return sum(item["status"] == "done" for item in manifest["items"])


def used_mode_folders(work: Path, modes: tuple[str, ...]) -> list[Path]:
    """The folders ``work``/<mode> of ``modes`` that exist and are not empty (a rerun there would resume them)."""
    return [work / mode for mode in modes if (work / mode).is_dir() and any((work / mode).iterdir())]


def report_summary(folder: Path) -> dict[str, float | int | None]:
    """What the report.json files under ``folder`` say: how many, and the median run wall seconds (K seeds trained
    together each report their shared run's), the slowest and the median first step (a cold compile shows there), the
    median steps/s after the first step and the median prior load seconds. Empty when there are no reports."""
    from statistics import median

    reports = [json.loads(p.read_text()) for p in sorted(folder.rglob("report.json"))]

    def middle(key: str, pick: Callable[[list[float]], float] = median) -> float | None:
        found = [float(r[key]) for r in reports if r.get(key) is not None]
        return round(pick(found), 3) if found else None

    if not reports:
        return {}
    return {
        "reports": len(reports),
        "run_wall_s_median": middle("wall_time_s"),
        "first_step_s_max": middle("first_step_s", max),
        "first_step_s_median": middle("first_step_s"),
        "steps_per_s_median": middle("steps_per_s_after_first_step"),
        "prior_load_s_median": middle("prior_load_s"),
    }


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = sys.argv[1:] if argv is None else argv
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = tyro.cli(Args, args=own)
    total = grid_size(args)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_batch-"))
    used = used_mode_folders(work, args.modes)
    if used:
        print(
            f"error: {', '.join(map(str, used))} already holds runs, which the batch would continue instead of "
            "training (its wall time would not be the grid's): pass an empty or new --work-dir",
            file=sys.stderr,
        )
        return 2
    results = {
        "grid": {
            "prompts": args.prompts,
            "presets": args.presets,
            "seeds": args.seeds,
            "assets": total,
            "steps": args.steps,
            "model": args.model,
            "train_args": extra,
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "modes": {},
    }
    try:
        import torch

        results["machine"].update(
            torch=torch.__version__, gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        )
    except ImportError:  # pragma: no cover
        pass
    for mode in args.modes:
        folder = work / mode
        started = time.perf_counter()
        if mode == "sequential":
            done = run_sequential(args, folder, extra)
        else:
            done = run_batch(args, folder, extra, args.group_seeds if mode == "grouped" else 1)
        wall = time.perf_counter() - started
        results["modes"][mode] = {
            "wall_s": round(wall, 2),
            "assets_done": done,
            "assets": total,
            "assets_per_hour": round(done / wall * 3600, 1),
            "group_seeds": args.group_seeds if mode == "grouped" else 1,
            "reports": report_summary(folder),
        }
        print(f"{mode:>10}: {done}/{total} assets in {wall:7.1f} s = {done / wall * 3600:8.1f} assets/hour", flush=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.work_dir is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
