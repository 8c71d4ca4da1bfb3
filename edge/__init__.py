"""asymfuse.edge: the torch-free, phone-side half of asymfuse.

It holds what every side shares (``ModelSpec``, the reference preprocessing, the runtime runners
and the error hierarchy), so ``cloud`` and ``export`` import these from here and never the other
way round. The SDK is :class:`ImageEmbedder` (with :class:`ImageEmbedderOptions` and
:class:`EmbeddingResult`). Names import on first use, so ``import asymfuse.edge`` stays cheap.
"""

from asymfuse.edge.lazy import lazy_surface

__version__ = "0.1.0"

__all__, __getattr__, __dir__ = lazy_surface(__name__, {
    "AsymfuseError": "asymfuse.edge.errors",
    "ClosedError": "asymfuse.edge.errors",
    "ConfigError": "asymfuse.edge.errors",
    "CorruptDataError": "asymfuse.edge.errors",
    "EmbeddingResult": "asymfuse.edge.results",
    "ImageEmbedder": "asymfuse.edge.embedder",
    "ImageEmbedderOptions": "asymfuse.edge.options",
    "IncompatibleModelError": "asymfuse.edge.errors",
    "MissingDependencyError": "asymfuse.edge.errors",
    "ModelSpec": "asymfuse.edge.spec",
    "ShapeError": "asymfuse.edge.errors",
    "UnknownNameError": "asymfuse.edge.errors",
    "compute_embedding_space_id": "asymfuse.edge.spec",
})
