"""Shared CLI parsing helpers: ``key=value`` options with JSON-ish values."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from asymfuse.edge.errors import ConfigError


def parse_options(items: Sequence[str] | None) -> dict[str, Any]:
    """``["max_side=512", "root=true"]`` -> ``{"max_side": 512, "root": True}``.

    Values are parsed as JSON when possible (numbers, true/false, lists), else kept as strings.

    Raises:
        ConfigError: an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"option {item!r} must look like key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
