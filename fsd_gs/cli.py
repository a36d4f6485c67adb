"""One way to turn a typed dataclass into a command line (tyro), shared by every ``python -m fsd_gs.*``."""

from __future__ import annotations

import functools
import re
from typing import Any, Sequence, TypeVar

T = TypeVar("T")

_WRAPPED = re.compile(r"(?<=\S)[ \t]*\n[ \t]+(?=[^\s\-*])")


@functools.lru_cache(maxsize=1)
def _unwrap_docstrings() -> None:
    """Join the wrapped lines of our field docstrings into one paragraph in ``--help``.

    tyro keeps a line break before every continuation line that starts with a space (ours are indented
    like the code), which breaks sentences in the middle; a blank line still starts a new paragraph.
    """
    from tyro import _strings

    original = _strings.remove_single_line_breaks
    _strings.remove_single_line_breaks = lambda text: original(_WRAPPED.sub(" ", text))


def tyro_cli(cls: type[T], prog: str, argv: Sequence[str], default: Any = None) -> T:
    """Parse ``argv`` into ``cls`` (``default``'s values as defaults); ``--help`` shows ``prog`` and the class docstring."""
    import tyro

    _unwrap_docstrings()
    return tyro.cli(cls, prog=prog, args=list(argv), default=default, description=cls.__doc__)
