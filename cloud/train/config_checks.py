"""Checks shared by the frozen training configs (:mod:`.aff_config`, :mod:`asymfuse.cloud.train.ames_config`).

Imports nothing heavy, so a config module stays cheap to import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

from asymfuse.edge.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

C = TypeVar("C", bound="DataclassInstance")


def check_choice(name: str, value: object, options: tuple[str, ...]) -> None:
    """Raises: ConfigError: ``value`` is not one of ``options`` (the message lists them)."""
    if value not in options:
        raise ConfigError(f"{name}={value!r} is not supported; choose one of {list(options)}")


def check_positive_int(name: str, value: object) -> None:
    """Raises: ConfigError: ``value`` is not an int >= 1 (bools are refused)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")


def checked_keys(data: object, config_type: type[Any], *, what: str, article: str = "a") -> dict[str, Any]:
    """A copy of ``data`` after checking it is a dict whose keys are all fields of ``config_type``.

    Raises:
        ConfigError: ``data`` is not a dict, or has an unknown key (the message lists the valid ones).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{article} {what} must be a mapping of keys to values, got {type(data).__name__}")
    known = {f.name for f in fields(config_type)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}; valid keys: {sorted(known)}")
    return dict(data)


def build_config(config_type: type[C], values: Mapping[str, Any], *, what: str) -> C:
    """``config_type`` with ``values`` over its defaults (validated by its ``__post_init__``).

    Raises:
        ConfigError: an invalid value.
    """
    try:
        return replace(config_type(), **values)
    except TypeError as exc:
        raise ConfigError(f"bad {what} value ({exc})") from exc
