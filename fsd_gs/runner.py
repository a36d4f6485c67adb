"""The run around the step: folder, lock, loop, signals, progress, metrics, checkpoints, viewer, report, resume.

    report = train_asset(cfg, Path("outputs/x/run"))          # train one asset in exactly that folder (or resume it)
    reports = train_assets([cfg0, cfg1], [dir0, dir1])         # K seeds of one prompt, one prior call per step

Guarantees (README, "What survives what"): a run folder is owned by one process at a time (an flock on
``.lock``, released by the kernel when the process dies, so a stale lock is simply taken over);
checkpoints are committed atomically as a whole (fsd_gs/io/checkpoint.py); SIGINT, SIGTERM and SIGHUP
stop after the current step, save a checkpoint and model.ply, and exit 128 + the signal number; a resume
repairs metrics.jsonl and continues bitwise on the CPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml

from fsd_gs import __version__
from fsd_gs.config import RESUME_LOG, TrainConfig, from_dict, to_dict
from fsd_gs.device import same_device
from fsd_gs.errors import UserError
from fsd_gs.io.atomic import append_text, atomic_write_text, writing
from fsd_gs.io.checkpoint import checkpoint_problems, latest_checkpoint, load_checkpoint, save_checkpoint
from fsd_gs.io.ply import write_ply
from fsd_gs.prior.base import DiffusionPrior
from fsd_gs.progress import Progress
from fsd_gs.run_dir import RunPaths
from fsd_gs.step import DistillStep, NonFiniteLoss, StepResult, step_together

CPU_PARAM_LIMIT = 100_000_000
"""A prior whose networks have more parameters than this takes seconds per step on a CPU."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

RESUMABLE_CHANGES = ("steps", "resume", "from_scratch", "threads", "output.progress", "prior.compile")
"""Options a resume may change (steps only upwards); the viewer's options are free too (and compiling, which
changes only the speed and the last bits). Anything else would change what the run computes: start a new run."""


class RunLocked(UserError):
    """Another live process owns the run folder."""


