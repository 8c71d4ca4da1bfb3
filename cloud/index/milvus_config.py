"""Settings of the Milvus backend: where the collection is (:class:`MilvusTarget`) and how its
vectors are indexed and searched (:class:`MilvusIndexConfig`).

Index types are the ones a Milvus 2.3 server builds on CPU: ``FLAT`` (exact), ``HNSW``,
``IVF_FLAT``, ``IVF_PQ`` and ``IVF_SQ8``. ``DISKANN`` is refused: on the Milvus 2.3.5 standalone
server this backend is tested against it does not build (reported to crash the server; here a build
over 5,000 vectors of dim 32 had not finished after 60 s, and ``create_index`` timed out).

A faiss factory string (``Flat``, ``HNSW32``, ``IVF{n},Flat``, ``IVF{n},PQ{m}``, ``IVF{n},SQ8``)
translates to the matching Milvus index with :meth:`MilvusIndexConfig.from_factory`, so
``--factory`` means the same on both backends.

Metric: ``IP`` (inner product, the faiss backend's metric) or ``COSINE``; both rank unit-norm vectors
identically and return the same scores for them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from asymfuse.edge.errors import ConfigError

INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_PQ", "IVF_SQ8")
METRICS = ("IP", "COSINE")
CONSISTENCY = ("Session", "Strong")
MAX_TOP_K = 16_384  # Milvus's limit on results per query
URL_SCHEMES = {"milvus": "http", "milvus+http": "http", "milvus+https": "https"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_DISKANN = ("DISKANN is refused: it does not build on the Milvus 2.3.5 standalone server this backend is tested "
            "against (it crashed, or never finished); use HNSW (in memory) or IVF_PQ / IVF_SQ8 for large galleries")


@dataclass(frozen=True)
class MilvusIndexConfig:
    """How the fused vectors are indexed (``index_type`` and build parameters) and searched.

    Attributes:
        index_type: one of :data:`INDEX_TYPES`.
        metric: ``IP`` or ``COSINE``.
        hnsw_m, ef_construction: HNSW graph degree and build-time beam.
        ef_search: HNSW search beam (raised to ``k`` when ``k`` is larger).
        nlist, nprobe: IVF lists and lists probed per query (capped at ``nlist``).
        pq_m, pq_nbits: IVF_PQ sub-quantisers (must divide the dim) and bits per code.
    """

    index_type: str = "FLAT"
    metric: str = "IP"
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 400
    nlist: int = 1024
    nprobe: int = 64
    pq_m: int = 64
    pq_nbits: int = 8

    def __post_init__(self) -> None:
        if self.index_type == "DISKANN":
            raise ConfigError(_DISKANN)
        if self.index_type not in INDEX_TYPES:
            raise ConfigError(f"unknown Milvus index type {self.index_type!r}; use one of {', '.join(INDEX_TYPES)}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric {self.metric!r} is not supported; use IP or COSINE (scores are similarities, "
                              "higher is better, as on the faiss backend)")
        limits = {"hnsw_m": (2, 2048), "ef_construction": (1, 1 << 31), "ef_search": (1, 1 << 15),
                  "nlist": (1, 65_536), "nprobe": (1, 65_536), "pq_m": (1, 65_536), "pq_nbits": (1, 16)}
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ConfigError(f"MilvusIndexConfig.{name}={value!r} must be an int in [{lo}, {hi}]")

    @property
    def factory(self) -> str:
        """A short description for GetInfo and reports, e.g. ``milvus:HNSW``."""
        return f"milvus:{self.index_type}"

    def check_dim(self, dim: int) -> None:
        """Raises: ConfigError: ``dim`` is not positive, or IVF_PQ's ``pq_m`` does not divide it."""
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 32_768:
            raise ConfigError(f"dim={dim!r} must be an int in [1, 32768] (Milvus's float vector limit)")
        if self.index_type == "IVF_PQ" and dim % self.pq_m:
            raise ConfigError(f"IVF_PQ needs pq_m ({self.pq_m}) to divide the dim ({dim}); choose a divisor of {dim}")

    def build_params(self) -> dict[str, Any]:
        """The ``params`` of Milvus's ``create_index`` for this index type."""
        if self.index_type == "HNSW":
            return {"M": self.hnsw_m, "efConstruction": self.ef_construction}
        if self.index_type == "IVF_PQ":
            return {"nlist": self.nlist, "m": self.pq_m, "nbits": self.pq_nbits}
        if self.index_type.startswith("IVF"):
            return {"nlist": self.nlist}
        return {}

    def search_params(self, k: int) -> dict[str, Any]:
        """The ``params`` of one search returning ``k`` results."""
        if self.index_type == "HNSW":
            return {"ef": max(self.ef_search, k)}
        if self.index_type.startswith("IVF"):
            return {"nprobe": min(self.nprobe, self.nlist)}
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"backend": "milvus", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MilvusIndexConfig:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_factory(cls, factory: str, *, ef_search: int = 400, ef_construction: int = 100, nprobe: int = 64,
                     metric: str = "IP") -> MilvusIndexConfig:
        """The Milvus index matching a faiss factory string (see the module docstring).

        Raises:
            ConfigError: a factory with no Milvus counterpart (OPQ, IVF over HNSW, ...).
        """
        common = {"ef_search": ef_search, "ef_construction": ef_construction, "nprobe": nprobe, "metric": metric}
        if factory == "Flat":
            return cls(index_type="FLAT", **common)
        if m := re.fullmatch(r"HNSW(\d+)", factory):
            return cls(index_type="HNSW", hnsw_m=int(m.group(1)), **common)
        if m := re.fullmatch(r"IVF(\d+),(Flat|SQ8|PQ(\d+)(?:x(\d+))?)", factory):
            nlist, kind = int(m.group(1)), m.group(2)
            if kind == "Flat":
                return cls(index_type="IVF_FLAT", nlist=nlist, **common)
            if kind == "SQ8":
                return cls(index_type="IVF_SQ8", nlist=nlist, **common)
            return cls(index_type="IVF_PQ", nlist=nlist, pq_m=int(m.group(3)), pq_nbits=int(m.group(4) or 8),
                       **common)
        raise ConfigError(f"the faiss factory {factory!r} has no Milvus counterpart; use Flat, HNSW{{M}}, "
                          "IVF{n},Flat, IVF{n},PQ{m} or IVF{n},SQ8 (or --index-type with a Milvus index type)")


