"""Retrieval metrics (revisitop, GLDv2, Holidays, UKBench) and evaluation from vectors or stores."""

from asymfuse.edge.lazy import lazy_surface

__all__, __getattr__, __dir__ = lazy_surface(__name__, {
    "compute_map": "asymfuse.cloud.eval.metrics",
    "evaluate_aff": "asymfuse.cloud.eval.evaluate",
    "evaluate_ranking": "asymfuse.cloud.eval.evaluate",
    "evaluate_revisitop": "asymfuse.cloud.eval.metrics",
    "query_and_gallery": "asymfuse.cloud.eval.stores",
    "rank_features": "asymfuse.cloud.eval.evaluate",
})
