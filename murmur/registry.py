"""Named factories, so every kind of swappable part is chosen by name the same way.

Compressors (``node.gossip.compress``), ciphers (``crypto.cipher``), models
(``node.training.models``), topologies (``topology.graphs``) and learning methods
(``sim.engine``) each keep one :class:`Registry`, filled with ``register_*`` calls next
to the implementations instead of an if-chain in a parser. A site's own code adds its
model or compressor the same way, and an unknown name gets one error listing what is
accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from murmur.errors import MurmurError

T = TypeVar("T")


class Registry(Generic[T]):
    """Factories of one kind, by name; ``form`` is how the name is written with arguments
    (``regular:D``), for help texts and errors."""

    def __init__(self, kind: str, error: type[MurmurError]) -> None:
        self.kind = kind
        self.error = error
        self._items: dict[str, T] = {}
        self._forms: dict[str, str] = {}

    def register(self, name: str, factory: T, form: str | None = None) -> T:
        """Add ``factory`` under ``name``; registering a different one twice is refused."""
        if not name or ":" in name or "+" in name:
            raise self.error(f"bad {self.kind} name {name!r}: no ':' or '+', not empty")
        if name in self._items and self._items[name] is not factory:
            raise self.error(f"a {self.kind} called {name!r} is already registered")
        self._items[name] = factory
        self._forms[name] = form or name
        return factory

    def get(self, name: str, spec: str | None = None) -> T:
        """The factory for ``name``; ``spec``, the full text the user wrote, for the error."""
        try:
            return self._items[name]
        except KeyError:
            raise self.error(
                f"unknown {self.kind} {spec or name!r}; accepted: {', '.join(self.forms())}"
            ) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def forms(self) -> tuple[str, ...]:
        return tuple(self._forms.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
