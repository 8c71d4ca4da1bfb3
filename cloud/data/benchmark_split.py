"""Render, label and write one split of the embedded benchmark (see :mod:`.benchmark`).

Every image is written as soon as it is rendered; only its metadata (:class:`Shot`) is kept.
Randomness comes from ``numpy`` generators seeded by ``(seed, purpose, ids...)``, so an image
does not depend on the order anything else was drawn in.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import cv2
import numpy as np

from asymfuse.cloud.data.benchmark_config import BenchmarkConfig
from asymfuse.cloud.data.photos import Instance, Partition, Region
from asymfuse.cloud.data.homography import visible_fraction
from asymfuse.cloud.data.views import (JUNK_VISIBILITY, SourcePhoto, ViewParams, frame_size, occluder_box,
                                       render_view, sample_view_params, view_homography, view_label)
from asymfuse.edge.errors import CorruptDataError


TRAIN_CSV_NAME = "train.csv"
VIEWS_META_NAME = "views.json"
MIN_OWN_VISIBILITY = 0.05    # gallery views are redrawn (milder) until this much of the instance shows
MIN_QUERY_VISIBILITY = 0.95  # queries show (almost) all of their instance


def write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync ``data`` (callers write into a temporary folder renamed as a whole)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class Shot:
    """Metadata of one written image; ``visibility`` maps the instance regions of its photo."""

    name: str
    kind: str  # "query", "view" or "distractor"
    photo: str
    instance: int | None
    params: ViewParams
    visibility: dict[str, float]
    bbx: tuple[float, float, float, float] | None = None

    def to_dict(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "photo": self.photo, "instance": self.instance,
               "visibility": self.visibility, "params": self.params.to_dict()}
        if self.bbx is not None:
            out["bbx"] = list(self.bbx)
        return out


@dataclass(frozen=True)
class SplitContext:
    """What rendering one split needs; ``index`` is the split's position in ``SPLITS``."""

    split: str
    index: int
    dataset: str  # revisitop dataset name: the gnd file is gnd_<dataset>.pkl
    config: BenchmarkConfig
    sources: dict[str, SourcePhoto]
    siblings: dict[str, tuple[Instance, ...]]  # photo -> its instances
    pool: tuple[np.ndarray, ...]                # occluder patches (distractor regions)
    jpg_dir: Path


def seeded_rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator for ``(seed, purpose, ids...)``."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def make_context(tmp: Path, split: str, index: int, part: Partition, sources: dict[str, SourcePhoto],
                 config: BenchmarkConfig, *, dataset: str) -> SplitContext:
    """Prepare ``<tmp>/<split>/jpg`` and the per-split rendering state (occluder pool, siblings)."""
    siblings: dict[str, list[Instance]] = {}
    for inst in part.instances:
        if inst.split == split:
            siblings.setdefault(inst.region.photo, []).append(inst)
    jpg_dir = tmp / split / "jpg"
    jpg_dir.mkdir(parents=True)
    return SplitContext(split=split, index=index, dataset=dataset, config=config, sources=sources,
                        siblings={k: tuple(v) for k, v in siblings.items()},
                        pool=tuple(_thumbnail(sources[r.photo], r) for r in part.distractors[split]),
                        jpg_dir=jpg_dir)