@dataclass(frozen=True)
class MilvusTarget:
    """A collection on a Milvus server.

    Attributes:
        uri: ``http://host:port`` or ``https://host:port``.
        collection: the collection of fused vectors (letters, digits, underscores; not a digit first).
        token: ``user:password`` or an API key (for ``https`` servers with authentication); never printed.
        timeout_s: deadline of every call, connecting included (an unreachable server fails this fast).
        consistency: ``Session`` (default: a search sees every write this process acknowledged; other
            replicas' writes within Milvus's time tick, ~0.2 s) or ``Strong`` (every read waits for
            the next time tick: ~0.2-0.4 s per search).
    """

    uri: str
    collection: str
    token: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0
    consistency: str = "Session"

    def __post_init__(self) -> None:
        parts = urlsplit(self.uri) if isinstance(self.uri, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"Milvus uri {self.uri!r} must look like http://host:19530 or https://host:443")
        check_collection_name(self.collection)
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            raise ConfigError(f"timeout_s={self.timeout_s!r} must be a positive number of seconds")
        if self.consistency not in CONSISTENCY:
            raise ConfigError(f"consistency {self.consistency!r} is not supported; use Session or Strong (weaker "
                              "levels would let a search miss an acknowledged write)")

    @property
    def url(self) -> str:
        """``milvus://host:port/collection`` (``milvus+https://`` for TLS), as ``asymfuse serve --index`` takes it."""
        parts = urlsplit(self.uri)
        scheme = "milvus" if parts.scheme == "http" else "milvus+https"
        return f"{scheme}://{parts.netloc}/{self.collection}"

    @classmethod
    def from_url(cls, url: str, *, token: str | None = None, timeout_s: float = 10.0,
                 consistency: str = "Session") -> MilvusTarget:
        """Parse ``milvus://host:port/collection`` (``milvus+https://`` for TLS).

        Raises:
            ConfigError: another scheme, no host, or no collection name.
        """
        parts = urlsplit(url)
        if parts.scheme not in URL_SCHEMES or not parts.hostname:
            raise ConfigError(f"{url!r} is not a Milvus index URL; write milvus://host:19530/<collection> "
                              "(milvus+https://host:443/<collection> for TLS)")
        collection = parts.path.strip("/")
        if not collection:
            raise ConfigError(f"{url!r} names no collection; write milvus://host:port/<collection>")
        port = parts.port or 19530
        return cls(uri=f"{URL_SCHEMES[parts.scheme]}://{parts.hostname}:{port}", collection=collection, token=token,
                   timeout_s=timeout_s, consistency=consistency)

    def sibling(self, collection: str) -> MilvusTarget:
        """The same server and settings, another collection."""
        return MilvusTarget(uri=self.uri, collection=collection, token=self.token, timeout_s=self.timeout_s,
                            consistency=self.consistency)


def is_milvus_url(text: str) -> bool:
    """Whether ``text`` is a ``milvus://`` index URL (rather than an index folder)."""
    return isinstance(text, str) and text.split("://", 1)[0] in URL_SCHEMES and "://" in text


def check_collection_name(name: str) -> None:
    """Raises: ConfigError: not a valid Milvus collection name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"collection name {name!r} is not valid in Milvus; use letters, digits and underscores, "
                          "not starting with a digit (at most 255)")
