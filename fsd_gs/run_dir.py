"""Run folders: a fresh one per run, never overwriting, and the paths of what goes inside."""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fsd_gs.errors import UserError


def slugify(text: str, max_len: int = 48) -> str:
    """A file-name-safe slug of a prompt: "A red mushroom!" -> "a-red-mushroom"."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes each of its outputs."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def model_ply(self) -> Path:
        return self.root / "model.ply"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        """The folder of committed checkpoints (fsd_gs/io/checkpoint.py)."""
        return self.root / "checkpoints"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def turntable_png(self) -> Path:
        return self.root / "turntable.png"

    @property
    def turntable_mp4(self) -> Path:
        return self.root / "turntable.mp4"


def create_run_dir(output_dir: Path, prompt: str, seed: int, now: _dt.datetime | None = None) -> RunPaths:
    """Create ``<output_dir>/<prompt-slug>/<YYYYmmdd-HHMMSS>-seed<N>[-k]/``; an existing folder is never reused."""
    return RunPaths(create_fresh_dir(output_dir, prompt, f"seed{seed}", now))


def create_fresh_dir(output_dir: Path, prompt: str, tag: str, now: _dt.datetime | None = None) -> Path:
    """Create ``<output_dir>/<prompt-slug>/<YYYYmmdd-HHMMSS>-<tag>[-k]/`` and return it; never reuses a folder."""
    now = now or _dt.datetime.now()
    parent = Path(output_dir) / slugify(prompt)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {parent} ({exc.strerror}): pass a writable --output-dir") from exc
    if not os.access(parent, os.W_OK):
        raise UserError(f"the output folder {parent} is not writable: pass a writable --output-dir")
    stem = f"{now:%Y%m%d-%H%M%S}-{tag}"
    for k in range(1000):
        candidate = parent / (stem if k == 0 else f"{stem}-{k}")
        try:
            candidate.mkdir()  # fails if it exists: never two runs in one folder
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"cannot create the run folder {candidate} ({exc.strerror}): pass a writable --output-dir") from exc
        return candidate
    raise UserError(f"too many runs named {stem} in {parent}: choose another --output-dir")
