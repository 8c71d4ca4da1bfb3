"""What the demo's stages hand to each other and to the report: typed results, not strings.

A :class:`Search` names one global search of the demo table (its query side and gallery side);
:class:`AFFStageResult` and :class:`AMESStageResult` carry a stage's table rows, its artifacts
and the figures the report prints. ``info()`` gives the JSON form written to ``report.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Row = dict[str, Any]  # one row of the demo table: feature, kind, dim and the metrics


@dataclass(frozen=True)
class Search:
    """One global search: queries embedded by ``query_side`` against a gallery of ``gallery_side``."""

    query_side: str
    gallery_side: str

    @property
    def label(self) -> str:
        """The search's row label in the demo table, ``"<query side> → <gallery side>"``."""
        return f"{self.query_side} → {self.gallery_side}"


@dataclass(frozen=True)
class AFFSearches:
    """The AFF stage's two searches: fused queries (symmetric) and the query net (asymmetric)."""

    symmetric: Search
    asymmetric: Search

    @classmethod
    def of(cls, *, gallery_features: tuple[str, ...], query_arch: str, input_size: int) -> AFFSearches:
        fused = "AFF(" + " + ".join(gallery_features) + ")"
        return cls(symmetric=Search(fused, fused), asymmetric=Search(f"{query_arch}@{input_size}", fused))


@dataclass(frozen=True)
class AFFStageResult:
    """The AFF stage: its rows (start and trained, symmetric and asymmetric) and its artifacts."""

    rows: tuple[Row, ...]
    searches: AFFSearches
    run_dir: Path
    mixer: Path
    query_net: Path
    checkpoint: Path
    best_epoch: int
    embedding_space_id: str
    train_runtime_s: float

    def info(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "best_epoch": self.best_epoch,
                "embedding_space_id": self.embedding_space_id, "train_runtime_s": round(self.train_runtime_s, 1),
                "checkpoint": str(self.checkpoint), "query_net": str(self.query_net), "mixer": str(self.mixer)}


@dataclass(frozen=True)
class EnsembleWeights:
    """λ/γ used for one search's re-ranking, and where they were chosen."""

    lam: float
    gamma: float
    chosen_on: str


@dataclass(frozen=True)
class AMESStageResult:
    """The AMES stage: one ``"<search> + AMES"`` row per search, then one ``"<search> + mutual NN"``
    row per search (the untrained baseline), the model and its settings."""

    rows: tuple[Row, ...]
    run_dir: Path
    checkpoint: Path
    local_feature: str
    lq: int
    lx: int
    top_m: int
    epochs: int
    lam: float
    gamma: float
    train_runtime_s: float
    local_bytes_per_image: int
    weights: dict[str, EnsembleWeights] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "checkpoint": str(self.checkpoint), "local_feature": self.local_feature,
                "lq": self.lq, "lx": self.lx, "top_m": self.top_m, "epochs": self.epochs, "lam": self.lam,
                "gamma": self.gamma, "train_runtime_s": round(self.train_runtime_s, 1),
                "weights": {label: {"lam": w.lam, "gamma": w.gamma, "chosen_on": w.chosen_on}
                            for label, w in self.weights.items()},
                "local_bytes_per_image": self.local_bytes_per_image}
