"""``--set key=value`` overrides of a frozen bench config (shared by ``bench serve`` and ``bench edge``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import Any, TypeVar

from asymfuse.edge.errors import ConfigError

C = TypeVar("C")


def apply_overrides(cfg: C, values: Mapping[str, Any], *, what: str,
                    convert: Mapping[str, Callable[[Any], Any]] | None = None) -> C:
    """A copy of the dataclass ``cfg`` with ``values`` set.

    Tuple fields take a JSON list or one value (``sizes=100000`` -> ``(100000,)``); ``convert`` maps a
    key to its own parser.

    Raises:
        ConfigError: a key that ``cfg`` has not (the message lists the known ones).
    """
    known = set(asdict(cfg))  # type: ignore[call-overload]
    bad = sorted(set(values) - known)
    if bad:
        raise ConfigError(f"unknown {what} setting(s) {bad}; known: {sorted(known)}")
    fixed: dict[str, Any] = {}
    for key, value in values.items():
        if convert and key in convert:
            fixed[key] = convert[key](value)
        elif isinstance(getattr(cfg, key), tuple):
            fixed[key] = tuple(value) if isinstance(value, list) else (value,)
        else:
            fixed[key] = value
    return replace(cfg, **fixed)  # type: ignore[type-var]


def preset_config(cls: Callable[..., C], tier: str, tiers: Mapping[str, Mapping[str, Any]], *, what: str,
                  **overrides: Any) -> C:
    """``cls(tier=tier, **tiers[tier], **overrides)``: a bench config of a named tier.

    Raises:
        ConfigError: an unknown tier (the message lists the known ones).
    """
    if tier not in tiers:
        raise ConfigError(f"unknown {what} tier {tier!r}; choose one of {sorted(tiers)}")
    return cls(tier=tier, **{**tiers[tier], **overrides})
