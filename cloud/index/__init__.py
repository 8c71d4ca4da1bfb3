"""Search over fused gallery vectors: exact faiss search, ``index fuse``, and the Milvus backend."""

from asymfuse.edge.lazy import lazy_surface

__all__, __getattr__, __dir__ = lazy_surface(__name__, {
    "FlatIndex": "asymfuse.cloud.index.flat",
    "MilvusIndex": "asymfuse.cloud.index.milvus_index",
    "MilvusIndexConfig": "asymfuse.cloud.index.milvus_config",
    "MilvusTarget": "asymfuse.cloud.index.milvus_config",
    "fuse_stores": "asymfuse.cloud.index.fuse",
    "search": "asymfuse.cloud.index.flat",
})
