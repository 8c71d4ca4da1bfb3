"""The searcher: gRPC service over a durable faiss index with AMES re-ranking (``asymfuse serve``)."""

from asymfuse.edge.lazy import lazy_surface

__all__, __getattr__, __dir__ = lazy_surface(__name__, {
    "Searcher": "asymfuse.cloud.service.searcher",
    "ServerConfig": "asymfuse.cloud.service.config",
    "create_server": "asymfuse.cloud.service.server",
    "open_searcher": "asymfuse.cloud.service.loader",
    "serve": "asymfuse.cloud.service.server",
})
