"""A tiny, greppable name -> factory registry (timm / open-metric-learning style)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from asymfuse.edge.errors import ConfigError, unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries (usually factory functions).

    Each registry is a module-level constant filled by ``@REGISTRY.register("name")`` decorators
    at import time; nothing mutates it afterwards.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds ``entry`` under ``name``; a duplicate name is a programming error."""

        def wrap(entry: T) -> T:
            if name in self._entries:
                raise ConfigError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return wrap

    def get(self, name: str) -> T:
        """Look ``name`` up.

        Raises:
            UnknownNameError: with the list of known names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name(self.kind, name, list(self._entries)) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