def _thumbnail(source: SourcePhoto, region: Region, max_side: int = 256) -> np.ndarray:
    x0, y0, x1, y1 = region.box
    level = 0
    while level + 1 < len(source.levels) and max(x1 - x0, y1 - y0) / 2 ** (level + 1) >= max_side:
        level += 1
    f = 2**level
    return np.ascontiguousarray(source.levels[level][y0 // f:max(y1 // f, y0 // f + 1),
                                                     x0 // f:max(x1 // f, x0 // f + 1)])


def render_split(ctx: SplitContext, part: Partition) -> tuple[list[Shot], list[Shot]]:
    """Render and write every image of a split; the gallery comes back in its seeded order."""
    cfg = ctx.config
    queries, gallery = [], []
    for inst in (i for i in part.instances if i.split == ctx.split):
        box, size = inst.region.box, frame_size(inst.region.box, max_side=cfg.image_max_side)
        rng = seeded_rng(cfg.seed, 4, inst.id)
        queries.append(_shoot(ctx, f"inst{inst.id:03d}_query", "query", inst.region,
                              query_params(rng, box, size), inst.id))
        rng = seeded_rng(cfg.seed, 3, inst.id)
        for k in range(cfg.n_views):
            severity = (k + float(rng.uniform())) / cfg.n_views
            gallery.append(_shoot(ctx, f"inst{inst.id:03d}_v{k:02d}", "view", inst.region,
                                  gallery_view_params(rng, box, size, severity), inst.id))
    distractors = part.distractors[ctx.split]
    for j in range(cfg.distractors_per_split if distractors else 0):
        rng = seeded_rng(cfg.seed, 5, ctx.index, j)
        params = sample_view_params(rng, severity=float(rng.uniform(0.0, 0.6)), occlusion=False)
        params = replace(params, zoom=float(rng.uniform(1.25, 1.8)), shift=(0.0, 0.0))
        gallery.append(_shoot(ctx, f"distractor_{ctx.split}_{j:03d}", "distractor",
                              distractors[j % len(distractors)], params, None))
    order = seeded_rng(cfg.seed, 6, ctx.index).permutation(len(gallery))
    return queries, [gallery[i] for i in order]


def _own_visibility(box: tuple[int, int, int, int], params: ViewParams, size: tuple[int, int]) -> float:
    hmat = view_homography(box, params, size)
    return visible_fraction(box, hmat, size, occluder=occluder_box(params, size))


def query_params(rng: np.random.Generator, box: tuple[int, int, int, int], size: tuple[int, int]) -> ViewParams:
    """A mild-to-moderate view with context around the instance, which stays (almost) whole."""
    for _ in range(20):
        params = sample_view_params(rng, severity=float(rng.uniform(0.1, 0.3)), occlusion=False)
        params = replace(params, zoom=float(rng.uniform(0.55, 0.8)),
                         shift=(params.shift[0] * 0.2, params.shift[1] * 0.2))
        if _own_visibility(box, params, size) >= MIN_QUERY_VISIBILITY:
            return params
    return replace(params, rotation_deg=0.0, perspective=0.0, shift=(0.0, 0.0), zoom=0.7)


def gallery_view_params(rng: np.random.Generator, box: tuple[int, int, int, int], size: tuple[int, int],
                        severity: float) -> ViewParams:
    """A gallery view near ``severity``; redrawn milder until MIN_OWN_VISIBILITY of the instance shows."""
    for _ in range(10):
        params = sample_view_params(rng, severity=min(severity, 1.0))
        if _own_visibility(box, params, size) >= MIN_OWN_VISIBILITY:
            return params
        severity *= 0.8
    return sample_view_params(rng, severity=0.0)


def _shoot(ctx: SplitContext, name: str, kind: str, region: Region, params: ViewParams,
           instance: int | None) -> Shot:
    view = render_view(ctx.sources[region.photo], region.box, params,
                       max_side=ctx.config.image_max_side, occluder_pool=ctx.pool)
    size = (view.image.shape[1], view.image.shape[0])
    visibility = {s.region.key: round(visible_fraction(s.region.box, view.homography, size,
                                                       occluder=view.occluder), 6)
                  for s in ctx.siblings.get(region.photo, ())}
    write_bytes(ctx.jpg_dir / f"{name}.jpg", encode_jpeg(view.image, ctx.config.jpeg_quality))
    return Shot(name=name, kind=kind, photo=region.photo, instance=instance, params=params,
                visibility=visibility, bbx=view.bbx if kind == "query" else None)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an ``(H, W, 3)`` uint8 RGB image (OpenCV's libjpeg: deterministic)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CorruptDataError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    return buf.tobytes()


def ground_truth(queries: Sequence[Shot], gallery: Sequence[Shot], key_of: dict[int, str]) -> list[dict]:
    """revisitop ``gnd``: per query, gallery indices by :func:`view_label` of the query's region."""
    gnd = []
    for q in queries:
        key = key_of[cast(int, q.instance)]
        entry: dict = {"bbx": [float(v) for v in cast(tuple, q.bbx)], "easy": [], "hard": [], "junk": []}
        for j, g in enumerate(gallery):
            label = view_label(g.visibility[key], g.params) if key in g.visibility else None
            if label is not None:
                entry[label].append(int(j))
        gnd.append(entry)
    return gnd


def write_split(ctx: SplitContext, part: Partition, queries: list[Shot], gallery: list[Shot]) -> dict:
    """Write the split's gnd pickle, views.json (and train.csv); returns its manifest entry."""
    key_of = {i.id: i.region.key for i in part.instances}
    gnd = ground_truth(queries, gallery, key_of)
    name = ctx.dataset
    root = ctx.jpg_dir.parent
    write_gnd(root / f"gnd_{name}.pkl", [g.name for g in gallery], [q.name for q in queries], gnd)
    views = {"queries": [q.to_dict() for q in queries], "gallery": [g.to_dict() for g in gallery]}
    write_bytes(root / VIEWS_META_NAME, json.dumps(views, sort_keys=True).encode())
    if ctx.split == "train":
        _write_train_csv(root / TRAIN_CSV_NAME, queries, gallery, key_of)
    return {"dataset": name, "dir": ctx.split, "gnd": f"{ctx.split}/gnd_{name}.pkl",
            "n_instances": len(queries), "n_queries": len(queries), "n_gallery": len(gallery),
            "n_distractors": sum(g.kind == "distractor" for g in gallery),
            "photos": sorted(n for n, s in part.photo_split.items() if s == ctx.split),
            "labels": {k: sum(len(e[k]) for e in gnd) for k in ("easy", "hard", "junk")}}


def write_gnd(path: Path, imlist: list[str], qimlist: list[str], gnd: list[dict]) -> None:
    """Pickle the revisitop dict ``{"imlist", "qimlist", "gnd"}`` (protocol 4)."""
    write_bytes(path, pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, protocol=4))


def _write_train_csv(path: Path, queries: list[Shot], gallery: list[Shot], key_of: dict[int, str]) -> None:
    rows = [(q.name, cast(int, q.instance)) for q in queries]
    rows += [(g.name, cast(int, g.instance)) for g in gallery
             if g.kind == "view" and g.visibility[key_of[cast(int, g.instance)]] >= JUNK_VISIBILITY]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "url", "landmark_id"])
    writer.writerows((name, "", int(inst)) for name, inst in sorted(rows))
    write_bytes(path, buf.getvalue().encode())
