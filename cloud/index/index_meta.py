"""``meta.json`` of an index folder: what the index serves and where it came from.

Written by ``asymfuse index build`` and read by the searcher. Fields:

- ``dim``, ``config`` (:class:`~asymfuse.cloud.index.faiss_index.IndexConfig` as a dict);
- ``embedding_space_id`` and ``model_spec`` (the query side's ModelSpec, a dict or null): a client
  must send vectors of this space;
- ``built_from`` (the fused store), ``count`` at build time, ``checksums`` ({file: sha256});
- ``ames`` (null, or ``{"checkpoint", "packed", "local_dim", "lam", "gamma", "top_m"}``, paths relative
  to the folder) and ``id_keys`` (whether ``keys.json`` maps int64 ids to the store's image ids).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asymfuse.edge.errors import CorruptDataError
from asymfuse.edge.fileio import atomic_write_text

META_FILE = "meta.json"
KEY_FIELD = "key"  # item metadata field holding the feature store's image id
FORMAT = "asymfuse-index/1"


@dataclass(frozen=True)
class IndexMeta:
    """See the module docstring."""

    dim: int
    config: dict[str, Any]
    embedding_space_id: str
    model_spec: dict[str, Any] | None = None
    built_from: str = ""
    count: int = 0
    checksums: dict[str, str] = field(default_factory=dict)
    ames: dict[str, Any] | None = None

    def save(self, folder: str | os.PathLike[str]) -> Path:
        return atomic_write_text(Path(folder) / META_FILE, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> IndexMeta:
        """Read ``folder/meta.json``.

        Raises:
            CorruptDataError: missing, unreadable, or of another format.
        """
        path = Path(folder) / META_FILE
        if not path.is_file():
            raise CorruptDataError(f"{folder} is not an index folder (no {META_FILE}); build one with "
                                   "`asymfuse index build --features <fused store> --out <folder>`")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CorruptDataError(f"{path} is unreadable ({exc}); rebuild the index") from exc
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``format`` included), as in ``meta.json``."""
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: object, *, where: str) -> IndexMeta:
        """Inverse of :meth:`to_dict`; ``where`` names the source in error messages.

        Raises:
            CorruptDataError: another format, a missing field or a wrong type.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise CorruptDataError(f"{where} is not an {FORMAT} record; rebuild the index with `asymfuse index build`")
        try:
            return cls(dim=int(data["dim"]), config=dict(data["config"]),
                       embedding_space_id=str(data["embedding_space_id"]), model_spec=data.get("model_spec"),
                       built_from=str(data.get("built_from", "")), count=int(data.get("count", 0)),
                       checksums=dict(data.get("checksums", {})), ames=data.get("ames"))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"{where} lacks a field or has a wrong type ({exc}); rebuild the index") from exc
