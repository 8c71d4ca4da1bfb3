"""asymfuse.edge: the torch-free, phone-side half of asymfuse.

It holds what every side shares (``ModelSpec``, the reference preprocessing and the error
hierarchy), so ``cloud`` and ``export`` import these from here and never the other way round.
"""

from asymfuse.edge.errors import (
    AsymfuseError,
    ConfigError,
    CorruptDataError,
    MissingDependencyError,
    ShapeError,
    UnknownNameError,
)
from asymfuse.edge.spec import ModelSpec, compute_embedding_space_id

__version__ = "0.1.0"

__all__ = [
    "AsymfuseError",
    "ConfigError",
    "CorruptDataError",
    "MissingDependencyError",
    "ModelSpec",
    "ShapeError",
    "UnknownNameError",
    "compute_embedding_space_id",
]
