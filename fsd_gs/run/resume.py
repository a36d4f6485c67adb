"""Resuming a run folder: its saved config, which changes a resume may make, its report, its metrics.

    saved, raw = saved_config(RunPaths(run_dir))          # UserError when missing or damaged
    changes = check_resume_changes(saved, given)          # UserError for a change that alters the run
    done = completed_report(cfg, run_dir)                 # the report of a finished run, else None
    repair_metrics(paths.metrics, step)                   # drop lines after ``step`` and torn ones

A resume repairs metrics.jsonl and continues bitwise on the CPU (README, "What survives what").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import yaml

from fsd_gs.config import RESUME_LOG, TrainConfig, from_dict, to_dict
from fsd_gs.device import same_device
from fsd_gs.errors import UserError
from fsd_gs.io.atomic import atomic_write_text
from fsd_gs.io.checkpoint import checkpoint_problems, latest_checkpoint
from fsd_gs.run_dir import RunPaths

RESUMABLE_CHANGES = ("steps", "resume", "from_scratch", "threads", "output.progress", "prior.compile")
"""Options a resume may change (steps only upwards); the viewer's options are free too (and compiling, which
changes only the speed and the last bits). Anything else would change what the run computes: start a new run."""


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


def saved_report(paths: RunPaths) -> dict:
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
    report = saved_report(paths)
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
