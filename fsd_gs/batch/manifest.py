"""The batch folder's record of its grid: ``manifest.json`` (read by ``python -m fsd_gs.evaluate``), ``summary.md``
(for people) and ``events.jsonl`` (an append-only log of starts, results and lost workers).

Only the driver writes them. manifest.json is written atomically; drivers of several shards of one batch
(``--shard i/n`` on a cluster) share it: each save re-reads the file under an advisory lock and replaces
only the items this driver owns, so no driver overwrites another's results.

Manifest format ``fsd_gs.batch/1``::

    {"format": "fsd_gs.batch/1", "created": ..., "updated": ...,
     "items": [{"id": "<prompt-slug>/<preset>/seed<N>", "prompt": str, "method": str, "preset": str, "seed": int,
                "run_dir": "<path relative to the manifest's folder>",
                "status": "done" | "failed" | "pending" | "running", "error": str | null, "attempts": int,
                "report": {...} | null,
                "wall_s": float | null, "updated": str, "traceback": str (only for unexpected errors)}, ...]}
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Mapping

from fsd_gs.errors import UserError
from fsd_gs.io.atomic import atomic_write_text

FORMAT = "fsd_gs.batch/1"
STATUSES = ("done", "failed", "pending", "running")
MANIFEST_NAME = "manifest.json"
SUMMARY_NAME = "summary.md"
EVENTS_NAME = "events.jsonl"
LOCK_NAME = ".manifest.lock"


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def new_item(item_id: str, prompt: str, method: str, preset: str, seed: int) -> dict[str, Any]:
    """A manifest item that has not run yet (its run folder is its id)."""
    return {
        "id": item_id,
        "prompt": prompt,
        "method": method,
        "preset": preset,
        "seed": seed,
        "run_dir": item_id,
        "status": "pending",
        "error": None,
        "attempts": 0,
        "report": None,
        "wall_s": None,
        "updated": now_iso(),
    }


def completed_report(run_dir: Path, steps: int | None = None) -> dict[str, Any] | None:
    """The run's report.json if it says the run completed (with ``steps`` steps, when given), else None; a missing
    or unreadable report counts as not done. A larger --steps on a rerun thus extends finished runs."""
    try:
        report = json.loads((Path(run_dir) / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("completed") is not True:
        return None
    return report if steps is None or report.get("steps_done") == steps else None


class Manifest:
    """manifest.json, summary.md and events.jsonl of one batch folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME
        self.summary_path = self.folder / SUMMARY_NAME
        self.events_path = self.folder / EVENTS_NAME

    # -- reading ---------------------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """The manifest on disk ({"format", "items": [...]} with no items when there is none yet)."""
        if not self.path.is_file():
            return {"format": FORMAT, "items": []}
        try:
            data = json.loads(self.path.read_text())
        except ValueError as exc:
            raise UserError(f"{self.path} is not valid JSON ({exc}): restore it or pass another --out") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("items"), list):
            raise UserError(f"{self.path} is not an fsd_gs batch manifest ({FORMAT}): pass another --out")
        return data

    def items_by_id(self) -> dict[str, dict[str, Any]]:
        return {item["id"]: item for item in self.read()["items"]}

    # -- writing ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / LOCK_NAME, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def save(self, owned: Mapping[str, dict[str, Any]], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Merge this driver's items into the file on disk (others' items are kept as they are there) and write it
        atomically; returns the merged manifest. Items keep their first position; new ones are appended."""
        with self._locked():
            data = self.read()
            merged = {item["id"]: item for item in data["items"]}
            merged.update({k: dict(v) for k, v in owned.items()})
            data.setdefault("created", now_iso())
            data.update(meta or {})
            data.update({"format": FORMAT, "updated": now_iso(), "items": list(merged.values())})
            atomic_write_text(self.path, json.dumps(data, indent=1) + "\n")
        return data

    def log(self, event: str, **fields: Any) -> None:
        """Append one event ({"time", "event", ...}) to events.jsonl."""
        with open(self.events_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": now_iso(), "event": event, **fields}) + "\n")

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.is_file():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line.strip()]

    def write_summary(self, data: Mapping[str, Any]) -> Path:
        """summary.md of a merged manifest: counts, failures with their reasons, per-asset time."""
        atomic_write_text(self.summary_path, render_summary(data))
        return self.summary_path


def _one_line(text: str | None, limit: int = 300) -> str:
    line = " ".join(str(text or "").split())
    line = line.replace("|", "\\|")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def asset_time(item: Mapping[str, Any]) -> float | None:
    """Training wall time of a done item (the run's own report, which counts resumed sessions too)."""
    report = item.get("report") or {}
    value = report.get("wall_time_s", item.get("wall_s"))
    return float(value) if isinstance(value, (int, float)) else None


def render_summary(data: Mapping[str, Any]) -> str:
    """The Markdown of summary.md."""
    items = list(data.get("items", []))
    counts = {status: sum(1 for it in items if it.get("status") == status) for status in STATUSES}
    times = [t for t in (asset_time(it) for it in items if it.get("status") == "done") if t is not None]
    lines = [
        f"# Batch summary ({data.get('updated', now_iso())})",
        "",
        f"{len(items)} assets: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES),
        "",
    ]
    notes = (data.get("batch") or {}).get("notes") or []
    if notes:
        lines += [f"Note: {note}." for note in notes] + [""]
    if times:
        lines += [
            f"Training time per done asset: mean {sum(times) / len(times):.1f} s, "
            f"min {min(times):.1f} s, max {max(times):.1f} s, total {sum(times):.1f} s.",
            "",
        ]
    failed = [it for it in items if it.get("status") == "failed"]
    if failed:
        lines += ["## Failures", "", "| asset | attempts | reason |", "| --- | --- | --- |"]
        lines += [f"| {it['id']} | {it.get('attempts', 0)} | {_one_line(it.get('error'))} |" for it in failed]
        lines.append("")
    lines += [
        "## Assets",
        "",
        "| asset | method | status | attempts | time (s) | steps | Gaussians |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for it in items:
        report = it.get("report") or {}
        seconds = asset_time(it)
        lines.append(
            f"| {it['id']} | {it.get('method', '')} | {it.get('status')} | {it.get('attempts', 0)} | "
            f"{'' if seconds is None else f'{seconds:.1f}'} | {report.get('steps_done', '')} | "
            f"{report.get('num_gaussians', '')} |"
        )
    return "\n".join(lines) + "\n"
