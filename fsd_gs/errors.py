"""User-facing errors.

A :class:`UserError` carries one sentence that says what was wrong and what to do. The command-line
entry points catch it, print it on one line and exit with code 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Callable, Iterator, Sequence


class UserError(ValueError):
    """Bad input from the user: a one-line message, exit code 2 at the command line."""

    exit_code = 2


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show our UserWarnings as one ``warning: ...`` line each on stderr (not Python's file:line form)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = show
        yield


def run_cli(run: Callable[[Sequence[str]], int], argv: Sequence[str] | None = None) -> int:
    """Call ``run(argv)`` (default: sys.argv[1:]); a UserError becomes one line on stderr and exit code 2, a
    KeyboardInterrupt that reaches here one line and exit code 130."""
    try:
        with warnings_as_lines():
            return run(sys.argv[1:] if argv is None else list(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside a loop that saves (loading a model, a second Ctrl-C): no traceback
        print("stopped by Ctrl-C", file=sys.stderr)
        return 130
