"""Run folders: a fresh one per run, never overwriting, and the paths of what goes inside."""

from __future__ import annotations

import datetime as _dt
import errno
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from fsd_gs.errors import UserError
from fsd_gs.io.atomic import UMASK, WriteError


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


def create_run_dir(
    output_dir: Path, prompt: str, seed: int, now: _dt.datetime | None = None, fill: Optional[Callable[[Path], None]] = None
) -> RunPaths:
    """Create ``<output_dir>/<prompt-slug>/<YYYYmmdd-HHMMSS>-seed<N>[-k]/``; an existing folder is never reused.

    ``fill(folder)`` writes the run's first files (its config.yaml) into a hidden temporary folder that is then
    renamed to the run's name, so a run folder appears whole or not at all (a kill leaves no empty run folder).
    """
    return RunPaths(create_fresh_dir(output_dir, prompt, f"seed{seed}", now, fill))


def create_fresh_dir(
    output_dir: Path, prompt: str, tag: str, now: _dt.datetime | None = None, fill: Optional[Callable[[Path], None]] = None
) -> Path:
    """Create ``<output_dir>/<prompt-slug>/<YYYYmmdd-HHMMSS>-<tag>[-k]/`` and return it; never reuses a folder.

    With ``fill``, the folder is filled under a temporary name first (``.<name>.tmp-XXXX``) and then renamed.
    """
    now = now or _dt.datetime.now()
    parent = Path(output_dir) / slugify(prompt)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {parent} ({exc.strerror}): pass a writable --output-dir") from exc
    if not os.access(parent, os.W_OK):
        raise UserError(f"the output folder {parent} is not writable: pass a writable --output-dir")
    stem = f"{now:%Y%m%d-%H%M%S}-{tag}"
    if fill is not None:
        remove_stale_staging(parent)
    staged = _staged(parent, stem, fill) if fill is not None else None
    for k in range(1000):
        candidate = parent / (stem if k == 0 else f"{stem}-{k}")
        try:
            if staged is None:
                candidate.mkdir()  # fails if it exists: never two runs in one folder
            elif candidate.exists():
                continue
            else:
                os.rename(staged, candidate)  # fails onto a folder with files in it: every run folder has some
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue
            raise UserError(f"cannot create the run folder {candidate} ({exc.strerror}): pass a writable --output-dir") from exc
        return candidate
    if staged is not None:
        shutil.rmtree(staged, ignore_errors=True)
    raise UserError(f"too many runs named {stem} in {parent}: choose another --output-dir")


def create_exact_dir(root: Path, fill: Callable[[Path], None]) -> bool:
    """Create ``root`` whole (filled under a temporary name, then renamed); False if it exists already."""
    root = Path(root)
    if root.exists():
        return False
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder {root.parent} ({exc.strerror}): pass a writable folder") from exc
    staged = _staged(root.parent, root.name, fill)
    try:
        os.rename(staged, root)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False  # another process made it meanwhile
        raise UserError(f"cannot create the run folder {root} ({exc.strerror}): pass a writable folder") from exc
    return True


STALE_STAGING_S = 600.0
"""A staging folder untouched this long was left by a killed process (filling one takes milliseconds)."""


def remove_stale_staging(parent: Path, now: Optional[float] = None) -> None:
    """Delete the hidden staging folders (``.<name>.XXXX.tmp``) in ``parent`` older than STALE_STAGING_S."""
    now = time.time() if now is None else now
    for folder in parent.glob(".*.tmp"):
        try:
            if folder.is_dir() and now - folder.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def _staged(parent: Path, stem: str, fill: Callable[[Path], None]) -> Path:
    """A hidden temporary folder in ``parent`` filled by ``fill`` (removed again if filling fails)."""
    try:
        staged = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise UserError(f"cannot create a run folder in {parent} ({exc.strerror}): pass a writable --output-dir") from exc
    try:
        os.chmod(staged, 0o777 & ~UMASK)  # mkdtemp's 0700 would make the run folder private
        fill(staged)
    except WriteError as exc:  # name the file as the user will know it, not its staging folder
        shutil.rmtree(staged, ignore_errors=True)
        raise WriteError(parent / stem / exc.path.name, OSError(exc.errno, os.strerror(exc.errno or 0))) from exc
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged
