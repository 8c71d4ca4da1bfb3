"""A stateless searcher over a Milvus collection (``asymfuse serve --index milvus://host:port/collection``).

Everything the searcher needs is in Milvus: the vectors and their metadata, the :class:`IndexMeta`
(embedding space id, query ModelSpec, AMES options) in the collection's properties, and the AMES
codes in the descriptor collection. The process holds only the AMES checkpoint (``--ames``, checked
against the sha256 recorded at build time), so any number of replicas can serve one collection
behind a load balancer; each sees its own writes at once and the others' within Milvus's time tick.
"""

from __future__ import annotations

from typing import Any

from asymfuse.cloud.features.store_format import sha256_file
from asymfuse.cloud.index.milvus_config import MilvusTarget
from asymfuse.cloud.index.milvus_index import MilvusIndex
from asymfuse.cloud.index.milvus_locals import MilvusLocals
from asymfuse.cloud.service.config import ServerConfig
from asymfuse.cloud.service.searcher import Reranker, Searcher
from asymfuse.edge.errors import ConfigError, CorruptDataError


def open_milvus_searcher(config: ServerConfig) -> Searcher:
    """The searcher of the collection ``config.index_dir`` names (see the module docstring).

    Raises:
        ConfigError: no such collection, an unfinished build, or an AMES checkpoint missing, extra or
            other than the one the index was built with.
        IndexUnavailableError: Milvus cannot be reached.
    """
    target = MilvusTarget.from_url(config.index_dir, token=config.milvus_token, timeout_s=config.milvus_timeout_s)
    index = MilvusIndex.open(target)
    try:
        meta = index.meta
        if meta.ames and not config.ames_checkpoint:
            raise ConfigError(f"{target.url} was built with AMES re-ranking; pass the checkpoint it was built with "
                              f"(--ames, sha256 {str(meta.ames.get('checkpoint_sha256', ''))[:12]}...)")
        if config.ames_checkpoint and not meta.ames:
            raise ConfigError(f"{target.url} was built without AMES; drop --ames, or rebuild the collection with "
                              "`asymfuse index build --backend milvus --ames ... --packed ...`")
        reranker = _reranker(target, meta.ames, config) if meta.ames else None
        return Searcher(index=index, embedding_space_id=meta.embedding_space_id, model_spec=meta.model_spec,
                        reranker=reranker, max_k=config.max_k, default_k=config.default_k,
                        search_threads=config.faiss_threads)
    except BaseException:
        index.close()
        raise


def _reranker(target: MilvusTarget, ames: dict[str, Any], config: ServerConfig) -> Reranker:
    from asymfuse.cloud.ames.checkpoint import load_ames  # torch: only where AMES is served
    from asymfuse.cloud.ames.factory import create_scorer
    from asymfuse.cloud.ames.options import RerankOptions

    checkpoint = str(config.ames_checkpoint)
    try:
        want, collection = str(ames["checkpoint_sha256"]), str(ames["collection"])
    except (KeyError, TypeError) as exc:
        raise CorruptDataError(f"the AMES entry of {target.url} lacks {exc}; rebuild with `asymfuse index build "
                               "--backend milvus --ames ... --packed ...`") from exc
    try:
        got = sha256_file(checkpoint)
    except OSError as exc:
        raise ConfigError(f"cannot read the AMES checkpoint {checkpoint} ({exc}); pass the file the index was "
                          "built with") from exc
    if got != want:
        raise ConfigError(f"{checkpoint} (sha256 {got[:12]}...) is not the AMES checkpoint {target.url} was built "
                          f"with (sha256 {want[:12]}...); pass that one, or rebuild the collection with this one")
    model, info = load_ames(checkpoint, variant="binary", device=config.device)
    options = RerankOptions(top_m=config.rerank_top_m, lam=ames.get("lam", info.lam),
                            gamma=ames.get("gamma", info.gamma), lq=ames.get("lq"), lx=ames.get("lx"))
    locals_ = MilvusLocals.open(target.sibling(collection), ames=ames, model=model)
    try:
        scorer = create_scorer(model, kind=config.scorer, device=config.device)  # moves the model to device
        return Reranker(model=model, scorer=scorer, packed=locals_, options=options)
    except BaseException:
        locals_.close()
        raise
