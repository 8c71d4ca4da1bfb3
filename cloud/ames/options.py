"""How deep and how AMES re-ranks: one frozen record threaded from the CLI to the scorer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asymfuse.cloud.ames.checkpoint import DEFAULT_GAMMA, DEFAULT_LAM, AMESInfo
from asymfuse.cloud.ames.ensemble import check_weights
from asymfuse.edge.errors import ConfigError


@dataclass(frozen=True)
class RerankOptions:
    """AMES re-ranking parameters.

    Attributes:
        top_m: how many of the best global candidates AMES re-scores (0: none).
        lam, gamma: ensemble weights, ``s = lam * g + (1 - lam) * sigmoid(gamma * logit)``.
        lq, lx: keep only the first ``lq`` query / ``lx`` gallery local descriptors (None: all).

    Raises:
        ConfigError: ``top_m`` not an int >= 0, ``lam`` outside [0, 1], ``gamma`` not > 0, or
            ``lq``/``lx`` not a positive int.
    """

    top_m: int = 100
    lam: float = DEFAULT_LAM
    gamma: float = DEFAULT_GAMMA
    lq: int | None = None
    lx: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.top_m, bool) or not isinstance(self.top_m, (int, np.integer)) or self.top_m < 0:
            raise ConfigError(f"top_m={self.top_m!r} must be an int >= 0 (how many candidates to re-rank)")
        lam, gamma = check_weights(self.lam, self.gamma)
        object.__setattr__(self, "top_m", int(self.top_m))
        object.__setattr__(self, "lam", lam)
        object.__setattr__(self, "gamma", gamma)
        for name in ("lq", "lx"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < 1):
                raise ConfigError(f"{name}={value!r} must be a positive int (descriptors kept per image) or None")

    @classmethod
    def from_info(cls, info: AMESInfo, *, top_m: int = 100, lq: int | None = None,
                  lx: int | None = None) -> RerankOptions:
        """The λ/γ a checkpoint was validated with (:class:`AMESInfo`), at the given depth and budgets."""
        return cls(top_m=top_m, lam=info.lam, gamma=info.gamma, lq=lq, lx=lx)
