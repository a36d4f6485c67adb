"""Stopping a batch like a run: SIGINT, SIGTERM and SIGHUP end it cleanly, with exit code 128 + the signal.

Two places hold a :class:`StopSignals` (installed only in the main thread, restored on exit):
  * the driver, with ``interrupt=True``: a signal raises KeyboardInterrupt in the driver's loop, which then asks
    the running workers to stop (:meth:`fsd_gs.batch.engine.RayEngine.stop_running` sends them SIGTERM), waits
    for their checkpoints, updates the manifest and exits; a second signal stops waiting;
  * the worker, around a unit (``interrupt=False``): a signal is only recorded, so that loading a prior or
    finishing an asset is never cut half-way; the runner's own handler (fsd_gs.run.StopRequest) takes over
    while the steps run and saves the asset. Ray's workers block SIGINT, which is why the driver sends SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """Records the first stop signal in ``signum`` (and every one in ``count``); with ``interrupt`` each one raises
    KeyboardInterrupt where the main thread is."""

    def __init__(self, interrupt: bool) -> None:
        self.interrupt = interrupt
        self.signum: Optional[int] = None
        self.count = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
        if self.interrupt:
            raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def exit_code(signum: Optional[int]) -> int:
    """128 + the signal (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP); 130 when the signal is unknown."""
    return 128 + int(signum or signal.SIGINT)
