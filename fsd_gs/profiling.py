"""Per-stage timing of the training step without host syncs.

On CUDA each stage is bracketed by two CUDA events; the elapsed times are read only in
:meth:`StageTimer.summary`, so timing does not stall the GPU queue. On the CPU, wall-clock time.
A disabled timer is a no-op context manager.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work on ``device`` (no-op on the CPU): call before reading a wall clock."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Accumulates time per named stage: ``with timer("render"): ...``."""

    def __init__(self, device: torch.device, enabled: bool = False) -> None:
        self.device = device
        self.enabled = enabled
        self._events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = defaultdict(list)
        self._cpu: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events[name].append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._cpu[name].append((time.perf_counter() - t0) * 1e3)

    def reset(self) -> None:
        self._events.clear()
        self._cpu.clear()

    def summary(self) -> dict[str, float]:
        """Mean milliseconds per occurrence of each stage (synchronises CUDA once)."""
        if self._events:
            synchronize(self.device)
        out = {name: sum(s.elapsed_time(e) for s, e in pairs) / len(pairs) for name, pairs in self._events.items()}
        out.update({name: sum(v) / len(v) for name, v in self._cpu.items()})
        return out
