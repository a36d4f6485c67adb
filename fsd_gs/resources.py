"""What the machine can give a run: usable CPU cores and free memory, checked before anything is built.

warn_if_oversubscribed(threads)              # one "warning: ..." line when --threads exceeds the cores
require_memory(nbytes, "4096 Gaussians", device)   # UserError when the estimate exceeds the free memory
"""

from __future__ import annotations

import os
import warnings

import torch

from fsd_gs.errors import UserError


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def warn_if_oversubscribed(threads: int, flag: str = "--threads") -> None:
    """Warn once (a UserWarning, shown as one line by the CLIs) when ``threads`` exceeds the usable cores.

    More threads than cores makes each step slower, not faster (50x at 1000 threads on 2 cores).
    """
    cores = usable_cores()
    if threads > cores:
        warnings.warn(
            f"{flag} {threads} is more than the {cores} CPU cores this process can use: each step will be "
            f"slower, not faster (use {flag} {cores} or fewer)",
            UserWarning,
            stacklevel=2,
        )


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: MemAvailable of /proc/meminfo for the CPU, the free GPU memory for CUDA; None if unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def require_memory(nbytes: int, what: str, device: torch.device, flag: str) -> None:
    """UserError (one sentence naming ``flag``) when ``nbytes`` exceeds the free memory of ``device``."""
    free = available_memory(device)
    if free is not None and nbytes > free:
        where = "GPU" if device.type == "cuda" else "machine"
        raise UserError(
            f"{what} need about {nbytes / 2**30:.1f} GB, more than the {free / 2**30:.1f} GB this {where} has free: lower {flag}"
        )
