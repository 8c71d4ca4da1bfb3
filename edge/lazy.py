"""Package surfaces that import on first use: ``__all__`` plus a module ``__getattr__`` (PEP 562).

A package lists its public names and the module each lives in; ``from asymfuse.x import name``
then imports only that module. Importing the package stays cheap (no torch for a name that does
not need it) and cannot create an import circle with its own submodules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_surface(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any],
                                                                    Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` exporting ``{name: module}``.

    Raises (from ``__getattr__``):
        AttributeError: a name the package does not export.
    """
    table = dict(exports)

    def getattr_(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}; its public names are {sorted(table)}")
        return getattr(importlib.import_module(table[name]), name)

    def dir_() -> list[str]:
        return sorted(table)

    return sorted(table), getattr_, dir_
