"""Sharded, resumable extraction by several processes (``torchrun ... asymfuse extract``).

The job's rows are cut into the shards a single-process run would write
(:mod:`~asymfuse.cloud.features.shard_plan`); each shard is extracted by one rank into its own
part store (:mod:`~asymfuse.cloud.features.store_parts`), and rank 0 merges the parts into the
final store after a barrier. The merged store equals a single-process store: same manifest
fields, meta, ids in the same order and shard boundaries.

Steps (every rank runs them; the collectives wait at most ``options.dist_timeout_s``):

1. rank 0 checks ``<root>`` (an earlier run of another job is refused, unless ``resume=False``)
   and records the job; every rank gets it by broadcast;
2. each rank verifies (sha256) the parts of its share of all shards; the incomplete ones are
   gathered and split again over the ranks, so a restarted job (any world size) redoes only them;
3. each rank extracts its shards, decoding in DataLoader workers (``options.workers``);
4. barrier; rank 0 links the parts into the store and writes the manifest; the others wait for it.

A rank that dies or hangs makes the others fail with :class:`RankTimeoutError` at the next
collective, and torchrun then stops the job (``--max-restarts`` restarts it, which resumes).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from asymfuse.cloud.distributed import (
    DistEnv,
    all_gather_objects,
    barrier,
    broadcast_object,
    rank_timeout,
)
from asymfuse.cloud.features.base import FeatureExtractor
from asymfuse.cloud.features.batches import iter_collated
from asymfuse.cloud.features.extract import (
    ExtractOptions,
    check_same_job,
    extract_checked,
    job_items,
    progress_bar,
    store_meta_of,
)
from asymfuse.cloud.features.shard_plan import ShardPlan, plan_shards
from asymfuse.cloud.features.store import FeatureStore, FeatureStoreWriter, StoreLayout, remove_store_files
from asymfuse.cloud.features.store_format import MANIFEST, SHARD_FILE
from asymfuse.cloud.features.store_parts import (
    ShardedJob,
    merge_parts,
    open_part_writer,
    part_is_complete,
    parts_dir,
    read_job,
    remove_parts,
    write_job,
)
from asymfuse.edge.errors import AsymfuseError, ConfigError
from asymfuse.edge.preprocess import load_image

T = TypeVar("T")
TEST_FAULT_ENV = "ASYMFUSE_TEST_EXTRACT_FAULT"
"""Tests only: ``rank=R,after=K,mode=kill|hang|raise[,attempt=A]`` makes rank R fail after its K-th
shard (on torchrun restart attempt A, default 0)."""


def extract_sharded(extractor: FeatureExtractor, image_paths: Sequence[Any], root: str | os.PathLike[str], *,
                    ids: Sequence[str] | None = None, options: ExtractOptions | None = None,
                    env: DistEnv | None = None, meta: dict[str, Any] | None = None,
                    load_fn: Callable[[Any], Any] = load_image) -> FeatureStore:
    """Extract ``image_paths`` into the store at ``root``, this process being rank ``env.rank``.

    Every rank calls this with the same arguments, inside an initialised process group when
    ``env.world_size > 1`` (:func:`asymfuse.cloud.distributed.process_group`); with one process it
    needs none. ``ids``, ``meta`` and ``load_fn`` are those of
    :func:`~asymfuse.cloud.features.extract.extract_to_store`.

    Returns:
        The opened merged store (on every rank): rows in ``image_paths`` order.

    Raises:
        ConfigError: bad arguments; more ranks than items; ``root`` holds another job's store or
            a partial single-process store (resume it without torchrun), and ``resume`` is True.
        RankTimeoutError: another rank died or hung (it did not reach a collective in time).
        ShapeError, CorruptDataError: as :func:`~asymfuse.cloud.features.extract.extract_to_store`.
    """
    options = options or ExtractOptions()
    env = env or DistEnv()
    paths, ids = job_items(image_paths, ids, load_fn=load_fn)
    plan_shards(len(ids), options.shard_size, env.world_size)  # more ranks than items: fail before any I/O
    wanted = _wanted_job(extractor, store_meta_of(extractor, ids, meta), options, len(ids))
    if wanted.meta["ids_sha256"] != _collective(env, options, "agreeing on the image list",
                                                lambda: broadcast_object(wanted.meta["ids_sha256"], env)):
        raise ConfigError(f"rank {env.rank} lists other images than rank 0; every rank must see the same dataset "
                          "(same --root and files on every node)")
    root = Path(root)
    job = _agree_on_job(root, wanted, options, env)
    if job is None:  # the store is already complete
        return FeatureStore.open(root)
    todo = _pending_shards(root, job, ids, env, options)
    plan = plan_shards(len(ids), job.shard_size, env.world_size, todo=todo)
    _extract_assigned(extractor, paths, ids, root=root, job=job, plan=plan, env=env, options=options,
                      load_fn=load_fn)
    if env.distributed:
        barrier(env, timeout_s=options.dist_timeout_s, what="the extraction of every shard")
    _merge(root, job, plan, env, options)
    return FeatureStore.open(root)


def _wanted_job(extractor: FeatureExtractor, meta: dict[str, Any], options: ExtractOptions, n: int) -> ShardedJob:
    kind = meta["kind"]
    layout = StoreLayout(kind=kind, dim=meta["dim"], max_local=meta["max_local"],
                         desc_dtype=options.desc_dtype if kind == "local" else "float32")
    return ShardedJob(layout=layout, shard_size=options.shard_size, num_items=n, meta=meta)


def _collective(env: DistEnv, options: ExtractOptions, what: str, call: Callable[[], T]) -> T:
    """``call()`` (a collective), a failure reported as RankTimeoutError naming ``what``."""
    try:
        return call()
    except RuntimeError as exc:
        raise rank_timeout(env, what, exc, options.dist_timeout_s) from exc


def _agree_on_job(root: Path, wanted: ShardedJob, options: ExtractOptions, env: DistEnv) -> ShardedJob | None:
    """Rank 0 prepares ``root`` and every rank gets the job to run (None: nothing left to do)."""
    status: tuple[str, Any] = ("wait", None)
    if env.is_main:
        try:
            job = _prepare_root(root, wanted, resume=options.resume)
            status = ("done", None) if job is None else ("run", job.to_json())
        except AsymfuseError as exc:
            status = ("error", str(exc))
            _collective(env, options, "preparing the output folder", lambda: broadcast_object(status, env))
            raise
    status = _collective(env, options, "preparing the output folder", lambda: broadcast_object(status, env))
    kind, payload = status
    if kind == "error":
        raise ConfigError(f"rank 0: {payload}")
    return None if kind == "done" else ShardedJob.from_json(payload)


def _prepare_root(root: Path, wanted: ShardedJob, *, resume: bool) -> ShardedJob | None:
    """The job to run in ``root`` (``wanted``, or the one recorded there); None if its store is complete."""
    root.mkdir(parents=True, exist_ok=True)
    if not resume:
        remove_parts(root)
        remove_store_files(root)
        write_job(root, wanted)
        return wanted
    if (root / MANIFEST).is_file():
        with FeatureStore.open(root, verify="none") as store:
            check_same_job(root, store.meta, wanted.meta,
                           desc_dtype=(store.kind, store.desc_dtype, wanted.layout.desc_dtype))
            complete = len(store) == wanted.num_items
        if complete:
            remove_parts(root)  # a merge that stopped after writing the manifest
            return None
        if read_job(root) is None:
            raise ConfigError(f"{root} holds a partial store of a single-process run; continue it without torchrun "
                              "(plain `asymfuse extract`), or pass --no-resume to start again")
    job = read_job(root)
    if job is not None:
        check_same_job(root, job.meta, wanted.meta,
                       desc_dtype=(job.layout.kind, job.layout.desc_dtype, wanted.layout.desc_dtype))
        return job  # its shard_size wins, as when a single-process store is resumed
    if any(SHARD_FILE.match(p.name) for p in root.iterdir()):
        raise ConfigError(f"{root} holds shard files but no manifest or job record; use a new output folder "
                          "or pass --no-resume to overwrite it")
    write_job(root, wanted)
    return wanted


def _pending_shards(root: Path, job: ShardedJob, ids: list[str], env: DistEnv, options: ExtractOptions) -> list[int]:
    """Shards without a complete, checksummed part; each rank verifies its share of all shards."""
    every = plan_shards(job.num_items, job.shard_size, env.world_size)
    mine = [s for s in every.assignment[env.rank]
            if not part_is_complete(root, job, s, ids[slice(*every.bounds[s])])]
    gathered = _collective(env, options, "checking which shards are done", lambda: all_gather_objects(mine, env))
    return sorted(s for part in gathered for s in part)


def _extract_assigned(extractor: FeatureExtractor, paths: list[Any], ids: list[str], *, root: Path,
                      job: ShardedJob, plan: ShardPlan, env: DistEnv, options: ExtractOptions,
                      load_fn: Callable[[Any], Any]) -> None:
    """Extract this rank's shards, each into its part; batches never straddle two shards."""
    shards = plan.assignment[env.rank]
    batches: list[range] = []
    owner: list[int] = []
    for s in shards:
        start, stop = plan.bounds[s]
        for b in range(start, stop, options.batch_size):
            batches.append(range(b, min(b + options.batch_size, stop)))
            owner.append(s)
    bar = progress_bar(total=sum(len(b) for b in batches), initial=0, enabled=options.progress and env.is_main,
                       desc=f"extract {extractor.name} (rank {env.rank}/{env.world_size})")
    writer: FeatureStoreWriter | None = None
    done = 0
    try:
        loader = iter_collated(extractor, paths, batches, load_fn=load_fn, workers=options.workers)
        for rows, s, batch in zip(batches, owner, loader):
            if writer is None:
                writer = open_part_writer(root, job, s)
            writer.append(ids[rows.start:rows.stop], extract_checked(extractor, batch, len(rows)))
            bar.update(len(rows))
            if rows.stop == plan.bounds[s][1]:
                writer.close()
                writer, done = None, done + 1
                _test_fault(env, done)
    finally:
        if writer is not None:
            writer.abort()  # an unfinished part is redone on resume, never half-listed
        bar.close()


