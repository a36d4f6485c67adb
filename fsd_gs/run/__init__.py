"""The run around the step: folder, lock, loop, signals, hooks (metrics, checkpoints, snapshots, viewer, progress),
report, resume. Re-exports only; each idea lives in its own module.

    report = train_asset(cfg, Path("outputs/x/run"))          # fsd_gs/run/entry.py: the library entry points
    reports = train_assets([cfg0, cfg1], [dir0, dir1])         # K seeds of one prompt, one prior call per step

lock.py (one process per run folder), resume.py (saved config, allowed changes, metrics repair), stop.py (stop
signals), loop.py (Run, RunHook and the loop), hooks.py + progress.py (the side jobs), report.py (the end).
"""

from fsd_gs.run.entry import (
    CPU_PARAM_LIMIT,
    default_hooks,
    load_prior_for,
    open_run,
    train_asset,
    train_assets,
    train_runs,
)
from fsd_gs.run.hooks import Checkpointer, MetricsLog, Snapshots, ViewerFeed
from fsd_gs.run.lock import RunLock, RunLocked
from fsd_gs.run.loop import Run, RunHook, RunStats, run_loop
from fsd_gs.run.progress import ShowProgress
from fsd_gs.run.report import finish, write_report
from fsd_gs.run.resume import (
    RESUMABLE_CHANGES,
    check_restorable,
    check_resume_changes,
    completed_report,
    config_changes,
    repair_metrics,
    saved_config,
    saved_report,
    write_config,
)
from fsd_gs.run.stop import STOP_SIGNALS, RunStopped, StopRequest

__all__ = [
    "CPU_PARAM_LIMIT",
    "RESUMABLE_CHANGES",
    "STOP_SIGNALS",
    "Checkpointer",
    "MetricsLog",
    "Run",
    "RunHook",
    "RunLock",
    "RunLocked",
    "RunStats",
    "RunStopped",
    "ShowProgress",
    "Snapshots",
    "StopRequest",
    "ViewerFeed",
    "check_restorable",
    "check_resume_changes",
    "completed_report",
    "config_changes",
    "default_hooks",
    "finish",
    "load_prior_for",
    "open_run",
    "repair_metrics",
    "run_loop",
    "saved_config",
    "saved_report",
    "train_asset",
    "train_assets",
    "train_runs",
    "write_config",
    "write_report",
]
