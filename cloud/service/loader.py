"""Open an index folder (or a ``milvus://`` collection) as a :class:`~asymfuse.cloud.service.searcher.Searcher`
(index + AMES)."""

from __future__ import annotations

from pathlib import Path

from asymfuse.cloud.index.durable import DurableIndex
from asymfuse.cloud.service.config import ServerConfig
from asymfuse.cloud.service.searcher import Reranker, Searcher
from asymfuse.edge.errors import CorruptDataError


def load_reranker(folder: Path, ames: dict, *, top_m: int, device: str, scorer: str = "fp32",
                  resident: bool = False) -> Reranker:
    """AMES from the ``ames`` entry of ``meta.json`` (paths relative to ``folder``)."""
    from asymfuse.cloud.ames.checkpoint import load_ames  # torch: only where AMES is served
    from asymfuse.cloud.ames.options import RerankOptions
    from asymfuse.cloud.ames.packed_store import PackedLocalStore
    from asymfuse.cloud.ames.factory import create_scorer
    from asymfuse.cloud.ames.resident import ResidentGallery

    try:
        checkpoint, packed_dir = folder / ames["checkpoint"], folder / ames["packed"]
    except (KeyError, TypeError) as exc:
        raise CorruptDataError(f"{folder}/meta.json has an incomplete 'ames' entry ({exc}); rebuild with "
                               "`asymfuse index build --ames ... --packed ...`") from exc
    model, info = load_ames(checkpoint, variant="binary", device=device)
    packed = PackedLocalStore.open(packed_dir, model=model, verify=False)
    options = RerankOptions(top_m=top_m, lam=ames.get("lam", info.lam), gamma=ames.get("gamma", info.gamma),
                            lq=ames.get("lq"), lx=ames.get("lx"))
    pair_scorer = create_scorer(model, kind=scorer, device=device)  # moves the model to device
    keys = packed.ids
    source = ResidentGallery(packed, model, length=ames.get("lx"), device=device) if resident else packed
    return Reranker(model=model, scorer=pair_scorer, packed=source, options=options,
                    key_rows={key: row for row, key in enumerate(keys)})


def open_searcher(config: ServerConfig) -> Searcher:
    """The searcher of ``config.index_dir``: the durable index (snapshot + log replayed) and AMES, or a
    Milvus collection (:func:`~asymfuse.cloud.service.milvus_loader.open_milvus_searcher`)."""
    if config.uses_milvus:
        from asymfuse.cloud.service.milvus_loader import open_milvus_searcher

        return open_milvus_searcher(config)
    folder = Path(config.index_dir)
    index = DurableIndex.open(folder)
    try:
        meta = index.meta
        reranker = load_reranker(folder, meta.ames, top_m=config.rerank_top_m, device=config.device,
                                 scorer=config.scorer, resident=config.resident_gallery) if meta.ames else None
        return Searcher(index=index, embedding_space_id=meta.embedding_space_id, model_spec=meta.model_spec,
                        reranker=reranker, max_k=config.max_k, default_k=config.default_k,
                        search_threads=config.faiss_threads)
    except BaseException:
        index.close(snapshot=False)
        raise
