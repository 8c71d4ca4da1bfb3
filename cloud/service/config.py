"""``ServerConfig``: everything ``asymfuse serve`` needs besides the index folder's own files."""

from __future__ import annotations

from dataclasses import dataclass, field

from asymfuse.cloud.index.milvus_config import is_milvus_url
from asymfuse.edge.errors import ConfigError

MiB = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    """How the searcher is served.

    Attributes:
        index_dir: the folder written by ``asymfuse index build``, or a Milvus collection built by
            ``asymfuse index build --backend milvus``: ``milvus://host:port/collection``
            (``milvus+https://`` for TLS). With Milvus the searcher keeps no state: run several.
        bind: ``host:port`` (port 0 picks a free one; :func:`create_server` returns it).
        tls_cert, tls_key: PEM files; both or neither (then the port is plaintext).
        api_keys: accepted ``authorization: Bearer <key>`` values. Writes (Upsert, Delete) always need
            one; with no keys configured, writes are refused.
        auth_reads: also require a key for Search* and GetInfo.
        max_message_bytes: larger requests are refused (RESOURCE_EXHAUSTED).
        max_k, default_k: results per query; max_batch: queries per SearchBatch / items per Upsert.
        threads: gRPC worker threads (concurrent RPCs).
        snapshot_interval_s: snapshot the index this often when the log holds writes (0: only at shutdown).
        rerank_top_m: default AMES depth (None: 100); scorer: AMES scorer kind ("fp32").
        device: where AMES runs ("cpu", "cuda", ...).
        scorer: AMES scorer kind (:func:`~asymfuse.cloud.ames.factory.create_scorer`): ``fp32`` (exact,
            the CPU default), ``batched`` (exact, one batched call; the GPU path), ``bf16`` (GPU), ``int8``.
        resident_gallery: decode and project the packed gallery once and keep the tokens on ``device``
            (memory: items x L_x x model_dim x 4 bytes; for small galleries or a large GPU).
        faiss_threads: OpenMP threads of one faiss search (set around each search call, then restored).
            Default 1: a serving process gets its parallelism from concurrent RPCs, and faiss's
            OpenMP pool spinning next to torch's made AMES re-ranking 10-15x slower on 2 cores
            (measured: 7.4 s instead of 0.5 s for 100 candidates).
        ames_checkpoint: with a ``milvus://`` index built with AMES: the checkpoint it was built with
            (checked by sha256; an index folder carries its own copy instead).
        milvus_token: ``user:password`` or API key of a Milvus server with authentication (never printed).
        milvus_timeout_s: deadline of each Milvus call (an unreachable server fails this fast).
    """

    index_dir: str
    bind: str = "127.0.0.1:0"
    tls_cert: str | None = None
    tls_key: str | None = None
    api_keys: tuple[str, ...] = ()
    auth_reads: bool = False
    max_message_bytes: int = 16 * MiB
    max_k: int = 1000
    default_k: int = 10
    max_batch: int = 256
    threads: int = 8
    snapshot_interval_s: float = 300.0
    rerank_top_m: int = 100
    device: str = "cpu"
    faiss_threads: int = 1
    scorer: str = "fp32"
    resident_gallery: bool = False
    ames_checkpoint: str | None = None
    milvus_token: str | None = field(default=None, repr=False)
    milvus_timeout_s: float = 10.0

    @property
    def uses_milvus(self) -> bool:
        """Whether ``index_dir`` is a ``milvus://`` URL."""
        return is_milvus_url(self.index_dir)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("give both tls_cert and tls_key (PEM files), or neither for a plaintext port")
        for name in ("max_message_bytes", "max_k", "default_k", "max_batch", "threads", "rerank_top_m",
                     "faiss_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ServerConfig.{name}={value!r} must be a positive int")
        if self.default_k > self.max_k:
            raise ConfigError(f"default_k ({self.default_k}) exceeds max_k ({self.max_k})")
        if self.snapshot_interval_s < 0:
            raise ConfigError("snapshot_interval_s must be >= 0 (0: snapshot only at shutdown)")
        if any(not isinstance(key, str) or not key.strip() for key in self.api_keys):
            raise ConfigError("api_keys must be non-empty strings")
        if ":" not in self.bind:
            raise ConfigError(f"bind={self.bind!r} must be host:port (port 0 picks a free one)")
        if not self.uses_milvus and (self.ames_checkpoint or self.milvus_token):
            raise ConfigError("--ames and a Milvus token are for a milvus://host:port/collection index; an index "
                              "folder carries its own AMES checkpoint")
        if self.uses_milvus and self.resident_gallery:
            raise ConfigError("resident_gallery needs the local packed store; a milvus:// index fetches each "
                              "query's AMES descriptors from Milvus instead")
        if isinstance(self.milvus_timeout_s, bool) or not isinstance(self.milvus_timeout_s, (int, float)) \
                or self.milvus_timeout_s <= 0:
            raise ConfigError(f"milvus_timeout_s={self.milvus_timeout_s!r} must be a positive number of seconds")
