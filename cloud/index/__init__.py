"""Search over fused gallery vectors: exact faiss search and ``index fuse``."""

from asymfuse.edge.lazy import lazy_surface

__all__, __getattr__, __dir__ = lazy_surface(__name__, {
    "FlatIndex": "asymfuse.cloud.index.flat",
    "fuse_stores": "asymfuse.cloud.index.fuse",
    "search": "asymfuse.cloud.index.flat",
})
