"""Where feature stores live: ``<features_dir>/<name>/<part>/<side>``.

``name`` is a feature name (normally a registered extractor, or ``aff_fused`` for a fused store),
``part`` a dataset split (``train``, ``val``, ``test``, or a crop-view set) and ``side``
``gallery`` or ``queries``. Every command and stage builds these paths with :func:`store_path`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from asymfuse.edge.errors import ConfigError

SIDES = ("gallery", "queries")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def part_dir(features_dir: str | os.PathLike[str], name: str, part: str) -> Path:
    """``<features_dir>/<name>/<part>``: the folder holding one part's side stores.

    Raises:
        ConfigError: ``name`` or ``part`` is not a plain folder name.
    """
    for what, value in (("feature name", name), ("part", part)):
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise ConfigError(f"{what} {value!r} must be a plain folder name (letters, digits, '_', '-', '.')")
    return Path(features_dir) / name / part


def store_path(features_dir: str | os.PathLike[str], name: str, part: str, side: str = "gallery") -> Path:
    """``<features_dir>/<name>/<part>/<side>``.

    Raises:
        ConfigError: ``name`` or ``part`` is not a plain folder name, or ``side`` is not one of
            :data:`SIDES`.
    """
    if side not in SIDES:
        raise ConfigError(f"side={side!r} must be one of {list(SIDES)}")
    return part_dir(features_dir, name, part) / side
