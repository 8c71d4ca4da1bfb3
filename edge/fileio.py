"""Atomic file writes: a temp file beside the target, fsync, then one rename.

Every writer in asymfuse (checkpoints, feature-store shards, indexes, reports, exported models)
goes through here, so nothing half-written ever sits under a final name. Torch-free, so the
exporters and the edge SDK use it too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from asymfuse.edge.errors import ConfigError


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (renames) to disk; best effort where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; rename durability is best effort there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, tmp_prefix: str = ".tmp-") -> Iterator[Path]:
    """Yield a temp path beside ``path`` for a library to write to (faiss, h5py, onnx, ...).

    On a clean exit the temp file is fsynced and renamed over ``path``; on any exception it is
    deleted and ``path`` is untouched.

    Raises:
        ConfigError: the target folder is missing or not writable.
    """
    target = Path(path)
    if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
        raise ConfigError(f"cannot write {target}: folder {target.parent} is missing or not writable")
    tmp = target.with_name(f"{tmp_prefix}{target.name}.{secrets.token_hex(4)}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object], *,
                 tmp_prefix: str = ".tmp-") -> Path:
    """Write ``path`` atomically by calling ``write(binary file object)``.

    Raises:
        ConfigError: the target folder is missing or not writable.
    """
    with atomic_path(path, tmp_prefix=tmp_prefix) as tmp, open(tmp, "wb") as fh:
        write(fh)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
