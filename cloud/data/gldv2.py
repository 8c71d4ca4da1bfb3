"""Google Landmarks Dataset v2 (GLDv2): the retrieval benchmark and the training split.

Files (names as published at https://github.com/cvdfoundation/google-landmark)::

    root/index.csv                        id
    root/test.csv                         id
    root/retrieval_solution_v2.1.csv      id,images,Usage   (images: space-separated index ids;
                                                             Usage: Public, Private or Ignored)
    root/train.csv                        id,url,landmark_id
    root/train_clean.csv                  landmark_id,images   (also accepted by load_gldv2_train)

Images of split ``S`` (``index``, ``test`` or ``train``) are found in the first layout that
holds the split's first id:

1. ``root/S/<a>/<b>/<c>/<id>.jpg`` with a, b, c the first three characters of the id (official);
2. ``root/S/<id>.jpg`` (flat);
3. ``root/<id>.jpg`` (flat, all splits in one folder).

Only that first id is checked on disk (GLDv2 has millions of images); a missing image fails
when it is read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from asymfuse.cloud.data.records import (
    RetrievalDataset,
    TrainingSet,
    read_csv,
)
from asymfuse.edge.errors import ConfigError, CorruptDataError

GLDV2_HINT = ("download the GLDv2 metadata, ground truth and image tars listed at "
              "https://github.com/cvdfoundation/google-landmark")
USAGES = ("Public", "Private")
_ALL_USAGES = ("Public", "Private", "Ignored")


def gldv2_image_paths(root: Path, split: str, ids: Sequence[str]) -> list[Path]:
    """Paths of ``ids`` in split ``split``, in the first layout (see module docstring) that has ``ids[0]``.

    Raises:
        CorruptDataError: ``ids[0]`` is in none of the layouts.
    """
    if not ids:
        return []
    first = ids[0]
    layouts = (
        (root / split, True),
        (root / split, False),
        (root, False),
    )
    for folder, nested in layouts:
        if _path(folder, first, nested).is_file():
            return [_path(folder, v, nested) for v in ids]
    tried = ", ".join(repr(str(_path(f, first, n))) for f, n in layouts)
    raise CorruptDataError(f"GLDv2 {split} image {first!r} was not found (tried {tried}); extract the "
                           f"{split} image tars under {str(root / split)!r}: {GLDV2_HINT}")


def _path(folder: Path, image_id: str, nested: bool) -> Path:
    if nested:
        return folder / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
    return folder / f"{image_id}.jpg"


def _ids(rows: list[dict[str, str]], path: Path) -> list[str]:
    ids = [r["id"].strip() for r in rows]
    if any(len(v) < 3 for v in ids):
        raise CorruptDataError(f"{str(path)!r} has an image id shorter than 3 characters; GLDv2 ids "
                               f"are 16 hex digits: {GLDV2_HINT}")
    return ids


def load_gldv2_retrieval(
    root: str | os.PathLike[str],
    *,
    usages: Sequence[str] = USAGES,
    index_csv: str = "index.csv",
    test_csv: str = "test.csv",
    solution_csv: str = "retrieval_solution_v2.1.csv",
) -> RetrievalDataset:
    """Load the GLDv2 retrieval benchmark (evaluate with mAP@100).

    Args:
        root: folder holding the CSV files and the ``index/`` and ``test/`` image folders.
        usages: which solution rows become queries: any of ``"Public"``, ``"Private"``
            (default both, as papers report; Kaggle scored them separately). ``Ignored`` rows
            have no ground truth and are never queries.
        index_csv, test_csv, solution_csv: file names under ``root`` (or absolute paths).

    Returns:
        A :class:`RetrievalDataset` with ``protocol="gldv2"``: the gallery is ``index.csv`` in file
        order, the queries are the selected solution rows in file order, and ``gnd[i]["ok"]`` the
        gallery indices of their ``images`` (``junk`` empty).

    Raises:
        ConfigError: ``usages`` is empty or names something other than Public/Private.
        CorruptDataError: a file is missing or malformed, a query is not in ``test.csv``, or a
            solution image is not in ``index.csv``.
    """
    root = Path(root)
    usages = _check_usages(usages)
    index_path, test_path, sol_path = root / index_csv, root / test_csv, root / solution_csv
    gallery_ids = _ids(read_csv(index_path, required=("id",), hint=GLDV2_HINT), index_path)
    test_ids = set(_ids(read_csv(test_path, required=("id",), hint=GLDV2_HINT), test_path))
    position = {v: i for i, v in enumerate(gallery_ids)}
    if len(position) != len(gallery_ids):
        raise CorruptDataError(f"{str(index_path)!r} lists an id twice; re-download it: {GLDV2_HINT}")
    query_ids, gnd = [], []
    for row in read_csv(sol_path, required=("id", "images", "Usage"), hint=GLDV2_HINT):
        qid, usage = row["id"].strip(), row["Usage"].strip()
        if usage not in _ALL_USAGES:
            raise CorruptDataError(f"{str(sol_path)!r}: query {qid!r} has Usage {usage!r}; expected "
                                   f"one of {list(_ALL_USAGES)}")
        if usage not in usages:
            continue
        if qid not in test_ids:
            raise CorruptDataError(f"{str(sol_path)!r}: query {qid!r} is not in {str(test_path)!r}; "
                                   f"the two files are from different releases: {GLDV2_HINT}")
        ok = []
        for image_id in (row["images"] or "").split():
            if image_id not in position:
                raise CorruptDataError(f"{str(sol_path)!r}: query {qid!r} lists index image "
                                       f"{image_id!r}, which is not in {str(index_path)!r}: {GLDV2_HINT}")
            ok.append(position[image_id])
        query_ids.append(qid)
        gnd.append({"ok": np.asarray(ok, dtype=np.int64), "junk": np.empty(0, dtype=np.int64)})
    if not query_ids:
        raise CorruptDataError(f"{str(sol_path)!r} has no query with Usage in {list(usages)}")
    return RetrievalDataset(
        name="gldv2", root=root, protocol="gldv2",
        gallery_paths=tuple(gldv2_image_paths(root, "index", gallery_ids)), gallery_ids=tuple(gallery_ids),
        query_paths=tuple(gldv2_image_paths(root, "test", query_ids)), query_ids=tuple(query_ids),
        gnd=tuple(gnd),
    )


def _check_usages(usages: Sequence[str]) -> tuple[str, ...]:
    if isinstance(usages, str):
        usages = (usages,)
    out = tuple(dict.fromkeys(usages))
    if not out or any(u not in USAGES for u in out):
        raise ConfigError(f"usages={list(usages)!r} is invalid; pick a non-empty subset of {list(USAGES)} "
                          "(Ignored queries have no ground truth)")
    return out


def load_gldv2_train(root: str | os.PathLike[str], *, csv: str = "train.csv") -> TrainingSet:
    """Load a GLDv2 training split as labelled images.

    Args:
        root: folder holding ``csv`` and the ``train/`` image folder.
        csv: ``train.csv`` (``id,url,landmark_id``, one row per image) or ``train_clean.csv``
            (``landmark_id,images``, space-separated image ids per landmark); the header decides.

    Returns:
        A :class:`TrainingSet` named ``"gldv2-train"``, images in file order; labels are the
        landmark ids sorted numerically and renumbered 0..C-1, ``class_names`` the landmark ids
        as strings.

    Raises:
        CorruptDataError: the CSV is missing or malformed, or a landmark id is not an integer.
    """
    root = Path(root)
    path = root / csv
    rows = read_csv(path, required=("landmark_id",), hint=GLDV2_HINT)
    if rows and "id" in rows[0]:
        pairs = [(r["id"].strip(), r["landmark_id"].strip()) for r in rows]
    elif rows and "images" in rows[0]:
        pairs = [(v, r["landmark_id"].strip()) for r in rows for v in (r["images"] or "").split()]
    else:
        raise CorruptDataError(f"{str(path)!r} must have columns id,url,landmark_id (train.csv) or "
                               f"landmark_id,images (train_clean.csv), and at least one row: {GLDV2_HINT}")
    try:
        landmarks = np.array([int(lm) for _, lm in pairs], dtype=np.int64)
    except ValueError as exc:
        raise CorruptDataError(f"{str(path)!r} has a non-integer landmark_id ({exc}): {GLDV2_HINT}") from exc
    ids = [v for v, _ in pairs]
    if any(len(v) < 3 for v in ids):
        raise CorruptDataError(f"{str(path)!r} has an image id shorter than 3 characters: {GLDV2_HINT}")
    classes, labels = np.unique(landmarks, return_inverse=True)
    return TrainingSet(
        name="gldv2-train", root=root, paths=tuple(gldv2_image_paths(root, "train", ids)),
        labels=labels.astype(np.int64), class_names=tuple(str(c) for c in classes),
    )
