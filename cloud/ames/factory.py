"""Pick an AMES scorer by name: ``create_scorer(model, kind=..., device=...)``.

A serving process (the gRPC searcher, ``bench ames-latency``) names the kind in its config; each
kind is one entry of :data:`SCORER_KINDS`:

=============  ==================================================================================
kind           what runs
=============  ==================================================================================
``fp32``       :class:`~asymfuse.cloud.ames.scorer.AMESScorer`: length buckets, small chunks,
               the layer-1 query part once per query; the exact reference path.
``batched``    :class:`~asymfuse.cloud.ames.batched_scorer.BatchedScorer` in fp32: all of a
               query's candidates in one padded forward (CPU: chunks of ``max_pairs``). Same
               logits as ``fp32`` up to float rounding.
``bf16``       ``batched`` under bf16 autocast: the GPU kind. Approximate; on CPUs without
               native bf16 matmul (no AVX-512 BF16 / AMX) it is far slower than fp32.
``int8``       ``batched`` with dynamically quantized int8 linear layers (CPU only). Approximate.
=============  ==================================================================================

Cost (measured with ``asymfuse bench ames-latency``): re-scoring a top-100 at ``L_q = L_x = 64``
is about 22 G multiply-adds of matmuls (5 blocks x 129 tokens x 100 pairs, two thirds of them in
the FFN) whatever the batching, so on CPU the kinds differ by the matmul kernel, not the
launch count: on 2 AVX2 cores (no AVX-512 VNNI/BF16) ``fp32`` and ``batched`` take ~380-400 ms,
``int8`` ~10% less but inverts ~4% of the fp32 pair order, and bf16 has no fast CPU kernel there
(seconds). On a GPU the batched kinds make one forward per query instead of one per bucket and
chunk, which is what the launch-bound ``fp32`` scorer lacks there.

Every kind's object has ``score``, ``score_many``, ``model`` and ``device`` (:class:`PairScorer`),
which is all :func:`~asymfuse.cloud.ames.rerank.rerank` uses. Exact kinds (:data:`EXACT_KINDS`)
keep the fp32 order of candidates whose fp32 logits differ by more than 1e-3 (tested); the
approximate ones are measured, not promised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from asymfuse.cloud.ames.batched_scorer import BatchedScorer
from asymfuse.cloud.ames.model import AMES
from asymfuse.cloud.ames.scorer import AMESScorer, QueryInput
from asymfuse.cloud.ames.sources import GalleryLocals
from asymfuse.edge.errors import ConfigError, UnknownNameError

# candidates per call on CPU (FFN activations ~13 MB): 10..50 within 5% of each other on 2 cores, 100 slower
DEFAULT_CPU_MAX_PAIRS = 25


@runtime_checkable
class PairScorer(Protocol):
    """What :func:`~asymfuse.cloud.ames.rerank.rerank` needs of a scorer."""

    @property
    def model(self) -> AMES: ...

    @property
    def device(self) -> torch.device: ...

    def score(self, q_desc: np.ndarray | torch.Tensor, q_pad: np.ndarray | torch.Tensor | None,
              gallery: GalleryLocals, indices: Sequence[int] | np.ndarray, *, lq: int | None = None,
              lx: int | None = None) -> np.ndarray: ...

    def score_many(self, queries: Sequence[QueryInput], gallery: GalleryLocals,
                   candidate_lists: Sequence[Sequence[int] | np.ndarray], *, lq: int | None = None,
                   lx: int | None = None) -> list[np.ndarray]: ...


def _max_pairs(device: torch.device, max_pairs: int | None) -> int | None:
    if max_pairs is not None:
        return max_pairs
    return DEFAULT_CPU_MAX_PAIRS if device.type == "cpu" else None


def _device_of(model: AMES, device: str | torch.device | None) -> torch.device:
    from asymfuse.cloud.device import resolve_device

    return next(model.parameters()).device if device is None else resolve_device(device)


def _fp32(model: AMES, device: torch.device, **kw: Any) -> PairScorer:
    return AMESScorer(model, device=device, **kw)


def _batched(precision: str) -> Callable[..., PairScorer]:
    def build(model: AMES, device: torch.device, *, max_pairs: int | None = None) -> PairScorer:
        return BatchedScorer(model, precision=precision, device=device, max_pairs=_max_pairs(device, max_pairs))
    return build


SCORER_KINDS: dict[str, Callable[..., PairScorer]] = {
    "fp32": _fp32,
    "batched": _batched("fp32"),
    "bf16": _batched("bf16"),
    "int8": _batched("int8"),
}
EXACT_KINDS = ("fp32", "batched")
TIE = 1e-3  # fp32 logits closer than this may come out in either order


def order_violations(ref: np.ndarray, out: np.ndarray, *, tie: float = TIE) -> int:
    """How many candidate pairs ``(i, j)`` with ``ref[i] > ref[j] + tie`` have ``out[i] <= out[j]``:
    the fp32 order (``ref``, ``(n,)`` logits) that ``out`` (``(n,)``, same candidates) inverts."""
    ahead = ref[:, None] > ref[None, :] + tie
    return int((ahead & (out[:, None] <= out[None, :])).sum())


def create_scorer(model: AMES, *, kind: str = "fp32", device: str | torch.device | None = None,
                  **options: Any) -> PairScorer:
    """The AMES scorer of kind ``kind`` (see the module docstring) for ``model`` on ``device``.

    Args:
        model: an :class:`AMES` (fp or binary).
        kind: one of :data:`SCORER_KINDS`.
        device: where to compute (None: the model's device).
        options: the kind's own keywords: ``bucket``, ``max_tokens_per_chunk`` (``fp32``);
            ``max_pairs`` (the batched kinds; default 25 on CPU, all candidates elsewhere).

    Raises:
        UnknownNameError: an unknown kind (the message lists the known ones).
        ConfigError: not an AMES, an option the kind does not take, or a kind the device cannot
            run (``int8`` off CPU).
    """
    if kind not in SCORER_KINDS:
        raise UnknownNameError(f"unknown AMES scorer kind {kind!r}; choose one of {sorted(SCORER_KINDS)}")
    if not isinstance(model, AMES):
        raise ConfigError(f"create_scorer needs an AMES model, got {type(model).__name__}; build one with "
                          "create_ames or load_ames")
    try:
        return SCORER_KINDS[kind](model, _device_of(model, device), **options)
    except TypeError as exc:
        raise ConfigError(f"scorer kind {kind!r} does not take options {sorted(options)}: {exc}") from exc
