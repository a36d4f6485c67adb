"""The run folder's lock: one process at a time owns a run folder.

    with RunLock(run_dir) as lock:     # RunLocked (a UserError) when another live process holds it
        ...; lock.remove = True        # a complete run: the owner deletes .lock on release

An flock on ``<run>/.lock``, released by the kernel when the process dies, so a stale lock is simply taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any, Optional

from fsd_gs.errors import UserError
from fsd_gs.io.atomic import writing


class RunLocked(UserError):
    """Another live process owns the run folder."""


class RunLock:
    """An exclusive flock on ``<run>/.lock`` for as long as this process works on the run."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / ".lock"
        self.fd: Optional[int] = None
        self.remove = False
        """Set when the run is complete: the owner deletes .lock (still holding it) on exit."""

    def __enter__(self) -> RunLock:
        while True:
            with writing(self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunLocked(
                    f"the run folder {self.path.parent} is in use by process {owner}: wait for it to "
                    "finish or stop it, then resume"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous owner finished and deleted this .lock after we opened it: lock the new one
        with contextlib.suppress(OSError):  # the pid is for the "in use by" message only
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            if self.remove:  # only the owner, while it still holds the flock (__enter__ re-checks the inode)
                with contextlib.suppress(OSError):
                    self.path.unlink()
            os.close(self.fd)  # closing releases the flock
            self.fd = None
