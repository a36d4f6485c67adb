"""Progress over the grid: a tqdm bar with ETA on a terminal, one plain line per finished asset otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional


def format_seconds(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class GridProgress:
    """Counts finished assets (done or failed) out of ``total``; ``done`` were finished before this command."""

    def __init__(self, total: int, done: int, enabled: bool = True) -> None:
        self.total, self.count = total, done
        self.finished_here = 0
        self.started = time.monotonic()
        self.bar = None
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="asset", dynamic_ncols=True, desc="batch")

    def eta(self) -> Optional[float]:
        """Seconds left at this command's rate so far, or None before the first asset finishes."""
        if not self.finished_here:
            return None
        return (time.monotonic() - self.started) / self.finished_here * (self.total - self.count)

    def finished(self, item_id: str, status: str, seconds: float | None, error: str | None = None) -> None:
        self.count += 1
        self.finished_here += 1
        took = "" if seconds is None else f" in {seconds:.1f} s"
        reason = f": {error}" if error else ""
        if self.bar is not None:
            self.bar.set_postfix_str("", refresh=False)
            self.bar.update(1)
            if status != "done":
                self.bar.write(f"{status} {item_id}{reason}")
            return
        eta = self.eta()
        eta_text = "" if eta is None else f", eta {format_seconds(eta)}"
        print(f"[{self.count}/{self.total}] {status} {item_id}{took}{reason}{eta_text}", flush=True)

    def starting(self, worker: str, text: str) -> None:
        """A worker's first unit starts with a one-off cost (compiling): a line, and the bar's status until an asset
        finishes."""
        self.note(f"{worker}: {text}")
        if self.bar is not None:
            self.bar.set_postfix_str("compiling", refresh=True)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def startup_note(cfg: Any, device: str) -> Optional[str]:
    """What a fresh worker pays before its first steps run, and how long it usually takes: gsplat's CUDA build (once
    per machine) and the prior's compilation (``--prior.compile``, auto compiles in batch workers on CUDA); None
    when neither applies (e.g. on the CPU)."""
    import torch

    from fsd_gs.prior.compile import resolve_compile

    parts = []
    if device == "cuda":
        from fsd_gs.render.gsplat_backend import BUILD_TYPICAL, gsplat_needs_build

        if gsplat_needs_build():
            parts.append(f"gsplat builds its CUDA extension first (once per machine, {BUILD_TYPICAL})")
    try:
        decision = resolve_compile(cfg.prior.compile, torch.device(device), cfg.model, cfg.steps, long_lived=True)
    except Exception:  # the worker reports a bad option itself
        decision = None
    if decision is not None and decision.compiles:  # graphs records in about a second: nothing to warn of
        parts.append(f"compiling the prior ({decision.mode}): {decision.expect}")
    return "; ".join(parts) or None
