"""The driver: schedules a grid's work units on an engine and keeps the manifest true at every moment.

What it guarantees (docs/batch.md):
  * done is decided by the run folder itself (report.json says completed), so a rerun skips finished
    assets and resumes the others from their checkpoints (train_asset does the resuming);
  * a unit whose worker died is resubmitted (to a fresh actor) up to ``max_attempts`` times in this
    command; the run folder's lock and the completed report make sure an asset is trained once;
  * a bad item (UserError, or an unexpected exception) is recorded as failed and the grid goes on;
  * Ctrl-C: the engine is closed (actors killed), running items go back to pending, manifest and
    summary are written, and a rerun of the same command continues.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsd_gs.batch.grid import GridItem, WorkUnit
from fsd_gs.batch.manifest import Manifest, completed_report, new_item, now_iso
from fsd_gs.batch.progress import GridProgress


@dataclass
class BatchResult:
    """What a driver run ended with (over this driver's items)."""

    manifest_path: Path
    counts: dict[str, int]
    interrupted: bool = False
    submitted: int = 0
    """Work units sent to workers by this command (0 when everything was already done)."""

    @property
    def exit_code(self) -> int:
        """130 after Ctrl-C, 1 when an item failed or is still unfinished, else 0."""
        if self.interrupted:
            return 130
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

    def __post_init__(self) -> None:
        self.manifest = Manifest(self.folder)
        self.entries: dict[str, dict[str, Any]] = {}

    # -- items -------------------------------------------------------------------------------------------
    def config_of(self, item: GridItem) -> Any:
        cfg = dataclasses.replace(self.configs[item.preset.label], prompt=item.prompt, seed=item.seed)
        if self.engine.cpu_only and cfg.device == "auto":
            cfg = dataclasses.replace(cfg, device="cpu")  # CPU actors: never pick up a GPU Ray did not give them
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
        if already:
            progress.note(f"{already} of {len(self.entries)} assets already done in {self.folder}")
        queue: deque[WorkUnit] = deque(todo)
        tries: Counter[str] = Counter()
        interrupted = False
        submitted = 0
        try:
            while queue or self.engine.busy():
                while queue and self.engine.idle_slots() > 0:
                    unit = queue.popleft()
                    tries[unit.id] += 1
                    tasks = [(i.id, self.config_of(i), self.folder / i.id) for i in unit.items]
                    worker = self.engine.submit(unit.id, tasks)
                    submitted += 1
                    for item in unit.items:
                        self._set(item.id, status="running", attempts=self.entries[item.id]["attempts"] + 1)
                        self.manifest.log("start", id=item.id, unit=unit.id, attempt=tries[unit.id], worker=worker)
                    self._save()
                for outcome in self.engine.next_outcomes():
                    unit = by_key[outcome.key]
                    if outcome.lost is not None:
                        self._worker_lost(unit, outcome, tries[unit.id], queue, progress)
                    else:
                        self._record(unit, outcome, progress)
                    self._save()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.engine.close(interrupted=interrupted)
            for item_id, entry in self.entries.items():
                if entry["status"] == "running" and not (entry.get("error") or "").startswith("locked"):
                    self._set(item_id, status="pending", error="interrupted")
            data = self._save()
            self.manifest.write_summary(data)
            progress.close()
        counts = Counter(e["status"] for e in self.entries.values())
        return BatchResult(self.manifest.path, dict(counts), interrupted=interrupted, submitted=submitted)

    def _worker_lost(self, unit: WorkUnit, outcome: Any, tries: int, queue: deque, progress: GridProgress) -> None:
        retry = tries < self.max_attempts
        for item in unit.items:
            self.manifest.log("lost", id=item.id, unit=unit.id, attempt=tries, worker=outcome.worker,
                              reason=outcome.lost, retry=retry)
            if retry:
                self._set(item.id, status="pending", error=f"worker lost ({outcome.lost}); retrying")
            else:
                self._set(item.id, status="failed", error=f"worker lost {tries} times; last: {outcome.lost}")
                progress.finished(item.id, "failed", None, self.entries[item.id]["error"])
        if retry:
            progress.note(f"worker {outcome.worker} lost while training {unit.id} ({outcome.lost}); resubmitting")
            queue.append(unit)

    def _record(self, unit: WorkUnit, outcome: Any, progress: GridProgress) -> None:
        """Store a unit's results (done, failed, or running: locked by another live process)."""
        for result in outcome.results:
            item_id = result["id"]
            values = {k: result.get(k) for k in ("status", "error", "report", "wall_s")}
            self.entries[item_id].pop("traceback", None)
            if result.get("traceback"):
                values["traceback"] = result["traceback"]
            self._set(item_id, **values)
            self.manifest.log(result["status"], id=item_id, unit=unit.id, worker=outcome.worker, pid=result.get("pid"),
                              error=result.get("error"))
            if result["status"] in ("done", "failed"):
                report = result.get("report") or {}
                progress.finished(item_id, result["status"], report.get("wall_time_s", result.get("wall_s")),
                                  result.get("error"))
            else:
                progress.note(f"skipped {item_id}: {result.get('error')}")
