"""Progress over the grid: a tqdm bar with ETA on a terminal, one plain line per finished asset otherwise."""

from __future__ import annotations

import sys
import time
from typing import Optional


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
            self.bar.update(1)
            if status != "done":
                self.bar.write(f"{status} {item_id}{reason}")
            return
        eta = self.eta()
        eta_text = "" if eta is None else f", eta {format_seconds(eta)}"
        print(f"[{self.count}/{self.total}] {status} {item_id}{took}{reason}{eta_text}", flush=True)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
