"""The driver: schedules a grid's work units on an engine and keeps the manifest true at every moment.

What it guarantees (docs/batch.md):
  * done is decided by the run folder itself (report.json says completed), so a rerun skips finished
    assets and resumes the others from their checkpoints (train_asset does the resuming);
  * a unit whose worker died is resubmitted (to a fresh actor) up to ``max_attempts`` times in this
    command; the run folder's lock and the completed report make sure an asset is trained once;
  * a bad item (UserError, or an unexpected exception) is recorded as failed and the grid goes on;
  * SIGINT (Ctrl-C), SIGTERM, SIGHUP: the running workers are asked to stop; they save their assets
    (checkpoint, model.ply) within ``stop_grace_s``; then the engine is closed (actors killed), running
    items go back to pending, manifest and summary are written, the exit code is 128 + the signal, and a
    rerun of the same command continues. A second signal stops without waiting.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fsd_gs.batch.grid import GridItem, WorkUnit
from fsd_gs.batch.manifest import Manifest, completed_report, new_item, now_iso
from fsd_gs.batch.progress import GridProgress, startup_note
from fsd_gs.batch.stop import StopSignals, exit_code

STOP_GRACE_S = 120.0
"""How long a stopped batch waits for its running workers to save their assets (a step plus a checkpoint)."""


@dataclass
class BatchResult:
    """What a driver run ended with (over this driver's items)."""

    manifest_path: Path
    counts: dict[str, int]
    interrupted: bool = False
    signum: Optional[int] = None
    """The stop signal that interrupted the batch (None: not interrupted, or unknown)."""
    submitted: int = 0
    """Work units sent to workers by this command (0 when everything was already done)."""

    @property
    def exit_code(self) -> int:
        """128 + the stop signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), 1 when an item failed or is unfinished, else 0."""
        if self.interrupted:
            return exit_code(self.signum)
        return 0 if self.counts.get("done", 0) == sum(self.counts.values()) else 1


@dataclass
class Driver:
    """Runs ``units`` (this driver's share of the grid) in the batch folder ``folder`` on ``engine``.

    ``configs`` maps a preset label to the TrainConfig of that preset with the pass-through options applied;
    an item's config is that with its prompt and seed.
    """

    folder: Path
    units: list[WorkUnit]
    configs: dict[str, Any]
    engine: Any
    max_attempts: int = 3
    progress: bool = True
    meta: dict[str, Any] = field(default_factory=dict)
    stop_grace_s: float = STOP_GRACE_S

    def __post_init__(self) -> None:
        self.manifest = Manifest(self.folder)
        self.entries: dict[str, dict[str, Any]] = {}
        self.stopped_by: Optional[int] = None  # a unit came back interrupted (its worker got the signal)
        self.started_workers: set[str] = set()

    # -- items -------------------------------------------------------------------------------------------
    def config_of(self, item: GridItem) -> Any:
        cfg = dataclasses.replace(self.configs[item.preset.label], prompt=item.prompt, seed=item.seed)
        if cfg.device == "auto":  # recorded resolved, the same for both engines (CPU actors: never a GPU Ray did not give)
            cfg = dataclasses.replace(cfg, device=self.engine.device)
        return cfg

    def _initial_entries(self) -> None:
        """This driver's manifest entries: from the previous manifest if any, with the status read from disk."""
        previous = self.manifest.items_by_id()
        for unit in self.units:
            for item in unit.items:
                method = self.configs[item.preset.label].method
                entry = dict(previous.get(item.id) or new_item(item.id, item.prompt, method, item.preset.label, item.seed))
                entry.update(prompt=item.prompt, method=method, preset=item.preset.label, seed=item.seed, run_dir=item.id)
                report = completed_report(self.folder / item.id, self.configs[item.preset.label].steps)
                if report is not None:
                    entry.update(status="done", error=None, report=report)
                else:
                    entry.update(status="pending", report=None)
                    if entry.get("error") == "interrupted":
                        entry["error"] = None
                self.entries[item.id] = entry

    def _todo(self) -> list[WorkUnit]:
        """The units with their done items left out (a K-group keeps its unfinished seeds together)."""
        todo = []
        for unit in self.units:
            items = tuple(i for i in unit.items if self.entries[i.id]["status"] != "done")
            if items:
                todo.append(WorkUnit(items))
        return todo

    def _save(self) -> dict[str, Any]:
        return self.manifest.save(self.entries, {"batch": self.meta})

    def _set(self, item_id: str, **values: Any) -> None:
        self.entries[item_id].update(values, updated=now_iso())

    # -- the loop ----------------------------------------------------------------------------------------
    def run(self) -> BatchResult:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._initial_entries()
        todo = self._todo()
        by_key = {u.id: u for u in todo}
        already = sum(1 for e in self.entries.values() if e["status"] == "done")
        self._save()
        progress = GridProgress(len(self.entries), already, self.progress)
        for note in self.meta.get("notes", []):
            progress.note(f"note: {note}")
        if already:
            progress.note(f"{already} of {len(self.entries)} assets already done in {self.folder}")
        queue: deque[WorkUnit] = deque(todo)
        tries: Counter[str] = Counter()
        interrupted = False
        submitted = 0
        signals = StopSignals(interrupt=True)
        with signals:
            try:
                try:
                    while (queue or self.engine.busy()) and self.stopped_by is None:
                        while queue and self.engine.idle_slots() > 0:
                            unit = queue.popleft()
                            tries[unit.id] += 1
                            tasks = [(i.id, self.config_of(i), self.folder / i.id) for i in unit.items]
                            worker = self.engine.submit(unit.id, tasks)
                            submitted += 1
                            self._first_unit_of(worker, tasks[0][1], progress)
                            for item in unit.items:
                                self._set(item.id, status="running", attempts=self.entries[item.id]["attempts"] + 1)
                                self.manifest.log("start", id=item.id, unit=unit.id, attempt=tries[unit.id], worker=worker)
                            self._save()
                        for outcome in self.engine.next_outcomes():
                            self._outcome(by_key[outcome.key], outcome, tries, queue, progress)
                except KeyboardInterrupt:  # a stop signal to this process
                    interrupted = True
                interrupted = interrupted or self.stopped_by is not None
                if interrupted and self.engine.busy():
                    progress.note("stopping: the running assets save their checkpoints (a second signal: stop now)")
                    try:
                        for outcome in self.engine.stop_running(self.stop_grace_s):
                            self._outcome(by_key[outcome.key], outcome, tries, queue, progress)
                    except KeyboardInterrupt:
                        pass
            finally:
                interrupted = interrupted or signals.signum is not None
                self.engine.close(interrupted=interrupted)
                for item_id, entry in self.entries.items():
                    if entry["status"] == "running" and not (entry.get("error") or "").startswith("locked"):
                        self._set(item_id, status="pending", error="interrupted")
                data = self._save()
                self.manifest.write_summary(data)
                progress.close()
        counts = Counter(e["status"] for e in self.entries.values())
        return BatchResult(
            self.manifest.path,
            dict(counts),
            interrupted=interrupted,
            signum=signals.signum or self.stopped_by,
            submitted=submitted,
        )

    def _first_unit_of(self, worker: str, cfg: Any, progress: GridProgress) -> None:
        """Say what a fresh worker compiles before its first steps, and how long that usually takes."""
        if worker in self.started_workers:
            return
        self.started_workers.add(worker)
        note = startup_note(cfg, self.engine.device)
        if note:
            progress.starting(worker, note)

    def _outcome(self, unit: WorkUnit, outcome: Any, tries: Counter, queue: deque, progress: GridProgress) -> None:
        """Record a finished submission: its results, or a lost worker (resubmitted unless tried enough)."""
        if outcome.lost is not None:
            self._worker_lost(unit, outcome, tries[unit.id], queue, progress)
        else:
            self._record(unit, outcome, progress)
        self._save()

    def _worker_lost(self, unit: WorkUnit, outcome: Any, tries: int, queue: deque, progress: GridProgress) -> None:
        retry = tries < self.max_attempts
        for item in unit.items:
            self.manifest.log(
                "lost", id=item.id, unit=unit.id, attempt=tries, worker=outcome.worker, reason=outcome.lost, retry=retry
            )
            if retry:
                self._set(item.id, status="pending", error=f"worker lost ({outcome.lost}); retrying")
            else:
                self._set(item.id, status="failed", error=f"worker lost {tries} times; last: {outcome.lost}")
                progress.finished(item.id, "failed", None, self.entries[item.id]["error"])
        if retry:
            progress.note(f"worker {outcome.worker} lost while training {unit.id} ({outcome.lost}); resubmitting")
            queue.append(unit)

    def _record(self, unit: WorkUnit, outcome: Any, progress: GridProgress) -> None:
        """Store a unit's results (done, failed, running: locked by another live process, or pending: stopped by a
        signal, which stops the batch too)."""
        for result in outcome.results:
            item_id = result["id"]
            values = {k: result.get(k) for k in ("status", "error", "report", "wall_s")}
            self.entries[item_id].pop("traceback", None)
            if result.get("traceback"):
                values["traceback"] = result["traceback"]
            self._set(item_id, **values)
            self.manifest.log(
                result["status"],
                id=item_id,
                unit=unit.id,
                worker=outcome.worker,
                pid=result.get("pid"),
                error=result.get("error"),
            )
            if result["status"] in ("done", "failed"):
                report = result.get("report") or {}
                progress.finished(item_id, result["status"], report.get("wall_time_s", result.get("wall_s")), result.get("error"))
            elif result["status"] == "pending":
                self.stopped_by = self.stopped_by or result.get("signum")
                progress.note(f"stopped {item_id}: its checkpoint is saved; rerun the same command to continue")
            else:
                progress.note(f"skipped {item_id}: {result.get('error')}")
