"""One asset's run around its step, and the loop that steps several runs; side jobs are hooks.

    run = Run(stepper, paths, hooks=[MetricsLog(), Checkpointer(), ...])   # fsd_gs/run/hooks.py
    run.restore()                                   # continue from the newest complete checkpoint
    completed = run_loop([run], stop)               # False when a stop signal came first

A :class:`RunHook` is called at named points: ``after_step`` (after every step, in the order of ``hooks``),
``at_checkpoint`` (after a checkpoint is committed), ``at_end`` (when the run is finished, before its outputs
are written) and ``on_stop`` (a stop signal ended the loop). A new artefact of a run is a new hook, not an edit
to the loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from fsd_gs.io.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fsd_gs.progress import Progress
from fsd_gs.run.lock import RunLock
from fsd_gs.run.resume import repair_metrics
from fsd_gs.run.stop import StopRequest
from fsd_gs.run_dir import RunPaths
from fsd_gs.step import DistillStep, NonFiniteLoss, StepResult, step_together


class RunHook:
    """A side job of a run (metrics, checkpoints, snapshots, viewer, progress): override the points it needs."""

    def after_step(self, run: Run, result: StepResult, stop: StopRequest) -> None:
        """Step ``run.stepper.steps_done`` is done; ``result`` is what it produced."""

    def at_checkpoint(self, run: Run, folder: Path) -> None:
        """A checkpoint of the run was committed in ``folder``."""

    def at_end(self, run: Run, completed: bool) -> None:
        """The run's loop is over (``completed``: all its steps are done); its outputs are written next."""

    def on_stop(self, run: Run, signum: int) -> None:
        """Stop signal ``signum`` ended the loop (the run is finished and saved next)."""


@dataclass
class RunStats:
    """Timing and bookkeeping across the run (and across resumes)."""

    wall_before: float = 0.0
    steps_this_session: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_step_s: Optional[float] = None

    @property
    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.started


class Run:
    """One asset's run: its step (``stepper``), folder, bookkeeping and hooks (the loop lives in :func:`run_loop`).

    Attributes:
        stepper: the run's :class:`DistillStep`; paths: its folder; cfg: its config; viewer: the live viewer or None.
        progress: the progress line; stats: timing; last_checkpoint: the newest committed checkpoint folder.
        postfix: what the progress line shows beside the step (set by a hook during ``after_step``).
    """

    def __init__(
        self,
        stepper: DistillStep,
        paths: RunPaths,
        viewer: Any = None,
        progress: bool = True,
        label: str = "",
        lock: Optional[RunLock] = None,
        hooks: Sequence[RunHook] = (),
    ) -> None:
        self.stepper, self.paths, self.cfg, self.viewer, self.lock = stepper, paths, stepper.cfg, viewer, lock
        self.hooks = list(hooks)
        self.stats = RunStats()
        self.postfix: dict[str, Any] = {}
        self.progress = Progress(self.cfg.steps, stepper.steps_done, progress and self.cfg.output.progress, label)
        self.last_checkpoint: Optional[Path] = latest_checkpoint(paths.checkpoints)

    @property
    def done(self) -> bool:
        """All of cfg.steps are done."""
        return self.stepper.steps_done >= self.cfg.steps

    def restore(self) -> int:
        """Continue from the newest complete checkpoint, if any; returns the step resumed at."""
        folder = latest_checkpoint(self.paths.checkpoints)
        if folder is not None:
            state, meta = load_checkpoint(folder)
            self.stepper.load_state_dict(state)
            self.stats.wall_before = float(meta.get("wall_time", 0.0))
        self.stats.started = time.perf_counter()
        self.progress.restart(self.stepper.steps_done)
        repair_metrics(self.paths.metrics, self.stepper.steps_done)
        return self.stepper.steps_done

    def save_checkpoint(self) -> Path:
        """Commit a checkpoint of the current state; refuses to replace a good one with NaN parameters."""
        if not self.stepper.params_finite():
            raise NonFiniteLoss("the Gaussian parameters are not finite")
        self.last_checkpoint = save_checkpoint(
            self.stepper.state_dict(), self.paths.checkpoints, self.stepper.steps_done, meta={"wall_time": self.stats.wall}
        )
        for hook in self.hooks:
            hook.at_checkpoint(self, self.last_checkpoint)
        return self.last_checkpoint

    def after_step(self, result: StepResult, stop: StopRequest) -> None:
        """Timing of the step, then every hook's ``after_step`` in order."""
        self.stats.steps_this_session += 1
        if self.stats.first_step_s is None:  # includes one-off warm-up (kernel compilation, allocator)
            self.stats.first_step_s = time.perf_counter() - self.stats.started
        self.postfix = {}
        for hook in self.hooks:
            hook.after_step(self, result, stop)

    def end(self, completed: bool) -> None:
        """Call every hook's ``at_end`` (the loop is over)."""
        for hook in self.hooks:
            hook.at_end(self, completed)

    def stopped(self, signum: int) -> None:
        """Call every hook's ``on_stop``."""
        for hook in self.hooks:
            hook.on_stop(self, signum)


def run_loop(runs: Sequence[Run], stop: StopRequest) -> bool:
    """Step every run to its cfg.steps (several runs: one shared prior call per step); False if stopped early."""
    while stop.signum is None:
        active = [r for r in runs if not r.done]
        if not active:
            return True
        if len(active) == 1:
            results = [active[0].stepper()]
        else:
            results = step_together([r.stepper for r in active])
        for run, result in zip(active, results):
            run.after_step(result, stop)
    for run in runs:
        run.stopped(int(stop.signum))
    return all(r.done for r in runs)
