"""Finding the runs to evaluate: run folders, folders of run folders, and batch manifests.

A run folder holds ``config.yaml`` (the TrainConfig as YAML), ``model.ply`` and ``report.json`` (with
"completed"). A batch manifest (``manifest.json``, format ``fsd_gs.batch/1``, written by ``fsd_gs.batch``)
lists items with a status; only "done" items are evaluated, the others are reported as missing.
Runs are grouped by (prompt, method, model); within a group each seed appears once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from fsd_gs.errors import UserError

MANIFEST_FORMAT = "fsd_gs.batch/1"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Run:
    """One finished run: where it is and what it was asked for.

    Attributes:
        run_dir: the run folder.
        prompt, method, model, seed: from its config.yaml.
        guidance_scale: the CFG scale it was trained with (the DDIM row samples with it).
    """

    run_dir: Path
    prompt: str
    method: str
    model: str
    seed: int
    guidance_scale: float

    @property
    def group(self) -> tuple[str, str, str]:
        return self.prompt, self.method, self.model


@dataclass(frozen=True)
class Missing:
    """A run that was asked for but is not evaluated, and why."""

    id: str
    reason: str


@dataclass
class Found:
    """The runs found under the given paths, and the ones left out."""

    runs: list[Run] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "model.ply").is_file()


def method_name(config: dict) -> str:
    """The run's method, suffixed with its noise kind when that is not the method's own (``fsd-surface``) and with
    ``-perpneg`` when Perp-Neg was on (``fsd-perpneg``): each is its own row of the tables."""
    from fsd_gs.methods import METHODS

    method = str(config.get("method", "fsd"))
    kind = (config.get("noise") or {}).get("kind")
    if method in METHODS and kind and kind != METHODS[method].noise.kind:
        method = f"{method}-{kind}"
    if (config.get("guidance") or {}).get("perp_neg"):
        method = f"{method}-perpneg"
    return method


def read_run(run_dir: Path) -> Run | Missing:
    """The :class:`Run` of a run folder, or :class:`Missing` if it is not complete or unreadable."""
    run_dir = Path(run_dir)
    rid = str(run_dir)
    if not is_run_dir(run_dir):
        return Missing(rid, "no config.yaml and model.ply in the folder")
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except yaml.YAMLError:
        return Missing(rid, "config.yaml is not valid YAML")
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        return Missing(rid, "no report.json (the run did not finish)")
    try:
        report = json.loads(report_path.read_text())
    except json.JSONDecodeError:
        return Missing(rid, "report.json is not valid JSON")
    if not report.get("completed", False):
        return Missing(rid, "the run did not complete (report.json: completed is false)")
    if not isinstance(config, dict) or not str(config.get("prompt", "")).strip():
        return Missing(rid, "config.yaml has no prompt")
    guidance = config.get("guidance") or {}
    return Run(
        run_dir=run_dir,
        prompt=str(config["prompt"]),
        method=method_name(config),
        model=str(config.get("model", "")),
        seed=int(config.get("seed", 0)),
        guidance_scale=float(guidance.get("guidance_scale", 7.5)),
    )


def read_manifest(path: Path) -> Found:
    """The "done" items of a batch manifest as runs; every other item as missing."""
    path = Path(path)
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the batch manifest {path} ({exc}): pass a manifest.json written by fsd_gs.batch") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("items"), list):
        raise UserError(
            f"{path} is not a batch manifest (format {MANIFEST_FORMAT!r} with a list of items): "
            "pass a run folder, a folder of runs or a manifest.json written by fsd_gs.batch"
        )
    found = Found(manifests=[path])
    for item in data["items"]:
        iid = str(item.get("id", item.get("run_dir", "?")))
        status = item.get("status")
        if status != "done":
            error = f": {item['error']}" if item.get("error") else ""
            found.missing.append(Missing(iid, f"status {status}{error}"))
            continue
        if not item.get("run_dir"):
            found.missing.append(Missing(iid, "done but the manifest gives no run_dir"))
            continue
        result = read_run(path.parent / item["run_dir"])
        if isinstance(result, Run):
            found.runs.append(result)
        else:
            found.missing.append(Missing(iid, result.reason))
    return found


def find_runs(paths: Iterable[Path | str]) -> Found:
    """All runs under ``paths``: each a run folder, a folder searched recursively for run folders (a
    folder that holds a manifest.json is read through it), or a manifest.json. Raises UserError when a
    path does not exist or nothing is found."""
    found = Found()
    seen: set[Path] = set()

    def add(part: Found) -> None:
        for run in part.runs:
            key = run.run_dir.resolve()
            if key not in seen:
                seen.add(key)
                found.runs.append(run)
        found.missing.extend(part.missing)
        found.manifests.extend(part.manifests)

    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"{path} does not exist: pass run folders, folders of runs or a batch manifest.json")
        if path.is_file():
            add(read_manifest(path))
        elif (path / MANIFEST_NAME).is_file() and not is_run_dir(path):
            add(read_manifest(path / MANIFEST_NAME))
        elif is_run_dir(path):
            result = read_run(path)
            add(Found(runs=[result]) if isinstance(result, Run) else Found(missing=[result]))
        else:
            part = Found()
            for config in sorted(path.rglob("config.yaml")):
                if is_run_dir(config.parent):
                    result = read_run(config.parent)
                    if isinstance(result, Run):
                        part.runs.append(result)
                    else:
                        part.missing.append(result)
            add(part)
    if not found.runs:
        where = ", ".join(str(p) for p in paths)
        why = f" ({len(found.missing)} incomplete or failed)" if found.missing else ""
        raise UserError(
            f"no finished runs (folders with config.yaml, model.ply and a completed report.json) in {where}"
            f"{why}: pass the output folder of fsd_gs.train or fsd_gs.batch"
        )
    return found


def shared_guidance(runs: Iterable[Run]) -> Optional[float]:
    """The CFG scale every run of ``runs`` was trained with; None when they differ (or there are none)."""
    scales = {run.guidance_scale for run in runs}
    return scales.pop() if len(scales) == 1 else None


def group_runs(runs: Iterable[Run]) -> tuple[dict[tuple[str, str, str], dict[int, Run]], list[Missing]]:
    """Runs grouped by (prompt, method, model), then by seed. A repeated seed keeps the last run folder in
    path order (the newest, as run folders start with their date) and lists the others as missing."""
    groups: dict[tuple[str, str, str], dict[int, Run]] = {}
    dropped: list[Missing] = []
    for run in sorted(runs, key=lambda r: str(r.run_dir)):
        seeds = groups.setdefault(run.group, {})
        if run.seed in seeds:
            old = seeds[run.seed]
            dropped.append(Missing(str(old.run_dir), f"seed {run.seed} repeated; using the newer {run.run_dir}"))
        seeds[run.seed] = run
    return {key: dict(sorted(val.items())) for key, val in sorted(groups.items())}, dropped
