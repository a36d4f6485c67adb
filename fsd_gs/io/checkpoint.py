"""Training checkpoints: tensors in safetensors, everything else in JSON, both written atomically.

A checkpoint is two files in one folder, ``checkpoint.safetensors`` and ``checkpoint.json``. The JSON
is written last and names the tensor file's SHA-256, so a reader can tell a complete checkpoint from a
half-written one; nothing is ever unpickled.

Tensor keys:
    params/<key>                  Gaussian parameters (fsd_gs.gaussians.PARAM_KEYS)
    optim/<key>/<state>           Adam state per parameter (exp_avg, exp_avg_sq, step)
    densify/<name>                densification running statistics
    rng/<name>                    torch.Generator states (uint8)
    extra/<name>                  anything else the trainer wants back
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save as save_bytes

from fsd_gs.errors import UserError
from fsd_gs.gaussians import Gaussians
from fsd_gs.io.atomic import atomic_write_bytes

TENSORS_NAME = "checkpoint.safetensors"
META_NAME = "checkpoint.json"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """Everything needed to continue a run exactly where it stopped.

    Attributes:
        step: the number of completed optimisation steps.
        gaussians: the Gaussians (params on CPU).
        optimizer_states: per parameter key, ``torch.optim.Optimizer.state_dict()``.
        densify_state: densification statistics (tensors or None).
        rng_states: name -> generator state (uint8 tensor).
        meta: JSON-serialisable extras (metrics so far, wall time, versions).
    """

    step: int
    gaussians: Gaussians
    optimizer_states: dict[str, dict[str, Any]]
    densify_state: dict[str, torch.Tensor | None]
    rng_states: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def _flatten(ckpt: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, Any] = {}
    for key, value in ckpt.gaussians.params.items():
        tensors[f"params/{key}"] = value.detach().cpu().contiguous()
    for key, state_dict in ckpt.optimizer_states.items():
        groups[key] = state_dict["param_groups"]
        for index, state in state_dict["state"].items():
            for name, value in state.items():
                tensors[f"optim/{key}/{index}/{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    densify_none = []
    for name, value in ckpt.densify_state.items():
        if value is None:
            densify_none.append(name)
        else:
            tensors[f"densify/{name}"] = value.detach().cpu().contiguous()
    for name, value in ckpt.rng_states.items():
        tensors[f"rng/{name}"] = value.cpu().contiguous()
    meta = {
        "format_version": FORMAT_VERSION,
        "step": ckpt.step,
        "sh_degree": ckpt.gaussians.sh_degree,
        "active_sh_degree": ckpt.gaussians.active_sh_degree,
        "param_groups": groups,
        "densify_none": densify_none,
        "meta": ckpt.meta,
    }
    return tensors, meta


def save_checkpoint(ckpt: Checkpoint, folder: str | Path) -> Path:
    """Write ``ckpt`` into ``folder`` atomically (tensor file first, then the JSON that seals it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = _flatten(ckpt)
    payload = save_bytes(tensors)
    meta["tensors_sha256"] = hashlib.sha256(payload).hexdigest()
    atomic_write_bytes(folder / TENSORS_NAME, payload)
    atomic_write_bytes(folder / META_NAME, json.dumps(meta, indent=1).encode())
    return folder


def has_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / META_NAME).is_file() and (Path(folder) / TENSORS_NAME).is_file()


def load_checkpoint(folder: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; a missing or damaged one is a UserError."""
    folder = Path(folder)
    if not has_checkpoint(folder):
        raise UserError(f"no checkpoint in {folder}: expected {META_NAME} and {TENSORS_NAME} there")
    try:
        meta = json.loads((folder / META_NAME).read_text())
        payload = (folder / TENSORS_NAME).read_bytes()
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"the checkpoint in {folder} cannot be read ({exc}); it may be damaged") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"the checkpoint in {folder} has format {meta.get('format_version')}, expected {FORMAT_VERSION}")
    if hashlib.sha256(payload).hexdigest() != meta.get("tensors_sha256"):
        raise UserError(f"the checkpoint in {folder} is incomplete (its tensor file does not match its JSON)")
    flat = load_file(str(folder / TENSORS_NAME))

    params = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("params/")}
    gaussians = Gaussians(params, meta["sh_degree"], meta["active_sh_degree"])
    optimizer_states: dict[str, dict[str, Any]] = {}
    for key, groups in meta["param_groups"].items():
        state: dict[int, dict[str, torch.Tensor]] = {}
        prefix = f"optim/{key}/"
        for name, value in flat.items():
            if name.startswith(prefix):
                index, stat = name[len(prefix):].split("/", 1)
                state.setdefault(int(index), {})[stat] = value
        optimizer_states[key] = {"state": state, "param_groups": groups}
    densify_state: dict[str, torch.Tensor | None] = {
        k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("densify/")
    }
    densify_state.update({name: None for name in meta["densify_none"]})
    rng_states = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("rng/")}
    return Checkpoint(meta["step"], gaussians, optimizer_states, densify_state, rng_states, meta["meta"])
