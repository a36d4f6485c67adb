"""Choosing the torch device from a user string ("auto", "cpu", "cuda", "cuda:1")."""

from __future__ import annotations

import torch

from fsd_gs.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``name``; "auto" picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but this machine has no CUDA GPU: use --device cpu")
    return device


def same_device(a: str, b: str) -> bool:
    """True when the --device strings ``a`` and ``b`` name the same device on this machine ("auto" as it resolves
    here, "cuda" as "cuda:0"); a device this machine does not have is never the same."""
    try:
        da, db = resolve_device(a), resolve_device(b)
    except UserError:
        return False
    return (da.type, da.index or 0) == (db.type, db.index or 0)
