"""The diversity benchmark (docs/evaluation.md): FSD vs SDS on colour-free prompts of the built-in shapes prior,
same prompts, seeds, steps and cameras, then ``python -m fsd_gs.evaluate`` on the result: quality, diversity and 3D
consistency (view accuracy, Janus rate on the prompts whose kind has a front).

    python scripts/diversity_benchmark.py                          # 8 prompts x 8 seeds x {SDS, FSD}: hours on a 2-core CPU
    python scripts/diversity_benchmark.py --prompt-set colour-free # the 6 diversity prompts of the earlier tables
    python scripts/diversity_benchmark.py --prompts "a mushroom" "a car" --seeds 0 1 --steps 30 \\
        --out /tmp/tiny --docs-dir /tmp/tiny/docs          # a smoke run (minutes)

Training goes through ``python -m fsd_gs.batch`` when it is installed (``--runner auto``), else through one
``python -m fsd_gs.train`` process per asset (OMP_NUM_THREADS=1, ``--jobs`` at a time) with a batch manifest
(fsd_gs.batch/1) written here. Rerunning with the same ``--out`` skips the assets already done.
Writes <out>/evaluation-<time>/ (evaluation.md, evaluation.json, gallery/) and copies the table to
<docs-dir>/table.md and the gallery to <docs-dir>/gallery/ (for BENCHMARKS.md and docs/).
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsd_gs.errors import UserError, require, run_cli  # noqa: E402

PROMPTS = ("a mushroom", "a car", "a house", "a chair", "a bird", "a rocket")
"""Colour-free prompts: the shapes world has 8 right colours for each, so diversity across seeds is measurable."""
FRONT_PROMPTS = ("a chair", "a fish", "a house", "a car", "a bird", "a robot")
"""Colour-free prompts of kinds with a clear front (FRONT_KINDS), for the 3D consistency columns (view accuracy, Janus)."""
PROMPT_SETS: dict[str, tuple[str, ...]] = {
    "colour-free": PROMPTS,
    "front": FRONT_PROMPTS,
    "all": tuple(dict.fromkeys(PROMPTS + FRONT_PROMPTS)),
}
"""The prompt sets of --prompt-set: "all" = both above without repeats (8 prompts, 7 with a front)."""


@dataclass
class BenchmarkConfig:
    """FSD vs SDS diversity on the built-in shapes prior: train prompts x seeds x presets, then evaluate."""

    prompt_set: Literal["all", "colour-free", "front"] = "all"
    """Which prompts (PROMPT_SETS): colour-free = the diversity prompts, front = front kinds (chair, fish, house, car, bird,
    robot) for the consistency columns, all = both."""
    prompts: Optional[tuple[str, ...]] = None
    """Prompts instead of --prompt-set's (colour-free, in the shapes world's vocabulary)."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    """Seeds; CROSS-FID compares the first half with the second half."""
    presets: tuple[str, ...] = ("shapes-sds", "shapes-fsd-plain", "shapes-fsd")
    """Presets (names in configs/, or YAML paths); each its own row (shapes-fsd has Perp-Neg, shapes-fsd-plain not)."""
    steps: Optional[int] = None
    """Training steps per asset; None: the presets' own (600)."""
    out: Optional[Path] = None
    """Benchmark folder (default outputs/diversity-benchmark-<date-time>); the same --out again continues it."""
    runner: Literal["auto", "batch", "subprocess"] = "auto"
    """auto: python -m fsd_gs.batch when installed, else one python -m fsd_gs.train process per asset."""
    jobs: int = 2
    """Assets trained at the same time (one CPU thread each); 1 with the batch runner: its local engine (one
    process, e.g. on a GPU)."""
    group_seeds: int = 1
    """With the batch runner: optimise up to K seeds of a prompt and preset together (one prior call per step;
    fast on a GPU, no gain on a one-thread CPU)."""
    train_args: str = ""
    """More train options for every asset, one string, e.g. --train-args="--guidance.guidance-scale 5" (with "=")."""
    views: int = 24
    """Evaluation views per asset (the paper: 24)."""
    ddim_samples: int = 8
    """DDIM samples per prompt for the "DDIM images" row."""
    ddim_steps: int = 50
    """DDIM steps of those samples."""
    docs_dir: Optional[Path] = ROOT / "docs" / "diversity-benchmark"
    """Copy the table (table.md) and the gallery (gallery/) here; None: do not copy."""
    replace_docs: bool = False
    """Replace table.md and gallery/ in --docs-dir when they exist (otherwise that is an error)."""

    @property
    def prompt_list(self) -> tuple[str, ...]:
        """The benchmark's prompts: --prompts, else --prompt-set's."""
        return self.prompts if self.prompts is not None else PROMPT_SETS[self.prompt_set]

    def validate(self) -> None:
        require(len(self.prompt_list) >= 1 and len(self.seeds) >= 2, "need at least one prompt and two seeds")
        require(len(set(self.seeds)) == len(self.seeds), f"--seeds has repeated values {list(self.seeds)}")
        require(self.jobs >= 1, f"--jobs must be >= 1, got {self.jobs}")
        require(self.steps is None or self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        require(self.group_seeds >= 1, f"--group-seeds must be >= 1, got {self.group_seeds}")
        if self.docs_dir is not None and not self.replace_docs:
            taken = [n for n in ("table.md", "gallery") if (self.docs_dir / n).exists()]
            require(not taken, f"{self.docs_dir} already holds {', '.join(taken)}: pass --replace-docs or another --docs-dir")


# -- training -------------------------------------------------------------------------------------
def preset_path(name: str) -> str:
    """A preset name as a file the train parser takes (``<name>.yaml`` in the shipped presets' folder), else ``name``."""
    from fsd_gs.config import presets_dir

    if Path(name).is_file():
        return name
    path = presets_dir() / f"{name}.yaml"
    return str(path) if path.is_file() else name


def preset_method(name: str) -> str:
    """The method a preset trains with (its YAML's ``method``; "fsd" when it says none)."""
    import yaml

    path = Path(preset_path(name))
    data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return str((data or {}).get("method", "fsd"))


def train_options(cfg: BenchmarkConfig) -> list[str]:
    """The train options every asset gets beyond its preset: --steps and --train-args."""
    return (["--steps", str(cfg.steps)] if cfg.steps is not None else []) + shlex.split(cfg.train_args)


def benchmark_grid(cfg: BenchmarkConfig) -> list:
    """The benchmark's assets as fsd_gs.batch's grid items (ids ``<prompt>/<preset label>/seed<N>``), for either runner."""
    from fsd_gs.batch.grid import build_grid, parse_presets

    return build_grid(cfg.prompt_list, parse_presets(cfg.presets), cfg.seeds)


class BatchCrashed(RuntimeError):
    """fsd_gs.batch ended with a traceback (not a per-asset failure, which stays in its manifest)."""


def train_with_batch(cfg: BenchmarkConfig, out: Path) -> Path:
    """python -m fsd_gs.batch over the grid; returns its manifest.json (failed assets stay listed in it)."""
    cmd = [
        sys.executable,
        "-m",
        "fsd_gs.batch",
        "--prompts",
        *cfg.prompt_list,
        "--seeds",
        *map(str, cfg.seeds),
        "--presets",
        *cfg.presets,
        "--out",
        str(out / "batch"),
    ]
    cmd += ["--engine", "local"] if cfg.jobs == 1 else ["--engine", "ray", "--workers", str(cfg.jobs), "--cpus-per-worker", "1"]
    cmd += ["--group-seeds", str(cfg.group_seeds), "--", *train_options(cfg)]
    print("$ " + " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    manifest = out / "batch" / "manifest.json"
    if code == 2:
        raise UserError("python -m fsd_gs.batch refused the options (exit code 2): see its message above")
    if code not in (0, 1) or not manifest.is_file():
        raise BatchCrashed(f"python -m fsd_gs.batch crashed (exit code {code})")
    if not any(i.get("status") == "done" for i in json.loads(manifest.read_text()).get("items", [])):
        raise BatchCrashed("python -m fsd_gs.batch trained no asset (see its messages above)")
    return manifest


def _train_one(cfg: BenchmarkConfig, item: dict, arg: str, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "fsd_gs.train",
        "--config",
        preset_path(arg),
        "--prompt",
        item["prompt"],
        "--seed",
        str(item["seed"]),
        "--output-dir",
        str(out / "runs" / item["preset"]),
        "--viewer.no-enabled",
        "--output.no-progress",
        *train_options(cfg),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    run_dir = Path(lines[-1]) if lines else None
    if proc.returncode == 0 and run_dir is not None and (run_dir / "model.ply").is_file():
        return {**item, "status": "done", "run_dir": os.path.relpath(run_dir, out), "error": None}
    error = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {
        **item,
        "status": "failed",
        "error": f"exit code {proc.returncode}: {error}",
        "run_dir": os.path.relpath(run_dir, out) if run_dir and run_dir.is_dir() else None,
    }


def train_with_subprocesses(cfg: BenchmarkConfig, out: Path) -> Path:
    """One python -m fsd_gs.train per asset (``jobs`` at a time); writes and returns an fsd_gs.batch/1 manifest.
    Items are the benchmark's grid (:func:`benchmark_grid`), so two presets of one method stay apart."""
    manifest = out / "manifest.json"
    done = {}
    if manifest.is_file():
        done = {i["id"]: i for i in json.loads(manifest.read_text())["items"] if i["status"] == "done"}
    grid = benchmark_grid(cfg)
    args = {g.id: g.preset.arg for g in grid}
    methods = {g.preset.arg: preset_method(g.preset.arg) for g in grid}  # one YAML read per preset
    items = [
        {
            "id": g.id,
            "prompt": g.prompt,
            "method": methods[g.preset.arg],
            "preset": g.preset.label,
            "seed": g.seed,
            "run_dir": None,
            "status": "pending",
            "error": None,
        }
        for g in grid
    ]
    items = [done.get(i["id"], i) for i in items]

    def write() -> None:
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps({"format": "fsd_gs.batch/1", "items": items}, indent=2) + "\n")
        tmp.replace(manifest)

    todo = [k for k, i in enumerate(items) if i["status"] != "done"]
    write()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(cfg.jobs) as pool:
        futures = {pool.submit(_train_one, cfg, items[k], args[items[k]["id"]], out): k for k in todo}
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            k = futures[future]
            items[k] = future.result()
            write()
            elapsed = time.perf_counter() - start
            eta = elapsed / n * (len(todo) - n)
            print(
                f"[{n}/{len(todo)}] {items[k]['id']}: {items[k]['status']}"
                f"{' (' + items[k]['error'] + ')' if items[k]['error'] else ''}; {elapsed:.0f} s, about {eta:.0f} s left",
                flush=True,
            )
    return manifest


def done_assets(cfg: BenchmarkConfig, out: Path) -> int:
    """How many of this grid's assets the benchmark folder's manifest (either runner's) already lists as done."""
    ids = {g.id for g in benchmark_grid(cfg)}
    count = 0
    for manifest in (out / "manifest.json", out / "batch" / "manifest.json"):
        if manifest.is_file():
            items = json.loads(manifest.read_text()).get("items", [])
            count += sum(i.get("status") == "done" and i.get("id") in ids for i in items)
    return count


# -- main -----------------------------------------------------------------------------------------
def run(argv: Sequence[str]) -> int:
    import tyro

    from fsd_gs.evaluate.evaluation import EvaluateConfig, evaluate
    from fsd_gs.evaluate.views import ViewConfig

    cfg = tyro.cli(BenchmarkConfig, args=list(argv), description=__doc__)
    cfg.validate()
    out = cfg.out or ROOT / "outputs" / f"diversity-benchmark-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    runner = cfg.runner
    if runner == "auto":
        runner = "batch" if importlib.util.find_spec("fsd_gs.batch") is not None else "subprocess"
    reused = done_assets(cfg, out)
    start = time.perf_counter()
    try:
        manifest = train_with_batch(cfg, out) if runner == "batch" else train_with_subprocesses(cfg, out)
    except BatchCrashed as exc:
        if cfg.runner == "batch":
            raise
        print(f"warning: {exc}; training with one python -m fsd_gs.train process per asset instead", file=sys.stderr)
        runner = "subprocess"
        manifest = train_with_subprocesses(cfg, out)
    train_s = time.perf_counter() - start
    # Every evaluation setting the benchmark's numbers depend on, explicit (evaluate's defaults may change).
    result = evaluate(
        EvaluateConfig(
            paths=(manifest,),
            view=ViewConfig(views=cfg.views),
            truth=True,
            ddim_samples=cfg.ddim_samples,
            ddim_steps=cfg.ddim_steps,
        )
    )
    steps = cfg.steps if cfg.steps is not None else "the presets'"
    total = len(cfg.prompt_list) * len(cfg.seeds) * len(cfg.presets)
    earlier = f" ({reused} of the {total} assets were trained by an earlier call with this --out)" if reused else ""
    chosen = "" if cfg.prompts is not None else f" (prompt set {cfg.prompt_set!r})"
    header = (
        f"Diversity benchmark: {len(cfg.prompt_list)} prompts{chosen} x {len(cfg.seeds)} seeds x {', '.join(cfg.presets)}, "
        f"{steps} steps, trained with {runner} in {train_s / 60:.1f} min{earlier}; "
        f"`python scripts/diversity_benchmark.py {shlex.join(argv)}`".rstrip()
        + "\n\n"
    )
    table = header + (result.folder / "evaluation.md").read_text()
    (result.folder / "benchmark.md").write_text(table)
    if cfg.docs_dir is not None:
        cfg.docs_dir.mkdir(parents=True, exist_ok=True)
        (cfg.docs_dir / "table.md").write_text(table)
        if (cfg.docs_dir / "gallery").exists():
            shutil.rmtree(cfg.docs_dir / "gallery")
        shutil.copytree(result.folder / "gallery", cfg.docs_dir / "gallery")
        print(f"table: {cfg.docs_dir / 'table.md'}; gallery: {cfg.docs_dir / 'gallery' / 'index.html'}")
    print(table.split("\n## Per prompt")[0].rstrip())
    print(result.folder)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
