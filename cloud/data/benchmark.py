"""Build the embedded real-photo benchmark, the project's default dataset, from a seed.

Photos (:mod:`.photos`) are cut into instance regions; whole photos go to one split, so the
train / val / test splits share neither instances nor pixels. In each split some regions are kept
as distractor regions (images of no instance; also the source of occluder patches). Every instance
gets one query (a mild view with context, ``bbx`` = the instance in it) and ``n_views`` gallery
views spread over the difficulty range (:mod:`.views`); every gallery image is labelled
easy / hard / junk for *every* query whose region it shows, from that region's measured
visibility, so views that catch a neighbouring instance are labelled too.

Layout under ``out_dir`` (revisitop format; ``<part>`` is a split or ``multiview``)::

    benchmark.json                           config, seed, version, counts, photos, instance boxes
    <part>/jpg/<image name>.jpg              JPEG quality ``config.jpeg_quality``
    <split>/gnd_<name>.pkl                   {"imlist", "qimlist", "gnd": [{"bbx", "easy", "hard", "junk"}]}
    multiview/gnd_<name>-multiview.pkl       the same format
    <split>/views.json                       per image: view parameters and the visibility of each
                                             instance region of its photo ("<photo>#<region index>")
    train/train.csv                          GLDv2-style ``id,url,landmark_id`` (url empty)

``imlist``/``qimlist`` hold names without ``.jpg``; gnd indices are 0-based into ``imlist``;
``bbx`` is ``[x1, y1, x2, y2]`` floats in pixel-edge coordinates of the query image. train.csv
lists the train queries and the train views that show at least ``JUNK_VISIBILITY`` of their
instance (barely visible views and distractors carry no trustworthy label).

The build is atomic: everything is written into a temporary sibling folder that is renamed to
``out_dir`` at the end; an existing ``out_dir`` built from the same config, version and photos is
reused as is.

Reading it back: ``load_revisitop(paths.root, name=paths.name)`` for ``paths = bench.split("test")``
(:mod:`.revisitop`), and the train labels with
``load_gldv2_train(bench.split("train").jpg_dir, csv="../train.csv")`` (:mod:`.gldv2`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asymfuse.cloud.data.benchmark_config import BenchmarkConfig
from asymfuse.cloud.data.benchmark_split import (TRAIN_CSV_NAME, VIEWS_META_NAME, encode_jpeg, make_context,
                                                 render_split, write_bytes, write_gnd, write_split)
from asymfuse.cloud.data.multiview import build_multiview
from asymfuse.cloud.data.photos import SPLITS, Partition, load_photo_source, partition_photos
from asymfuse.cloud.data.views import SourcePhoto
from asymfuse.edge.errors import ConfigError, CorruptDataError, unknown_name
from asymfuse.edge.fileio import fsync_dir

LOG = logging.getLogger(__name__)

BENCHMARK_VERSION = 1
MULTIVIEW = "multiview"
MANIFEST_NAME = "benchmark.json"


@dataclass(frozen=True)
class DatasetPaths:
    """One revisitop-format dataset: ``gnd_path`` is ``<root>/gnd_<name>.pkl``, images in ``jpg_dir``."""

    name: str
    root: Path
    jpg_dir: Path
    gnd_path: Path
    views_path: Path


@dataclass(frozen=True)
class Benchmark:
    """A built benchmark on disk.

    ``splits`` maps ``"train"``, ``"val"``, ``"test"`` to their datasets; ``multiview`` is the
    genuine multi-view set (None when not built); ``reused`` says the folder already existed.
    """

    root: Path
    config: BenchmarkConfig
    splits: dict[str, DatasetPaths]
    multiview: DatasetPaths | None
    train_csv: Path
    manifest_path: Path
    reused: bool = False

    def split(self, name: str) -> DatasetPaths:
        """The dataset of split ``name``, or ``"multiview"``.

        Raises:
            UnknownNameError: no such split in this benchmark.
        """
        parts = dict(self.splits)
        if self.multiview is not None:
            parts[MULTIVIEW] = self.multiview
        if name not in parts:
            raise unknown_name("benchmark split", name, list(parts))
        return parts[name]


def dataset_name(name: str, part: str) -> str:
    """The revisitop dataset name of a part: ``name`` for a split, ``"<name>-multiview"`` otherwise.

    The part's ground truth is ``<out>/<part>/gnd_<dataset name>.pkl``.
    """
    return name if part in SPLITS else f"{name}-{part}"


def build_benchmark(out_dir: str | os.PathLike[str], *, config: BenchmarkConfig | None = None,
                    overwrite: bool = False) -> Benchmark:
    """Build the benchmark into ``out_dir`` (atomically), or reuse a matching existing build.

    Args:
        out_dir: the benchmark folder; its parent is created if needed.
        config: what to build (default :class:`BenchmarkConfig()`).
        overwrite: replace an existing ``out_dir`` built from another config or photos.

    Returns:
        The paths of the build; ``reused`` is True when ``out_dir`` already matched.

    Raises:
        ConfigError: ``out_dir`` holds a build of another config/version/photos and ``overwrite``
            is False, or the config selects unknown photos or too few of them.
        CorruptDataError: ``out_dir`` exists but is not a benchmark, or a user photo is unreadable.
    """
    config = BenchmarkConfig() if config is None else config
    out = Path(out_dir)
    photos = _select_photos(load_photo_source(config.source), config.photos)
    fingerprint = _fingerprint(photos)
    if _exists(out):
        if _matches(out, config, fingerprint):
            LOG.info("reusing benchmark at %s", out)
            return open_benchmark(out, reused=True)
        if not overwrite:
            raise ConfigError(f"{str(out)!r} holds a benchmark of another config, version or photo "
                              "set; pass overwrite=True, delete it, or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        start = time.perf_counter()
        _build_into(tmp, photos=photos, fingerprint=fingerprint, config=config)
        _fsync_dir(tmp)
        if not _publish(tmp, out, overwrite=overwrite) and not _matches(out, config, fingerprint):
            raise ConfigError(f"another process wrote a different benchmark to {str(out)!r} "
                              "meanwhile; choose another folder")
        LOG.info("built benchmark %s in %.1f s", out, time.perf_counter() - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_benchmark(out)


def open_benchmark(root: str | os.PathLike[str], *, reused: bool = False) -> Benchmark:
    """Describe an existing build from its ``benchmark.json``.

    Raises:
        CorruptDataError: ``root`` has no readable manifest of a known version.
    """
    root = Path(root)
    manifest = _read_manifest(root)
    try:
        config = BenchmarkConfig.from_dict(manifest["config"])
        splits = {s: _paths(root, s, manifest["splits"][s]["dataset"]) for s in SPLITS}
        mv = manifest.get("multiview")
        multiview = None if mv is None else _paths(root, MULTIVIEW, mv["dataset"])
        train_csv = root / manifest["train_csv"]
    except (KeyError, TypeError, ConfigError) as exc:
        raise CorruptDataError(f"{str(root / MANIFEST_NAME)!r} is malformed ({exc}); delete "
                               f"{str(root)!r} and rebuild it") from exc
    return Benchmark(root=root, config=config, splits=splits, multiview=multiview,
                     train_csv=train_csv, manifest_path=root / MANIFEST_NAME, reused=reused)


def _paths(root: Path, part: str, name: str) -> DatasetPaths:
    folder = root / part
    return DatasetPaths(name=name, root=folder, jpg_dir=folder / "jpg",
                        gnd_path=folder / f"gnd_{name}.pkl", views_path=folder / VIEWS_META_NAME)


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptDataError(f"{str(root)!r} is not an asymfuse benchmark ({path.name} is missing "
                               f"or unreadable: {exc}); delete it or choose another folder") from exc
    if not isinstance(manifest, dict) or manifest.get("version") != BENCHMARK_VERSION:
        version = manifest.get("version") if isinstance(manifest, dict) else None
        raise CorruptDataError(f"{str(path)!r} has version {version!r}, this code reads "
                               f"{BENCHMARK_VERSION}; rebuild with build_benchmark(overwrite=True)")
    return manifest


def _exists(out: Path) -> bool:
    return out.exists() and not (out.is_dir() and not any(out.iterdir()))


def _matches(out: Path, config: BenchmarkConfig, fingerprint: str) -> bool:
    try:
        manifest = _read_manifest(out)
    except CorruptDataError:
        if (out / MANIFEST_NAME).exists():
            return False  # an older version: rebuild with overwrite
        raise
    return manifest.get("config") == config.to_dict() and manifest.get("source_fingerprint") == fingerprint


def _publish(tmp: Path, out: Path, *, overwrite: bool) -> bool:
    """Rename ``tmp`` to ``out``; False when another process published ``out`` first."""
    if _exists(out) and overwrite:
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "bench")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return True
    try:
        os.replace(tmp, out)  # POSIX: fails when out is a non-empty folder
    except OSError:
        if _exists(out):
            return False
        raise
    return True


def _select_photos(photos: list[tuple[str, np.ndarray]], names: tuple[str, ...] | None) -> list:
    if names is None:
        return photos
    available = {n: im for n, im in photos}
    for n in names:
        if n not in available:
            raise unknown_name("photo", n, list(available))
    wanted = set(names)
    return [(n, im) for n, im in photos if n in wanted]


def _fingerprint(photos: list[tuple[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for name, image in photos:
        digest.update(f"{name}|{image.shape}|".encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()

def _fsync_dir(folder: Path) -> None:
    for sub in [p for p in folder.rglob("*") if p.is_dir()] + [folder]:
        fsync_dir(sub)

def _build_into(tmp: Path, *, photos: list, fingerprint: str, config: BenchmarkConfig) -> None:
    part = partition_photos([(n, im.shape) for n, im in photos], seed=config.seed,
                            fractions=config.split_fractions,
                            distractor_fraction=config.distractor_fraction,
                            tiling=(config.tile_side, config.min_region_side, config.max_grid))
    sources = {n: SourcePhoto.from_image(n, im) for n, im in photos}
    queries_of: dict[int, str] = {}
    split_meta = {}
    for index, split in enumerate(SPLITS):
        ctx = make_context(tmp, split, index, part, sources, config,
                           dataset=dataset_name(config.name, split))
        queries, gallery = render_split(ctx, part)
        queries_of.update({q.instance: q.name for q in queries})
        split_meta[split] = write_split(ctx, part, queries, gallery)
    multiview = None
    if config.include_multiview:
        negatives = [sources[n].image for n, _ in photos if part.photo_split[n] == "test"]
        multiview = _write_multiview(tmp, config, negatives)
    manifest = {
        "format": "asymfuse-benchmark", "version": BENCHMARK_VERSION, "seed": config.seed,
        "config": config.to_dict(), "source_fingerprint": fingerprint,
        "photos": _photo_records(photos, part),
        "instances": [{"id": i.id, "photo": i.region.photo, "region": i.region.index,
                       "box": list(i.region.box), "split": i.split, "query": queries_of[i.id]}
                      for i in part.instances],
        "splits": split_meta, "train_csv": f"train/{TRAIN_CSV_NAME}", "multiview": multiview,
        "n_images": sum(m["n_gallery"] + m["n_queries"] for m in split_meta.values())
        + (0 if multiview is None else multiview["n_gallery"] + multiview["n_queries"]),
    }
    write_bytes(tmp / MANIFEST_NAME, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())

def _write_multiview(tmp: Path, config: BenchmarkConfig, negatives: list[np.ndarray]) -> dict:
    mv = build_multiview(seed=config.seed, max_side=config.image_max_side, negatives=negatives,
                         n_distractors=config.multiview_distractors if negatives else 0)
    name = dataset_name(config.name, MULTIVIEW)
    root = tmp / MULTIVIEW
    (root / "jpg").mkdir(parents=True)
    for image_name, image in [*mv.queries, *mv.gallery]:
        write_bytes(root / "jpg" / f"{image_name}.jpg", encode_jpeg(image, config.jpeg_quality))
    write_gnd(root / f"gnd_{name}.pkl", [n for n, _ in mv.gallery], [n for n, _ in mv.queries], mv.gnd)
    write_bytes(root / VIEWS_META_NAME, json.dumps({"pairs": mv.pairs}, sort_keys=True).encode())
    return {"dataset": name, "dir": MULTIVIEW, "gnd": f"{MULTIVIEW}/gnd_{name}.pkl", "pairs": mv.pairs,
            "n_queries": len(mv.queries), "n_gallery": len(mv.gallery),
            "labels": {k: sum(len(e[k]) for e in mv.gnd) for k in ("easy", "hard", "junk")}}


def _photo_records(photos: list, part: Partition) -> list[dict]:
    roles = {i.region.key: i.id for i in part.instances}
    return [{"name": n, "height": int(im.shape[0]), "width": int(im.shape[1]),
             "split": part.photo_split[n],
             "regions": [{"index": r.index, "box": list(r.box),
                          "role": "instance" if r.key in roles else "distractor",
                          "instance": roles.get(r.key)} for r in part.regions[n]]}
            for n, im in photos]