def _merge(root: Path, job: ShardedJob, plan: ShardPlan, env: DistEnv, options: ExtractOptions) -> None:
    """Rank 0 merges the parts; the others wait for its verdict (so no rank opens a half-made store)."""
    error = None
    if env.is_main:
        try:
            merge_parts(root, job, list(plan.bounds))
        except AsymfuseError as exc:
            error = str(exc)
            _collective(env, options, "the merge", lambda: broadcast_object(error, env))
            raise
    error = _collective(env, options, "the merge", lambda: broadcast_object(error, env))
    if error is not None:
        raise ConfigError(f"rank 0 could not merge the parts in {parts_dir(root)}: {error}")


def _test_fault(env: DistEnv, shards_done: int) -> None:
    """Fail on purpose as :data:`TEST_FAULT_ENV` asks (tests of kills, hangs and restarts)."""
    spec = os.environ.get(TEST_FAULT_ENV)
    if not spec:
        return
    fields = dict(part.split("=", 1) for part in spec.split(","))
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if (int(fields["rank"]) != env.rank or int(fields["after"]) != shards_done
            or int(fields.get("attempt", "0")) != attempt):
        return
    if fields["mode"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fields["mode"] == "hang":
        time.sleep(3600)
    raise RuntimeError(f"{TEST_FAULT_ENV}: rank {env.rank} fails after {shards_done} shards")
