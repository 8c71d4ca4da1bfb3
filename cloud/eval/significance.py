"""Is one ranking better than another on this split, or is the difference within its noise?

Model selection on a small val split (the embedded benchmark's has 15 queries) compares mAPs that
move by whole points when one query's AP changes. :func:`paired_gain` compares two rankings of
the *same* queries through their per-query APs: the mean difference and its standard error give a
one-sided paired z statistic. :func:`bonferroni_z` is the bar such a statistic must clear when
the best of ``checks`` candidates is kept (each check at ``alpha / checks``), so the chance that
noise alone replaces the incumbent stays at or below ``alpha`` over the whole run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from asymfuse.edge.errors import ConfigError, ShapeError


@dataclass(frozen=True)
class PairedGain:
    """Per-query comparison of a candidate ranking with the incumbent on the same queries.

    Attributes:
        mean: mean of ``candidate - incumbent`` AP over the queries both score (points).
        stderr: its standard error (sample standard deviation / sqrt(n)); 0 when n < 2.
        z: ``mean / stderr`` (``+inf``/``-inf``/0 when ``stderr`` is 0 and ``mean`` is >0/<0/0).
        n: queries compared.
    """

    mean: float
    stderr: float
    z: float
    n: int

    def beats(self, z_min: float) -> bool:
        """True when the candidate is better (``mean > 0``) with ``z > z_min``."""
        return self.mean > 0 and self.z > z_min


def paired_gain(candidate: np.ndarray, incumbent: np.ndarray) -> PairedGain:
    """Compare per-query APs ``(nq,)`` of two rankings of the same queries (NaN: query not scored).

    Raises:
        ShapeError: the arrays differ in shape or are not 1-D.
    """
    a, b = np.asarray(candidate, dtype=np.float64), np.asarray(incumbent, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ShapeError(f"per-query APs must be two 1-D arrays of the same queries, got {a.shape} and {b.shape}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if d.size == 0:
        return PairedGain(mean=0.0, stderr=0.0, z=0.0, n=0)
    mean = float(d.mean())
    stderr = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
    if stderr > 0:
        z = mean / stderr
    else:
        z = math.copysign(math.inf, mean) if mean != 0 else 0.0
    return PairedGain(mean=mean, stderr=stderr, z=z, n=int(d.size))


def bonferroni_z(alpha: float, checks: int) -> float:
    """The one-sided z bar of each of ``checks`` comparisons at family-wise level ``alpha``:
    ``Phi^-1(1 - alpha / checks)`` (1.645 for alpha 0.05 and one check, 2.734 for 16).

    Raises:
        ConfigError: ``alpha`` outside (0, 1) or ``checks`` < 1.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must lie in (0, 1), got {alpha!r}")
    if isinstance(checks, bool) or not isinstance(checks, int) or checks < 1:
        raise ConfigError(f"checks must be an int >= 1, got {checks!r}")
    return NormalDist().inv_cdf(1.0 - alpha / checks)
