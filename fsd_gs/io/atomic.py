"""Atomic file writes: a reader sees either the old file or the complete new one, never half of one.

The data goes to a temporary file in the target's own folder (same file system, so the final rename is
atomic), is flushed and fsync'ed, and then ``os.replace`` puts it in place; the folder is fsync'ed too
so the rename survives a power cut. If anything fails on the way the temporary file is removed and the
old file, if any, is left untouched.

    with atomic_open("model.ply") as f:     # a binary file object
        f.write(header); f.write(payload)
    atomic_write_bytes("checkpoint.json", data)
    append_text("metrics.jsonl", line)      # an append (a torn last line is repaired on resume)
    with writing(path): ...                 # any other write: an OSError becomes a WriteError

Every write of a run goes through this module, so an OS error (no space, no permission, a read-only file
system) is one :class:`WriteError` sentence naming the file, never a traceback, and never a half-written file
that a resume would trust.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fsd_gs.errors import UserError


class WriteError(UserError):
    """An OS error while writing ``path`` (no space, no permission, read-only): one sentence naming the file."""

    def __init__(self, path: str | Path, exc: OSError) -> None:
        self.path, self.errno = Path(path), exc.errno
        hint = _HINTS.get(exc.errno or 0, "")
        super().__init__(f"cannot write {path}: {exc.strerror or exc}{hint}")


_HINTS = {
    errno.ENOSPC: " (the disk is full: free some space)",
    errno.EDQUOT: " (the disk quota is used up: free some space)",
    errno.EACCES: " (no permission: pass a writable --output-dir)",
    errno.EPERM: " (not permitted: pass a writable --output-dir)",
    errno.EROFS: " (a read-only file system: pass a writable --output-dir)",
}


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError raised inside the block into a :class:`WriteError` naming ``path``."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(path, exc) from exc


def append_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Append ``text`` to ``path`` (created if missing); an OS error is a :class:`WriteError`."""
    with writing(path), open(path, "a", encoding=encoding) as f:
        f.write(text)


TEMP_SUFFIX = ".tmp"
"""Temporary files are named ``.<target name>.<random>.tmp`` next to the target."""


def _current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _current_umask()


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Open a binary file whose contents replace ``path`` atomically when the block ends without error.

    The new file gets the usual permissions (0666 minus the umask), not mkstemp's 0600. A folder that
    does not exist, or a write that fails (no space, no permission), is a :class:`UserError`; an
    exception raised inside the block leaves ``path`` as it was and propagates unchanged.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: the folder {folder} does not exist; create it first")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise WriteError(path, exc) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise WriteError(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (see the module doc); returns ``path``."""
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))
