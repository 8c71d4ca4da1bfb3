"""AMES re-ranking, serving side: the model, its checkpoints, the scorer, the packed gallery store
and the re-ranker. Training lives in :mod:`asymfuse.cloud.train` (``ames_trainer``)."""

from asymfuse.edge.lazy import lazy_surface

__all__, __getattr__, __dir__ = lazy_surface(__name__, {
    "AMES": "asymfuse.cloud.ames.model",
    "AMESConfig": "asymfuse.cloud.ames.model",
    "AMESEvaluation": "asymfuse.cloud.ames.evaluate",
    "AMESInfo": "asymfuse.cloud.ames.checkpoint",
    "AMESScorer": "asymfuse.cloud.ames.scorer",
    "BatchedScorer": "asymfuse.cloud.ames.batched_scorer",
    "PairScorer": "asymfuse.cloud.ames.factory",
    "ResidentGallery": "asymfuse.cloud.ames.resident",
    "SCORER_KINDS": "asymfuse.cloud.ames.factory",
    "ArrayLocals": "asymfuse.cloud.ames.sources",
    "PackedLocalStore": "asymfuse.cloud.ames.packed_store",
    "RerankOptions": "asymfuse.cloud.ames.options",
    "RerankResult": "asymfuse.cloud.ames.rerank",
    "build_packed_store": "asymfuse.cloud.ames.packed_build",
    "create_ames": "asymfuse.cloud.ames.model",
    "create_scorer": "asymfuse.cloud.ames.factory",
    "evaluate_ames": "asymfuse.cloud.ames.evaluate",
    "load_ames": "asymfuse.cloud.ames.checkpoint",
    "rerank": "asymfuse.cloud.ames.rerank",
    "save_ames": "asymfuse.cloud.ames.checkpoint",
    "select_ensemble": "asymfuse.cloud.ames.evaluate",
})
