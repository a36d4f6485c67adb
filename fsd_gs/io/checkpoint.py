"""Checkpoints that survive any kill: each one a folder, committed by a single rename.

A run's checkpoints live in ``<run>/checkpoints/``:

    checkpoints/step_000250/state.safetensors     every tensor of the state, by path ("gaussians/params/means")
    checkpoints/step_000250/state.json            the rest of the state as JSON, the tensor file's SHA-256, meta
    checkpoints/.tmp-step_000500-XXXX/            a checkpoint being written (ignored and cleaned up)

:func:`save_checkpoint` writes both files into a fresh temporary folder, fsyncs them, and renames the
folder to ``step_NNNNNN`` (one atomic rename), and only then deletes older checkpoints beyond
``keep``. A kill at any instant therefore leaves the previous complete checkpoint in place, and
:func:`latest_checkpoint` finds the newest folder whose JSON and tensors agree. Nothing is unpickled:
tensors are read with safetensors, the rest with json.

The state is any nested structure of dicts (str or int keys), lists, tuples, tensors and JSON values,
e.g. ``DistillStep.state_dict()``; it comes back with the same structure (tuples as lists).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from fsd_gs.errors import UserError
from fsd_gs.io.atomic import fsync_dir, writing

TENSORS_NAME = "state.safetensors"
META_NAME = "state.json"
FORMAT_VERSION = 2
_FOLDER = re.compile(r"^step_(\d{6,})$")


# -- nested state <-> (tensors, JSON) ----------------------------------------------------------------
def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {"tensor": path}
    if isinstance(value, dict):
        return {"dict": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"list": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"cannot store a {type(value).__name__} at {path} in a checkpoint")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "dict" in node:
        return {k: _decode(v, tensors) for k, v in node["dict"]}
    if "list" in node:
        return [_decode(v, tensors) for v in node["list"]]
    return node["value"]


# -- folders -----------------------------------------------------------------------------------------
def checkpoint_folders(root: str | Path) -> list[Path]:
    """The committed checkpoint folders under ``root``, newest (highest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _FOLDER.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def _read(folder: Path) -> tuple[dict[str, Any], bytes]:
    try:
        meta = json.loads((folder / META_NAME).read_text())
        payload = (folder / TENSORS_NAME).read_bytes()
    except (OSError, ValueError) as exc:
        raise UserError(f"the checkpoint {folder} cannot be read ({exc}); it may be damaged") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"the checkpoint {folder} has an unknown format (expected version {FORMAT_VERSION})")
    if hashlib.sha256(payload).hexdigest() != meta.get("tensors_sha256"):
        raise UserError(f"the checkpoint {folder} is incomplete (its tensor file does not match its JSON)")
    return meta, payload


def is_complete(folder: str | Path) -> bool:
    """True when ``folder`` holds a checkpoint whose JSON and tensor file agree."""
    try:
        _read(Path(folder))
    except UserError:
        return False
    return True


def checkpoint_problems(root: str | Path) -> list[tuple[Path, str]]:
    """(folder, why) for each committed checkpoint under ``root`` that cannot be read, newest first."""
    problems = []
    for folder in checkpoint_folders(root):
        try:
            _read(folder)
        except UserError as exc:
            problems.append((folder, str(exc).replace(f"the checkpoint {folder} ", "").replace("; it may be damaged", "")))
    return problems


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``root``, or None (damaged newer ones are skipped)."""
    return next((folder for folder in checkpoint_folders(root) if is_complete(folder)), None)


def save_checkpoint(
    state: dict[str, Any], root: str | Path, step: int, meta: dict[str, Any] | None = None, keep: int = 2
) -> Path:
    """Commit ``state`` as ``root/step_NNNNNN`` (atomically as a whole) and keep only the newest ``keep``.

    An existing complete checkpoint of the same step is left as it is (the state of a step does not change).
    """
    root = Path(root)
    final = root / f"step_{step:06d}"
    with writing(final):  # no space, no permission: one sentence naming the checkpoint; older ones stay
        return _commit(state, root, final, step, meta, keep)


def _commit(state: dict[str, Any], root: Path, final: Path, step: int, meta: dict[str, Any] | None, keep: int) -> Path:
    """:func:`save_checkpoint`'s body: temporary folder, fsync, one rename, then the old ones go."""
    root.mkdir(parents=True, exist_ok=True)
    if final.is_dir() and is_complete(final):
        return final
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "state", tensors)
    payload = save_bytes(tensors)
    record = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "tensors_sha256": hashlib.sha256(payload).hexdigest(),
        "state": tree,
        "meta": meta or {},
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        for name, data in ((TENSORS_NAME, payload), (META_NAME, json.dumps(record).encode())):
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(tmp)
        if final.exists():  # a damaged folder of this step (a crash mid-delete): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    for old in checkpoint_folders(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of the checkpoint in ``folder``; a missing or damaged one is a UserError."""
    folder = Path(folder)
    if not (folder / META_NAME).is_file():
        raise UserError(f"no checkpoint in {folder}: expected {META_NAME} and {TENSORS_NAME} there")
    record, payload = _read(folder)
    return _decode(record["state"], load_bytes(payload)), record.get("meta", {})