class RunStopped(KeyboardInterrupt):
    """A stop signal ended the run after saving it; ``signum`` is that signal (the batch exits with 128 + it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


# -- the run folder's lock ---------------------------------------------------------------------------
class RunLock:
    """An exclusive flock on ``<run>/.lock`` for as long as this process works on the run."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / ".lock"
        self.fd: Optional[int] = None
        self.remove = False
        """Set when the run is complete: the owner deletes .lock (still holding it) on exit."""

    def __enter__(self) -> RunLock:
        while True:
            with writing(self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunLocked(
                    f"the run folder {self.path.parent} is in use by process {owner}: wait for it to "
                    "finish or stop it, then resume"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous owner finished and deleted this .lock after we opened it: lock the new one
        with contextlib.suppress(OSError):  # the pid is for the "in use by" message only
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            if self.remove:  # only the owner, while it still holds the flock (__enter__ re-checks the inode)
                with contextlib.suppress(OSError):
                    self.path.unlink()
            os.close(self.fd)  # closing releases the flock
            self.fd = None


# -- configuration of a resumed run ----------------------------------------------------------------
def saved_config(paths: RunPaths) -> tuple[TrainConfig, dict]:
    """(config, raw YAML) of a run folder; a missing or damaged config.yaml is a UserError."""
    if not paths.config.is_file():
        raise UserError(f"{paths.root} is not a run folder (no config.yaml): pass the folder a run printed last")
    try:
        raw = yaml.safe_load(paths.config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read {paths.config} ({exc.strerror or exc}): check its permissions") from exc
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{paths.config} is damaged (not text: byte {exc.start} is not UTF-8): the run cannot be resumed; start a new run"
        ) from exc
    except yaml.YAMLError as exc:
        raise UserError(
            f"{paths.config} is damaged ({str(exc).splitlines()[0]}): the run cannot be resumed; start a new run"
        ) from exc
    if not isinstance(raw, dict):
        raise UserError(f"{paths.config} is damaged (not a mapping of options): start a new run")
    try:
        return from_dict(raw), raw
    except UserError as exc:
        raise UserError(f"{paths.config} is damaged ({exc}): start a new run") from exc


def config_changes(saved: TrainConfig, given: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted option -> (saved, given) for every option that differs."""
    out: dict[str, tuple[Any, Any]] = {}

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in a:
                walk(a[key], b.get(key), f"{path}.{key}" if path else key)
        elif a != b:
            out[path] = (a, b)

    walk(to_dict(saved), to_dict(given), "")
    return out


def check_resume_changes(saved: TrainConfig, given: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The changes a resume makes; UserError for one that would change the run's meaning."""
    changes = config_changes(saved, given)
    for path, (old, new) in changes.items():
        if path.startswith("viewer.") or path in RESUMABLE_CHANGES:
            continue
        if path == "device" and same_device(str(old), str(new)):  # e.g. "auto" recorded, "cpu" given, on a CPU
            continue
        raise UserError(
            f"--resume cannot change --{path.replace('_', '-')} (the run has {old!r}, given {new!r}): "
            "start a new run for that (only --steps may extend a run)"
        )
    if "steps" in changes and given.steps < saved.steps:
        raise UserError(f"--steps can only extend a resumed run ({saved.steps} steps), not shorten it")
    return {k: v for k, v in changes.items() if k not in ("resume", "from_scratch")}


def write_config(paths: RunPaths, cfg: TrainConfig, log: Optional[list] = None) -> None:
    """config.yaml (atomically), with the log of resumes and what each changed."""
    data = to_dict(cfg)
    data.pop("resume", None)
    data.pop("from_scratch", None)
    if log:
        data[RESUME_LOG] = log
    atomic_write_text(paths.config, yaml.safe_dump(data, sort_keys=False))


def _saved_report(paths: RunPaths) -> dict:
    """The run's report.json, or {} when it has none or it cannot be read (then the run is simply resumed)."""
    try:
        report = json.loads(paths.report.read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def completed_report(cfg: TrainConfig, run_dir: Path) -> Optional[dict]:
    """The saved report of the run in ``run_dir`` when it is already complete at cfg.steps, else None.

    Read-only and cheap (no prior, no lock): a resume of a finished run answers before loading anything.
    A flag that would change the run is still refused (UserError).
    """
    paths = RunPaths(Path(run_dir))
    if not paths.config.is_file():
        return None
    saved, _ = saved_config(paths)
    check_resume_changes(saved, cfg)
    report = _saved_report(paths)
    done = report.get("completed") and report.get("steps_done") == cfg.steps and paths.model_ply.is_file()
    return report if done else None


def check_restorable(paths: RunPaths, report: dict, from_scratch: bool) -> None:
    """UserError when the run has trained steps (a model.ply or a report) but no checkpoint that can be read.

    Resuming would silently retrain from step 0 and replace the finished asset; the message names each
    unreadable checkpoint and why, and ``--from-scratch`` is the explicit way to do it anyway.
    """
    if from_scratch or latest_checkpoint(paths.checkpoints) is not None:
        return
    if not (paths.model_ply.is_file() or report.get("steps_done")):
        return  # killed before its first checkpoint: resuming from step 0 loses nothing
    problems = checkpoint_problems(paths.checkpoints)
    why = "; ".join(f"{folder.name}: {reason}" for folder, reason in problems) if problems else f"{paths.checkpoints} holds none"
    raise UserError(
        f"no checkpoint of {paths.root} can be read ({why}), so resuming would retrain from step 0 and "
        "replace its model.ply: pass --from-scratch to do that, or start a new run"
    )


# -- metrics ---------------------------------------------------------------------------------------
def repair_metrics(path: Path, step: int) -> None:
    """Keep the metric lines of steps <= ``step`` and drop torn or unreadable lines (an interrupted write)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# -- helpers ---------------------------------------------------------------------------------------
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


class StopRequest:
    """SIGINT / SIGTERM / SIGHUP set ``signum``; the loop stops after the current step. A second one stops at once."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second signal: stop now
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)


# -- one run ---------------------------------------------------------------------------------------
class Run:
    """One asset's run: its step, folder and bookkeeping (the loop lives in :func:`run_loop`)."""

    def __init__(
        self,
        step: DistillStep,
        paths: RunPaths,
        viewer: Any = None,
        progress: bool = True,
        label: str = "",
        lock: Optional[RunLock] = None,
    ) -> None:
        self.step, self.paths, self.cfg, self.viewer, self.lock = step, paths, step.cfg, viewer, lock
        self.stats = RunStats()
        self.loss_sum = torch.zeros((), device=step.device)
        self.loss_count = 0
        self.progress = Progress(self.cfg.steps, step.step, progress and self.cfg.output.progress, label)
        self.last_checkpoint: Optional[Path] = latest_checkpoint(paths.checkpoints)

    def restore(self) -> int:
        """Continue from the newest complete checkpoint, if any; returns the step resumed at."""
        folder = latest_checkpoint(self.paths.checkpoints)
        if folder is not None:
            state, meta = load_checkpoint(folder)
            self.step.load_state_dict(state)
            self.stats.wall_before = float(meta.get("wall_time", 0.0))
        self.stats.started = time.perf_counter()
        self.progress.restart(self.step.step)
        repair_metrics(self.paths.metrics, self.step.step)
        return self.step.step

    def save_checkpoint(self) -> Path:
        """Commit a checkpoint of the current state; refuses to replace a good one with NaN parameters."""
        if not self.step.params_finite():
            raise NonFiniteLoss("the Gaussian parameters are not finite")
        self.last_checkpoint = save_checkpoint(
            self.step.state_dict(), self.paths.checkpoints, self.step.step, meta={"wall_time": self.stats.wall}
        )
        return self.last_checkpoint

    def after_step(self, result: StepResult, stop: StopRequest) -> None:
        """Bookkeeping after each step: metrics, NaN checks, viewer, checkpoints, snapshots, progress."""
        cfg, step = self.cfg, self.step.step
        self.stats.steps_this_session += 1
        if self.stats.first_step_s is None:  # includes one-off warm-up (kernel compilation, allocator)
            self.stats.first_step_s = time.perf_counter() - self.stats.started
        self.loss_sum += result.loss
        self.loss_count += 1
        if self.step.device.type == "cpu" and not torch.isfinite(result.loss):
            raise NonFiniteLoss(f"the loss became {result.loss.item()} at step {step}")
        postfix: dict[str, Any] = {}
        if step % cfg.output.log_every == 0 or step == cfg.steps:
            postfix = self._log(result)
        if self.viewer is not None:
            self._feed_viewer(result, stop)
        if cfg.output.checkpoint_every and step % cfg.output.checkpoint_every == 0:
            self.save_checkpoint()
        if cfg.output.snapshot_every and step % cfg.output.snapshot_every == 0:
            with writing(self.paths.snapshots):
                self.paths.snapshots.mkdir(exist_ok=True)
            write_ply(self.step.gaussians, self.paths.snapshots / f"step_{step:06d}.ply")
        self.progress.update(step, postfix)

    def _log(self, result: StepResult) -> dict[str, Any]:
        loss = (self.loss_sum / max(1, self.loss_count)).item()
        self.loss_sum.zero_()
        self.loss_count = 0
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"the loss became {loss} near step {self.step.step}")
        t = int(result.timestep[0])
        record = {
            "step": self.step.step,
            "loss": loss,
            "t": t,
            "num_gaussians": len(self.step.gaussians),
            "it_per_s": self.progress.rate,
            "lr_means": self.step.optimizers["means"].param_groups[0]["lr"],
            "wall_time": self.stats.wall,
        }
        append_text(self.paths.metrics, json.dumps(record) + "\n")
        return {"loss": f"{loss:.4g}", "t": t, "n": len(self.step.gaussians)}

    def _feed_viewer(self, result: StepResult, stop: StopRequest) -> None:
        from fsd_gs.viewer.live import TrainingSnapshot

        rate = self.progress.rate
        eta = (self.cfg.steps - self.step.step) / rate if rate else float("nan")
        cams = result.cameras
        origin = self.step.noise.window_origin(float(cams.azimuth[0]), float(cams.elevation[0]))
        self.viewer.update(
            TrainingSnapshot(
                step=self.step.step,
                total_steps=self.cfg.steps,
                loss=result.loss,
                timestep=result.timestep[0],
                num_gaussians=len(self.step.gaussians),
                it_per_s=rate,
                eta_s=eta,
                gaussians=self.step.gaussians,
                train_rgb=result.rgb[0],
                noise_window=result.eps[0],
                window_origin=origin,
                window_size=(int(result.eps.shape[-2]), int(result.eps.shape[-1])),
            )
        )
        while True:
            if self.viewer.pop_save_request():  # also while paused: "save .ply now" must not wait for Resume
                write_ply(self.step.gaussians, self.paths.root / f"saved_step_{self.step.step:06d}.ply")
            if not self.viewer.paused or stop.signum is not None:
                break
            time.sleep(0.05)

    def finish(self, completed: bool) -> dict:
        """Checkpoint, model.ply, turntable and exports (when complete) and report.json; returns the report."""
        from fsd_gs.turntable import render_turntable, save_turntable

        self.progress.close()
        self.save_checkpoint()
        write_ply(self.step.gaussians, self.paths.model_ply)
        paths = self.paths
        outputs = {
            "run_dir": str(paths.root),
            "model_ply": str(paths.model_ply),
            "config": str(paths.config),
            "metrics": str(paths.metrics),
            "checkpoint": str(self.last_checkpoint),
        }
        if completed:
            frames = render_turntable(
                self.step.gaussians,
                self.cfg.camera,
                self.cfg.output.turntable_views,
                self.cfg.output.turntable_size,
                self.cfg.render,
            )
            for path in save_turntable(frames, paths.turntable_png, paths.turntable_mp4):
                outputs[f"turntable_{path.suffix[1:]}"] = str(path)
            if self.cfg.output.formats:
                from fsd_gs.export import export_gaussians

                written = export_gaussians(self.step.gaussians, paths.root, self.cfg.output.formats, overwrite=True)
                outputs.update({f"export_{name}": str(path) for name, path in written.items()})
        outputs["report"] = str(paths.report)
        report = write_report(self, completed, outputs)
        if completed and self.lock is not None:
            self.lock.remove = True  # a finished run keeps no .lock (deleted by its owner on release)
        return report


def write_report(run: Run, completed: bool, outputs: dict[str, str]) -> dict:
    """report.json (atomically): what ran, how fast, on what, and where everything is."""
    cfg, stats, device = run.cfg, run.stats, run.step.device
    session_s = stats.wall - stats.wall_before
    after_first = session_s - (stats.first_step_s or 0.0) if stats.steps_this_session > 1 else 0.0
    if device.type == "cuda":
        memory = {
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "peak_gpu_reserved_gb": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
        }
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        import platform
        import resource

        memory = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
        name = f"{device} ({platform.processor() or 'cpu'}, {cfg.threads or torch.get_num_threads()} threads)"
    report = {
        "prompt": cfg.prompt,
        "method": cfg.method,
        "model": cfg.model,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "steps_done": run.step.step,
        "completed": completed,
        "wall_time_s": round(stats.wall, 3),
        "steps_per_s_this_session": round(stats.steps_this_session / max(1e-9, session_s), 3),
        "first_step_s": round(stats.first_step_s or 0.0, 3),
        "steps_per_s_after_first_step": round((stats.steps_this_session - 1) / after_first, 3) if after_first else None,
        "num_gaussians": len(run.step.gaussians),
        "densify_counts": run.step.densify_counts,
        "device": name,
        **memory,
        "prior_load_s": round(run.step.prior.load_seconds, 3),
        "compile": str(run.step.prior.compile_decision),
        "versions": {"fsd_gs": __version__, "torch": torch.__version__},
        "outputs": outputs,
    }
    atomic_write_text(run.paths.report, json.dumps(report, indent=2) + "\n")
    return report


def run_loop(runs: Sequence[Run], stop: StopRequest) -> bool:
    """Step every run to its cfg.steps (several runs: one shared prior call per step); False if stopped early."""
    while stop.signum is None:
        active = [r for r in runs if r.step.step < r.cfg.steps]
        if not active:
            return True
        if len(active) == 1:
            results = [active[0].step()]
        else:
            results = step_together([r.step for r in active])
        for run, result in zip(active, results):
            run.after_step(result, stop)
    return all(r.step.step >= r.cfg.steps for r in runs)


# -- library entry points ------------------------------------------------------------------------
def open_run(
    cfg: TrainConfig, run_dir: Optional[Path], prior: DiffusionPrior, stack: ExitStack, progress: bool = False, label: str = ""
) -> tuple[Run, Optional[dict]]:
    """The :class:`Run` of ``cfg`` in exactly ``run_dir`` (created, or resumed), locked for this process.

    ``run_dir`` None creates a fresh folder under cfg.output_dir (never reused). Every check that can fail on
    bad input happens before anything is written. Returns (run, report) where report is the saved report of a
    run that is already complete (nothing to do).
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
        report = _saved_report(paths)
        check_restorable(paths, report, cfg.from_scratch)
        if changes:
            write_config(paths, cfg, [*raw.get(RESUME_LOG, []), {"changed": {k: list(v) for k, v in changes.items()}}])
    elif not fresh:  # an existing folder without a run in it (made by hand, or by an older version)
        write_config(paths, cfg)
    run = Run(step, paths, progress=progress, label=label, lock=lock)
    run.restore()
    return run, None


def train_assets(
    cfgs: Sequence[TrainConfig], run_dirs: Sequence[Path], prior: Optional[DiffusionPrior] = None, *, progress: bool = False
) -> list[dict]:
    """Train (or resume, or skip when complete) each asset in its folder; all of them step together.

    ``cfgs`` must share prompt, model, guidance and image size (e.g. K seeds of one prompt and preset): one
    prior call per step serves all their views. Returns each run's report. Raises UserError on bad input,
    :class:`RunLocked` when another live process owns a folder, NonFiniteLoss when a loss diverges, and
    KeyboardInterrupt after saving when a stop signal arrives.
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
        with StopRequest() as stop:
            completed = run_loop(runs, stop)
        reports = {id(run): run.finish(run.step.step >= run.cfg.steps) for run in runs}
        if not completed:
            raise RunStopped(int(stop.signum or signal.SIGINT))
        return [done if done is not None else reports[id(run)] for run, done in opened]


def train_asset(cfg: TrainConfig, run_dir: Path, prior: Optional[DiffusionPrior] = None, *, progress: bool = False) -> dict:
    """Train one asset in exactly ``run_dir`` (see :func:`train_assets`); returns its report."""
    return train_assets([cfg], [run_dir], prior, progress=progress)[0]
