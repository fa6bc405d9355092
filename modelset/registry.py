"""One small registry used by every extensible kind: architectures, domains, task sets, weight
layouts, variant recipes, similarity methods, benchmark tracks, ...

A registry maps a lower-level name to an entry, refuses a name registered twice with a different
entry, lists its names sorted, and answers an unknown name with an :class:`UnknownNameError`
that suggests the closest names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from modelset.errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one ``kind`` (the word used in error messages) by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; ``ValueError`` if another entry has that name."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        known = self._entries.get(name)
        if known is not None and known is not entry and known != entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def add_class(self, name: str, cls: T) -> T:
        """Register a class; the same class re-registered (its module imported again, under the
        same qualified name) replaces itself, another class under ``name`` is refused."""
        known = self._entries.get(name)
        if known is not None and _qualname(known) != _qualname(cls):
            raise ValueError(f"{self.kind} {name!r} is registered twice ({_qualname(known)}, {_qualname(cls)})")
        self._entries[name] = cls
        return cls

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        """The entry named ``name``; ``UnknownNameError`` (a ``ModelSetError`` and ``KeyError``)
        with a did-you-mean hint if there is none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise unknown_name(self.kind, str(name), self.names()) from None

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests register throw-away entries)."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _qualname(entry: object) -> str:
    return f"{getattr(entry, '__module__', '')}.{getattr(entry, '__qualname__', repr(entry))}"
