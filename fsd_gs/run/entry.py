"""The library entry points of a run: load its prior, open its folder, train it (one asset or K together).

    report = train_asset(cfg, Path("outputs/x/run"))          # train one asset in exactly that folder (or resume it)
    reports = train_assets([cfg0, cfg1], [dir0, dir1])         # K seeds of one prompt, one prior call per step
    run, done = open_run(cfg, run_dir, prior, stack)           # what python -m fsd_gs.train does, step by step:
    reports = train_runs([run], StopRequest())                 # loop, then finish (the same call as train_assets')

Guarantees (README, "What survives what"): a run folder is owned by one process at a time (fsd_gs/run/lock.py);
checkpoints are committed atomically as a whole (fsd_gs/io/checkpoint.py); SIGINT, SIGTERM and SIGHUP stop
after the current step, save a checkpoint and model.ply, and exit 128 + the signal number; a resume repairs
metrics.jsonl and continues bitwise on the CPU (fsd_gs/run/resume.py).
"""

from __future__ import annotations

import signal
from contextlib import ExitStack
from pathlib import Path
from typing import Optional, Sequence

from fsd_gs.config import RESUME_LOG, TrainConfig
from fsd_gs.errors import UserError
from fsd_gs.prior.base import DiffusionPrior
from fsd_gs.run.hooks import Checkpointer, MetricsLog, Snapshots, ViewerFeed
from fsd_gs.run.lock import RunLock
from fsd_gs.run.loop import Run, RunHook, run_loop
from fsd_gs.run.progress import ShowProgress
from fsd_gs.run.report import finish
from fsd_gs.run.resume import check_restorable, check_resume_changes, completed_report, saved_config, saved_report, write_config
from fsd_gs.run.stop import RunStopped, StopRequest
from fsd_gs.run_dir import RunPaths
from fsd_gs.step import DistillStep

CPU_PARAM_LIMIT = 100_000_000
"""A prior whose networks have more parameters than this takes seconds per step on a CPU."""


def default_hooks() -> list[RunHook]:
    """A run's side jobs, in the order they run after each step (the progress line last: it shows the metrics)."""
    return [MetricsLog(), ViewerFeed(), Checkpointer(), Snapshots(), ShowProgress()]


def load_prior_for(cfg: TrainConfig, long_lived: bool = False) -> DiffusionPrior:
    """The run's prior on its device; a large model on a CPU is refused unless --guidance.allow-slow-cpu.

    ``long_lived``: the prior will serve many assets (a batch worker), so ``--prior.compile auto`` compiles.
    """
    from fsd_gs.device import resolve_device
    from fsd_gs.prior.factory import load_prior, parameter_count

    device = resolve_device(cfg.device)
    prior = load_prior(cfg.model, cfg.prior, device, steps=cfg.steps, long_lived=long_lived)
    if device.type == "cpu" and not cfg.guidance.allow_slow_cpu:
        n_params = parameter_count(prior)
        if n_params > CPU_PARAM_LIMIT:
            raise UserError(
                f"{cfg.model} has {n_params / 1e6:.0f}M parameters and would take seconds per step on this CPU: "
                "use --model shapes (the built-in CPU prior), a CUDA GPU, or --guidance.allow-slow-cpu to run anyway"
            )
    return prior


def open_run(
    cfg: TrainConfig,
    run_dir: Optional[Path],
    prior: DiffusionPrior,
    stack: ExitStack,
    progress: bool = False,
    label: str = "",
    hooks: Optional[Sequence[RunHook]] = None,
) -> tuple[Run, Optional[dict]]:
    """The :class:`Run` of ``cfg`` in exactly ``run_dir`` (created, or resumed), locked for this process.

    ``run_dir`` None creates a fresh folder under cfg.output_dir (never reused). Every check that can fail on
    bad input happens before anything is written. Returns (run, report) where report is the saved report of a
    run that is already complete (nothing to do). ``hooks``: the run's side jobs (None: :func:`default_hooks`).
    """
    from fsd_gs.device import resolve_device
    from fsd_gs.run_dir import create_exact_dir, create_run_dir

    cfg.validate()
    step = DistillStep(cfg, prior, resolve_device(cfg.device))

    def fill(folder: Path) -> None:  # a new run folder appears with its config.yaml in it, or not at all
        write_config(RunPaths(folder), cfg)

    if run_dir is None:
        paths = create_run_dir(cfg.output_dir, cfg.prompt, cfg.seed, fill=fill)
        fresh = True
    else:
        paths = RunPaths(Path(run_dir))
        fresh = create_exact_dir(paths.root, fill)
    lock = stack.enter_context(RunLock(paths.root))
    if not fresh and paths.config.is_file():
        saved, raw = saved_config(paths)
        changes = check_resume_changes(saved, cfg)  # only harmless ones, or --steps to extend, get past this
        done = completed_report(cfg, paths.root)
        if done is not None:
            lock.remove = True
            return Run(step, paths, progress=False, lock=lock), done
        report = saved_report(paths)
        check_restorable(paths, report, cfg.from_scratch)
        if changes:
            write_config(paths, cfg, [*raw.get(RESUME_LOG, []), {"changed": {k: list(v) for k, v in changes.items()}}])
    elif not fresh:  # an existing folder without a run in it (made by hand, or by an older version)
        write_config(paths, cfg)
    run = Run(step, paths, progress=progress, label=label, lock=lock, hooks=default_hooks() if hooks is None else hooks)
    run.restore()
    return run, None


def train_runs(runs: Sequence[Run], stop: StopRequest) -> list[dict]:
    """Step opened runs to their end (or a stop signal), then finish each; returns their reports, in order.

    The one loop-and-finish of every caller (:func:`train_assets`, ``python -m fsd_gs.train``, the batch);
    a report's ``completed`` is False when a stop signal came first (each run is saved all the same).
    """
    with stop:
        run_loop(runs, stop)
    return [finish(run, run.done) for run in runs]


def train_assets(
    cfgs: Sequence[TrainConfig], run_dirs: Sequence[Path], prior: Optional[DiffusionPrior] = None, *, progress: bool = False
) -> list[dict]:
    """Train (or resume, or skip when complete) each asset in its folder; all of them step together.

    ``cfgs`` must share prompt, model, guidance and image size (e.g. K seeds of one prompt and preset): one
    prior call per step serves all their views. Returns each run's report. Raises UserError on bad input,
    :class:`RunLocked` when another live process owns a folder, NonFiniteLoss when a loss diverges, and
    :class:`RunStopped` (a KeyboardInterrupt) after saving when a stop signal arrives.
    """
    if len(cfgs) != len(run_dirs) or not cfgs:
        raise ValueError("train_assets needs one run folder per config")
    prior = prior if prior is not None else load_prior_for(cfgs[0])
    with ExitStack() as stack:
        opened = [
            open_run(c, d, prior, stack, progress, label=f"seed {c.seed}: " if len(cfgs) > 1 else "")
            for c, d in zip(cfgs, run_dirs)
        ]
        runs = [run for run, done in opened if done is None]
        stop = StopRequest()
        reports = dict(zip(map(id, runs), train_runs(runs, stop)))
        if not all(report["completed"] for report in reports.values()):
            raise RunStopped(int(stop.signum or signal.SIGINT))
        return [done if done is not None else reports[id(run)] for run, done in opened]


def train_asset(cfg: TrainConfig, run_dir: Path, prior: Optional[DiffusionPrior] = None, *, progress: bool = False) -> dict:
    """Train one asset in exactly ``run_dir`` (see :func:`train_assets`); returns its report."""
    return train_assets([cfg], [run_dir], prior, progress=progress)[0]
