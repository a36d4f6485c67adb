"""Stop signals: SIGINT, SIGTERM and SIGHUP stop a run after the current step (a second one stops at once).

with StopRequest() as stop:        # installs the handlers (main thread only), restores them on exit
    while stop.signum is None: ...
raise RunStopped(stop.signum)      # after saving: the caller exits 128 + signum
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class RunStopped(KeyboardInterrupt):
    """A stop signal ended the run after saving it; ``signum`` is that signal (the batch exits with 128 + it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


class StopRequest:
    """SIGINT / SIGTERM / SIGHUP set ``signum``; the loop stops after the current step. A second one stops at once."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second signal: stop now
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)
