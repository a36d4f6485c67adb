"""The worker: trains work units one after another in one long-lived process, keeping its priors loaded.

:class:`AssetWorker` is a plain class: ``--engine local`` calls it in the driver's process, and the Ray
engine wraps it as an actor (one per GPU, a fraction of a GPU, or one CPU thread). Each unit is
``[(item id, TrainConfig, run folder), ...]``; it comes back as one result dict per item and never
raises for a bad item: a prompt the prior refuses (UserError) or a bug becomes a ``failed`` result,
so one bad asset never stops the grid.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch

from fsd_gs.errors import UserError

CRASH_ENV = "FSD_GS_BATCH_TEST_CRASH"
"""Test hook: a marker-file path. The first worker to claim it (O_EXCL) dies with os._exit once the run
folder of its unit's first item has a checkpoint (mid-asset), as a killed worker would."""

Task = tuple[str, Any, Path]
"""(item id, TrainConfig, run folder) of one asset."""


def prior_key(cfg: Any) -> tuple:
    """What makes two configs share one loaded prior: the model, its loading options (dtype, compile,
    channels-last, ...: cfg.prior) and the device."""
    from fsd_gs.config import to_dict

    return (cfg.model, repr(sorted(to_dict(cfg.prior).items())), str(cfg.device))


def _crash_mid_asset_once(run_dir: Path) -> None:
    marker = os.environ.get(CRASH_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return

    from fsd_gs.io.checkpoint import latest_checkpoint
    from fsd_gs.run_dir import RunPaths

    def die_after_checkpoint() -> None:
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline and latest_checkpoint(RunPaths(run_dir).checkpoints) is None:
            time.sleep(0.002)
        os._exit(17)

    threading.Thread(target=die_after_checkpoint, daemon=True).start()


class AssetWorker:
    """Trains units in this process; caches up to ``cache_size`` loaded priors keyed by :func:`prior_key`."""

    def __init__(self, threads: int | None = None, cache_size: int = 1) -> None:
        if threads:
            torch.set_num_threads(max(1, int(threads)))
        self.cache_size = max(1, cache_size)
        self.priors: OrderedDict[tuple, Any] = OrderedDict()
        self.loads = 0

    def info(self) -> dict[str, Any]:
        """Where this worker runs (for the events log and tests)."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "threads": torch.get_num_threads(),
            "prior_loads": self.loads,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    def prior_for(self, cfg: Any) -> Any:
        """The loaded prior of ``cfg``, loading it (and evicting the least recently used one) when not cached."""
        from fsd_gs.run import load_prior_for

        key = prior_key(cfg)
        if key in self.priors:
            self.priors.move_to_end(key)
            return self.priors[key]
        while len(self.priors) >= self.cache_size:
            self.priors.popitem(last=False)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        prior = load_prior_for(cfg, long_lived=True)  # compile auto: on (CUDA), paid once for every asset
        self.loads += 1
        self.priors[key] = prior
        return prior

    def run(self, tasks: Sequence[Task]) -> list[dict[str, Any]]:
        """Train the unit's assets (one call; K-batched when there are several) and return one result per item.

        A stop signal (SIGINT/SIGTERM/SIGHUP) makes the runner save the running assets; their results are then
        ``pending`` with error "interrupted" and ``signum`` set (a signal while the prior loads: nothing is trained).
        """
        from fsd_gs.batch.stop import StopSignals
        from fsd_gs.methods import method_spec
        from fsd_gs.run import RunLocked, RunStopped, train_asset, train_assets

        ids = [t[0] for t in tasks]
        cfgs = [t[1] for t in tasks]
        run_dirs = [Path(t[2]) for t in tasks]
        _crash_mid_asset_once(run_dirs[0])
        started = time.perf_counter()
        with StopSignals(interrupt=False) as stop:  # the runner's own handler replaces this one while steps run
            try:
                prior = self.prior_for(cfgs[0])
                if stop.signum is not None:
                    return [self._result(i, "pending", "interrupted", signum=stop.signum) for i in ids]
                if len(tasks) == 1 or method_spec(cfgs[0].method).stateful:  # VSD: one LoRA per asset, never grouped
                    reports = [train_asset(c, d, prior, progress=False) for c, d in zip(cfgs, run_dirs)]
                else:
                    reports = train_assets(cfgs, run_dirs, prior, progress=False)
            except RunStopped as exc:  # saved by the runner: checkpoint and model.ply of every running asset
                return [self._result(i, "pending", "interrupted", signum=exc.signum) for i in ids]
            except KeyboardInterrupt:  # a second signal: stopped at once (the last periodic checkpoint stays)
                return [self._result(i, "pending", "interrupted", signum=stop.signum) for i in ids]
            except RunLocked as exc:  # a UserError too: caught first
                return [self._result(i, "running", f"locked: {exc}") for i in ids]
            except UserError as exc:
                return [self._result(i, "failed", str(exc)) for i in ids]
            except Exception as exc:  # a bug or a resource error: reported with its traceback, the grid goes on
                message = f"{type(exc).__name__}: {exc}"
                return [self._result(i, "failed", message, trace=traceback.format_exc()) for i in ids]
        wall = (time.perf_counter() - started) / len(tasks)
        return [
            self._result(
                item_id,
                "done" if report.get("completed") else "failed",
                None if report.get("completed") else "the run ended without completing",
                report,
                wall,
            )
            for item_id, report in zip(ids, reports)
        ]

    def _result(
        self,
        item_id: str,
        status: str,
        error: str | None,
        report: dict | None = None,
        wall: float | None = None,
        trace: str | None = None,
        signum: int | None = None,
    ) -> dict[str, Any]:
        result = {
            "id": item_id,
            "status": status,
            "error": error,
            "report": report,
            "wall_s": None if wall is None else round(wall, 3),
            "pid": os.getpid(),
        }
        if trace:
            result["traceback"] = trace
        if status == "pending":
            result["signum"] = int(signum or signal.SIGINT)
        return result
