"""`python -m fsd_gs.batch`: the command line. Parse -> build the grid -> start the engine -> drive -> print.

Everything after ``--`` goes to the train parser (``python -m fsd_gs.train``'s options) for every asset.
The path of manifest.json is the last line printed. Exit codes: 0 every asset done, 1 some failed or
unfinished, 2 bad options, 128 + the signal when stopped by SIGINT (130), SIGTERM (143) or SIGHUP (129): the running
assets save their checkpoints first; rerun the same command to continue.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence

from fsd_gs.batch.driver import BatchResult, Driver
from fsd_gs.batch.grid import Preset, Shard, build_grid, collect_prompts, make_units, parse_presets, parse_seeds, shard_units
from fsd_gs.batch.grouping import group_plan
from fsd_gs.errors import UserError, require, run_cli

RESERVED = ("--prompt", "--seed", "--config", "--resume", "--output-dir", "--output_dir")
"""Train options the batch sets per asset; passing them after -- is an error."""
FORCED = ("--viewer.no-enabled",)
"""Train options every batch asset gets before the pass-through ones (no live viewer per asset)."""


@dataclass
class BatchConfig:
    """Train many assets: prompts x presets x seeds, one run folder each, resumable, on Ray or in this process.

    python -m fsd_gs.batch --prompts "a red mushroom" "a blue car" --seeds 0-3 --presets shapes-fsd shapes-sds -- --steps 300

    Everything after -- is passed to the train options of every asset (see python -m fsd_gs.train --help).
    The last line printed is the path of the batch's manifest.json (python -m fsd_gs.evaluate takes it).
    """

    prompts: tuple[str, ...] = ()
    """Prompts, e.g. --prompts "a red mushroom" "a blue car"."""
    prompts_file: Optional[Path] = None
    """A text file of prompts, one per line (# starts a comment); added after --prompts."""
    seeds: tuple[str, ...] = ("0",)
    """Seeds: numbers and inclusive ranges, e.g. --seeds 0 1 2 or --seeds 0-7."""
    presets: tuple[str, ...] = ("fsd-sd21",)
    """Methods/presets: preset names (shapes-fsd, shapes-sds, fsd-sd21, sds-sd21) or YAML paths."""
    out: Optional[Path] = None
    """The batch folder (default outputs/batch-<date-time>); rerunning with the same --out continues it."""
    engine: Literal["ray", "local"] = "ray"
    """ray: long-lived workers on Ray (a private local Ray unless --ray-address); local: sequentially in this process."""
    ray_address: Optional[str] = None
    """Join this Ray cluster ("auto" or HOST:PORT) instead of starting a private local one."""
    workers: Optional[int] = None
    """Ray workers (actors); default: GPUs / gpus-per-worker on GPUs, CPUs / cpus-per-worker on CPUs."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves per worker (and OMP_NUM_THREADS in it); the training step's torch threads are the train
    option --threads (default 1), so give both the same number."""
    gpus_per_worker: Optional[float] = None
    """GPUs per worker: 1 = one per GPU, 0.25 = four workers share a GPU (small priors), 0 = CPU workers;
    default when Ray sees GPUs: 0.25 when every preset's prior is a built-in shapes one, else 1; without GPUs 0."""
    prior_cache: int = 1
    """Loaded priors each worker keeps (keyed by model, dtype, compile, device)."""
    group_seeds: Optional[int] = None
    """Optimise up to K seeds of one prompt and preset together (one batched prior call per step for all their views).
    Default per prior: 8 for the shapes priors and for Stable Diffusion 2.1-base at one view (the *-sd21 presets:
    about 2x the assets per hour of one at a time, ~15 GB of GPU memory), 1 for other diffusion priors (not measured).
    Methods that train a model per asset (vsd) always train their seeds one at a time (said once, never a failure)."""
    shard: Optional[str] = None
    """Run only slice i/n of the grid (0 <= i < n; deterministic, e.g. --shard $SLURM_ARRAY_TASK_ID/8)."""
    max_attempts: int = 3
    """Tries per asset in this command when its worker dies (killed, out of memory, node lost)."""
    progress: bool = True
    """Show a progress bar with ETA (only when stdout is a terminal; plain lines otherwise)."""

    def validate(self) -> None:
        require(self.group_seeds is None or self.group_seeds >= 1, f"--group-seeds must be >= 1, got {self.group_seeds}")
        require(self.max_attempts >= 1, f"--max-attempts must be >= 1, got {self.max_attempts}")
        require(self.prior_cache >= 1, f"--prior-cache must be >= 1, got {self.prior_cache}")
        require(self.workers is None or self.workers >= 1, f"--workers must be >= 1, got {self.workers}")


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(batch options, train options): the train options are everything after the first "--"."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def parse_batch_args(argv: Sequence[str]) -> tuple[BatchConfig, list[str]]:
    from fsd_gs.cli import tyro_cli

    own, passthrough = split_passthrough(argv)
    cfg = tyro_cli(BatchConfig, "python -m fsd_gs.batch", own)
    cfg.validate()
    for arg in passthrough:
        name = arg.split("=", 1)[0]
        require(
            name not in RESERVED,
            f"{name} is set per asset by the batch: use --prompts/--seeds/--presets/--out before the --, not after it",
        )
    return cfg, passthrough


def preset_file(name: str) -> str:
    """A preset name as a path the train parser takes: ``<name>.yaml`` in the shipped preset folders when it is there,
    else ``name`` unchanged (paths, and names the train parser resolves itself)."""
    import fsd_gs

    if Path(name).is_file():
        return name
    package = Path(fsd_gs.__file__).resolve().parent
    for folder in (package / "configs", package.parent / "configs"):
        if (folder / f"{name}.yaml").is_file():
            return str(folder / f"{name}.yaml")
    return name


def preset_configs(presets: Sequence[Preset], passthrough: Sequence[str], probe_prompt: str) -> dict[str, Any]:
    """The TrainConfig of each preset with the pass-through options (the train parser's own checks apply)."""
    from fsd_gs.train import parse_config

    configs = {}
    for preset in presets:
        cfg = parse_config(["--config", preset_file(preset.arg), "--prompt", probe_prompt, *FORCED, *passthrough])
        cfg.validate()  # bad options fail here, before anything runs
        configs[preset.label] = cfg
    return configs


def default_out() -> Path:
    return Path("outputs") / f"batch-{_dt.datetime.now():%Y%m%d-%H%M%S}"


def make_engine(cfg: BatchConfig, models: Sequence[str] = ()) -> Any:
    """The batch's engine; ``models`` (each preset's --model) decide the default GPUs per Ray worker."""
    from fsd_gs.batch.engine import LocalEngine, RayEngine, RaySettings
    from fsd_gs.prior.detectors import is_shapes_world

    if cfg.engine == "local":
        return LocalEngine(prior_cache=cfg.prior_cache)
    return RayEngine(
        RaySettings(
            address=cfg.ray_address,
            workers=cfg.workers,
            cpus_per_worker=cfg.cpus_per_worker,
            gpus_per_worker=cfg.gpus_per_worker,
            prior_cache=cfg.prior_cache,
            small_priors=bool(models) and all(is_shapes_world(m) for m in models),
        )
    )


def run_batch(argv: Sequence[str]) -> BatchResult:
    """Parse ``argv`` and run the batch (the library entry point; :func:`main` adds printing and exit codes)."""
    cfg, passthrough = parse_batch_args(argv)
    prompts = collect_prompts(cfg.prompts, cfg.prompts_file)
    presets = parse_presets(cfg.presets)
    seeds = parse_seeds(cfg.seeds)
    shard = Shard.parse(cfg.shard) if cfg.shard is not None else None
    configs = preset_configs(presets, passthrough, prompts[0])
    plans = {label: group_plan(c, cfg.group_seeds, label) for label, c in configs.items()}
    units = shard_units(make_units(build_grid(prompts, presets, seeds), {k: p.size for k, p in plans.items()}), shard)
    folder = Path(cfg.out) if cfg.out is not None else default_out()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the batch folder {folder} ({exc.strerror}): pass a writable --out") from exc
    require(os.access(folder, os.W_OK), f"the batch folder {folder} is not writable: pass a writable --out")
    meta = {
        "prompts": prompts,
        "presets": [p.arg for p in presets],
        "seeds": seeds,
        "train_args": passthrough,
        "group_seeds": {label: p.size for label, p in plans.items()},
        "notes": [p.note for p in plans.values() if p.note],
    }
    if not units:  # a shard of a grid smaller than the shard count
        print(f"shard {shard} of this grid is empty: nothing to do")
    # a RayEngine, a LocalEngine or the empty stand-in
    engine: Any = make_engine(cfg, [c.model for c in configs.values()]) if units else _NoEngine()
    if engine.name == "ray":
        print(f"ray: {engine.workers} workers ({engine.gpus_per_worker:g} GPU, {engine.threads} thread(s) each)", flush=True)
    return Driver(folder, units, configs, engine, max_attempts=cfg.max_attempts, progress=cfg.progress, meta=meta).run()


class _NoEngine:
    """Stands in when this driver has no units (an empty shard): nothing is started."""

    name, cpu_only, workers, device = "none", False, 0, "cpu"

    def idle_slots(self) -> int:
        return 0

    def busy(self) -> bool:
        return False

    def stop_running(self, grace_s: float) -> Iterator[Any]:
        return iter(())

    def close(self, interrupted: bool = False) -> None:
        pass


def run(argv: Sequence[str]) -> int:
    result = run_batch(argv)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.counts.items()))
    if result.interrupted:
        print("stopped: rerun the same command to continue", file=sys.stderr)
    print(f"batch: {counts}; {result.manifest_path.parent / 'summary.md'}")
    print(result.manifest_path)
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: UserError -> one line on stderr and exit code 2."""
    return run_cli(run, argv)
