"""What the index backends share: :class:`IndexConfig` (how a faiss index is built and searched),
the id contract (:func:`check_ids`: unique int64, never -1) and :class:`UnknownIdError`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from asymfuse.edge.errors import AsymfuseError, ConfigError, ShapeError

_FACTORY = re.compile(r"^(OPQ\d+(_\d+)?,)?(Flat|HNSW\d+(_[A-Za-z0-9]+)?|IVF\d+(_HNSW\d+)?,(Flat|PQ\d+(x\d+)?|SQ8))$")

Metadata = Mapping[str, str]


class UnknownIdError(AsymfuseError, KeyError):
    """Ids that are not in the index (maps to NOT_FOUND)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class IndexConfig:
    """How the faiss index is built and searched.

    Attributes:
        factory: faiss factory string (see the module docstring); inner-product metric.
        ef_search: HNSW ``efSearch`` (raised to ``k`` when ``k`` is larger).
        ef_construction: HNSW ``efConstruction`` (graph quality at build time).
        nprobe: IVF lists probed per query (capped at the list count).
        train_size: vectors sampled to train IVF / PQ / OPQ.
        seed: sampling seed for training.
    """

    factory: str = "Flat"
    ef_search: int = 400
    ef_construction: int = 100
    nprobe: int = 64
    train_size: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not _FACTORY.match(self.factory):
            raise ConfigError(f"factory {self.factory!r} is not supported; use Flat, HNSW32, IVF{{n}},Flat, "
                              "IVF{n},PQ{m}, IVF{n},SQ8 or OPQ{m},IVF{n},PQ{m}")
        for name in ("ef_search", "ef_construction", "nprobe", "train_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"IndexConfig.{name}={value!r} must be a positive int")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IndexConfig:
        names = ("factory", "ef_search", "ef_construction", "nprobe", "train_size", "seed")
        known = {k: data[k] for k in names if k in data}
        return cls(**known)


def check_ids(ids: object, *, name: str = "ids") -> np.ndarray:
    """``(n,)`` int64 ids, unique, none equal to -1 (faiss's "no result").

    Raises:
        ShapeError: not a 1-D integer array, duplicates, or -1.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ShapeError(f"{name} must be a 1-D array of int64 ids, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64)
    if np.unique(arr).size != arr.size:
        raise ShapeError(f"{name} contain duplicates; send each id once per request")
    if (arr == -1).any():
        raise ShapeError(f"{name} contain -1, which faiss reserves for 'no result'; use another id")
    return arr
