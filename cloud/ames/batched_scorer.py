"""A scorer that runs each query's candidates as one padded batch through a :class:`PreparedAMES`.

Same interface as :class:`~asymfuse.cloud.ames.scorer.AMESScorer` (``score``, ``score_many``,
``model``, ``device``), so :func:`~asymfuse.cloud.ames.rerank.rerank` takes either. Per query:
project the query once, fetch the candidates' tokens padded to their longest ``L_x`` (one gather
with a :class:`~asymfuse.cloud.ames.resident.ResidentGallery`), then one forward call per
``max_pairs`` candidates (None: all of them in one call, the GPU setting), optionally under bf16
autocast. Build it with :func:`asymfuse.cloud.ames.factory.create_scorer`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from asymfuse.cloud.ames.batched import prepare_ames
from asymfuse.cloud.ames.model import AMES
from asymfuse.cloud.ames.scorer import QueryInput, _eval_mode, _valid_query
from asymfuse.cloud.ames.sources import GalleryLocals, check_indices, check_length
from asymfuse.cloud.device import resolve_device
from asymfuse.edge.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "int8")


class BatchedScorer:
    """Batched AMES logits, one query's candidates per call (see the module docstring).

    Args:
        model: an :class:`AMES`; it is not modified (a serving copy is prepared; the query and
            gallery projections run on ``model`` itself, which is moved to ``device``).
        precision: ``"fp32"``; ``"bf16"`` (bf16 autocast around the forward: the GPU setting);
            ``"int8"`` (dynamic int8 linear layers, CPU only).
        device: where to compute (None: the model's device).
        max_pairs: candidates per forward call (None: all of a query's candidates at once).

    Raises:
        ConfigError: not an AMES, an unknown precision, int8 off CPU, a bad ``max_pairs`` or device.
    """

    def __init__(self, model: AMES, *, precision: str = "fp32", device: str | torch.device | None = None,
                 max_pairs: int | None = None) -> None:
        if not isinstance(model, AMES):
            raise ConfigError(f"BatchedScorer needs an AMES model, got {type(model).__name__}; build one with "
                              "create_ames or load_ames")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r} is unknown; choose one of {list(PRECISIONS)}")
        self._max_pairs = None if max_pairs is None else check_length(max_pairs, "max_pairs")
        self._device = next(model.parameters()).device if device is None else resolve_device(device)
        if next(model.parameters()).device != self._device:
            model.to(self._device)
        self._model = model
        self._precision = precision
        self._prepared = prepare_ames(model, weights="int8" if precision == "int8" else "fp32", device=self._device)

    @property
    def model(self) -> AMES:
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def precision(self) -> str:
        return self._precision

    def score(self, q_desc: np.ndarray | torch.Tensor, q_pad: np.ndarray | torch.Tensor | None,
              gallery: GalleryLocals, indices: Sequence[int] | np.ndarray, *, lq: int | None = None,
              lx: int | None = None) -> np.ndarray:
        """Logits ``(n,)`` float32 of one query against gallery items ``indices``; arguments,
        result and errors as :meth:`asymfuse.cloud.ames.scorer.AMESScorer.score`."""
        return self.score_many([(q_desc, q_pad)], gallery, [indices], lq=lq, lx=lx)[0]

    def score_many(self, queries: Sequence[QueryInput], gallery: GalleryLocals,
                   candidate_lists: Sequence[Sequence[int] | np.ndarray], *, lq: int | None = None,
                   lx: int | None = None) -> list[np.ndarray]:
        """Logits of many queries, each against its own candidates (one batch per query); as
        :meth:`asymfuse.cloud.ames.scorer.AMESScorer.score_many`."""
        if len(queries) != len(candidate_lists):
            raise ConfigError(f"{len(queries)} queries but {len(candidate_lists)} candidate lists; give one "
                              "list of gallery indices per query")
        lq = None if lq is None else check_length(lq, "lq")
        lx = None if lx is None else check_length(lx, "lx")
        cands = [check_indices(c, len(gallery), what="the gallery") for c in candidate_lists]
        local_dim = self._model.cfg.local_dim
        valid = [_valid_query(desc, pad, local_dim, i)[:lq] for i, (desc, pad) in enumerate(queries)]
        with torch.inference_mode(), _eval_mode(self._model):
            return [self._score_one(v, gallery, c, lx) for v, c in zip(valid, cands, strict=True)]

    # -- internals
    def _score_one(self, q_valid: np.ndarray, gallery: GalleryLocals, idx: np.ndarray, lx: int | None) -> np.ndarray:
        if idx.size == 0:
            return np.zeros(0, np.float32)
        dev, model = self._device, self._model
        desc = torch.from_numpy(np.ascontiguousarray(q_valid)).to(device=dev, dtype=model.mtc_token.dtype)[None]
        q_pad = torch.zeros(1, desc.shape[1], dtype=torch.bool, device=dev)
        q_tok = model.project(desc, q_pad, gallery=False).float()
        x_len = gallery.counts(idx).astype(np.int64)
        if lx is not None:
            x_len = np.minimum(x_len, lx)
        x_tok, x_pad = gallery.tokens(model, idx, length=max(1, int(x_len.max())), device=dev)
        x_pad = x_pad.to(dev)
        x_tok = x_tok.to(device=dev, dtype=torch.float32).masked_fill(x_pad[..., None], 0.0)
        step = idx.size if self._max_pairs is None else self._max_pairs
        with self._autocast():
            out = [self._prepared(q_tok, q_pad, x_tok[s:s + step], x_pad[s:s + step])
                   for s in range(0, idx.size, step)]
        return torch.cat(out).float().cpu().numpy()

    @contextmanager
    def _autocast(self) -> Iterator[None]:
        if self._precision != "bf16":
            yield
            return
        with torch.autocast(device_type=self._device.type, dtype=torch.bfloat16):
            yield
