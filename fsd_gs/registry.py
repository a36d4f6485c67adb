"""One registry per extension axis (methods, noise kinds, export formats, prior detectors): names -> entries.

    METHODS = Registry("method", "--method", entry_point_group="fsd_gs.methods")
    METHODS.register(FSD)                  # an entry is one object with a ``name`` that builds itself
    METHODS["fsd"]; list(METHODS)          # a read-only mapping, in registration order
    METHODS.get_entry("dds")               # UserError: "--method must be one of fsd, sds, ...; got 'dds'"
    MethodName = METHODS.literal()         # typing.Literal of the names: tyro's --help lists the choices

Third-party packages add entries through Python entry points (``importlib.metadata``): an entry point of
the registry's group names an entry object (``mypkg.methods:TOY``), loaded the first time the registry is
read. docs/extending.md says where each axis's entries live.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any, Generic, Literal, Protocol, TypeVar

from fsd_gs.errors import UserError


class Named(Protocol):
    """What every registry entry has: the name it is registered (and chosen on the command line) by."""

    @property
    def name(self) -> str: ...


E = TypeVar("E", bound=Named)


class Registry(Mapping[str, E], Generic[E]):
    """Entries of one axis by name, in registration order (built-ins first, then entry-point plugins).

    Args:
        axis: what an entry is, for messages ("method", "noise kind", "export format").
        flag: the command-line flag that chooses one ("--method"), for messages.
        entry_point_group: the ``importlib.metadata`` group plugins register under; None: no plugins.
    """

    def __init__(self, axis: str, flag: str, entry_point_group: str | None = None) -> None:
        self.axis = axis
        self.flag = flag
        self.entry_point_group = entry_point_group
        self._entries: dict[str, E] = {}
        self._plugins_loaded = entry_point_group is None

    def register(self, entry: E) -> E:
        """Add ``entry`` under ``entry.name`` (returns it, so it can decorate); a taken name is a ValueError."""
        name = entry.name
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"a {self.axis} name must be an identifier, got {name!r}")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"the {self.axis} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a toy entry clean up with this)."""
        self._entries.pop(name, None)

    def load_plugins(self) -> None:
        """Register the entries that installed packages declare under :attr:`entry_point_group` (once)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for point in metadata.entry_points(group=str(self.entry_point_group)):
            entry = point.load()
            if getattr(entry, "name", None) != point.name:
                raise ValueError(
                    f"the entry point {point.name} = {point.value} of {self.entry_point_group} must name "
                    f"a {self.axis} entry whose name is {point.name!r}, got {entry!r}"
                )
            self.register(entry)

    def _all(self) -> dict[str, E]:
        self.load_plugins()
        return self._entries

    def __getitem__(self, name: str) -> E:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._all()))

    def __len__(self) -> int:
        return len(self._all())

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._all())

    def get_entry(self, name: str) -> E:
        """The entry of ``name``; one-sentence UserError naming the choices for an unknown one."""
        entries = self._all()
        if name not in entries:
            raise UserError(f"{self.flag} must be one of {', '.join(entries)}, got {name!r}")
        return entries[name]

    def literal(self, *extra: str) -> Any:
        """``typing.Literal`` of the names (and ``extra``), for dataclass fields tyro makes choices of."""
        return Literal[(*self.names(), *extra)]  # type: ignore[valid-type]
