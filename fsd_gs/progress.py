"""Progress of a loop of steps: a tqdm bar on a terminal, else a plain line every 5% (logs stay readable).

    progress = Progress(total=500, initial=0, enabled=True, label="seed 0: ")
    progress.update(step, {"loss": "0.12"}); progress.close()

Speed and ETA count only the steps of this process (a resumed run starts its clock at the step it resumed at).
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A tqdm bar when stdout is a terminal, else ``step N/total ... steps/s eta S s`` every ``every`` steps (5%)."""

    def __init__(self, total: int, initial: int, enabled: bool, label: str = "", unit: str = "step") -> None:
        """``unit``: what is counted ("step", or "asset" for the evaluation), in the plain line and the bar."""
        self.total, self.enabled, self.label, self.unit = total, enabled, label, unit
        self.interactive = enabled and sys.stdout.isatty()
        self.every = max(1, total // 20)
        self.bar: Any = None
        self.restart(initial)

    def restart(self, initial: int) -> None:
        """Start counting at step ``initial`` now (after a resume restored it): speed and ETA cover later steps only."""
        self.close()
        self.step = self.s0 = initial
        self.t0 = time.perf_counter()

    @property
    def rate(self) -> float:
        """Steps per second of this process (0 before its first step)."""
        return (self.step - self.s0) / max(1e-9, time.perf_counter() - self.t0)

    def update(self, step: int, postfix: dict[str, Any]) -> None:
        """Step ``step`` is done; ``postfix``: values to show beside it (loss, t, ...)."""
        self.step = step
        if self.interactive and self.bar is None:  # made at the first step, so a restart never leaves a stale bar
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.total, initial=step - 1, unit=self.unit, dynamic_ncols=True, smoothing=0.1, desc=self.label or None
            )
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif self.enabled and (step % self.every == 0 or step == self.total):
            eta = (self.total - step) / self.rate if self.rate > 0 else float("nan")
            extra = "".join(f"{k} {v} " for k, v in postfix.items())
            u = self.unit
            print(f"{self.label}{u} {step}/{self.total} {extra}{self.rate:.2f} {u}s/s eta {eta:.0f} s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
