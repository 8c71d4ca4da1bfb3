"""Images stored as one sub-folder per class, ``root/<class>/<image>``: a training set, or a retrieval set."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from asymfuse.cloud.data.records import IMAGE_EXTENSIONS, RetrievalDataset, TrainingSet, require_dir
from asymfuse.edge.errors import CorruptDataError

FOLDER_HINT = "arrange the images as <root>/<class name>/<image>.jpg"


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    name: str | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> TrainingSet:
    """Load ``root/<class>/...`` as a labelled training set.

    Classes are the non-hidden sub-folders of ``root`` sorted by name, labelled ``0..C-1`` in that
    order. Images are files with one of ``extensions`` (case-insensitive) anywhere below the
    class folder, sorted by relative path; hidden files and folders are skipped. A class with
    fewer than two images (even none) is kept so labels stay stable; find such classes with
    :meth:`TrainingSet.classes_with_fewer_than`.

    Args:
        root: the folder of class folders.
        name: dataset name; defaults to the name of ``root``.
        extensions: accepted file suffixes, with the dot.

    Returns:
        A :class:`TrainingSet`.

    Raises:
        CorruptDataError: ``root`` is missing, has no class folder, or holds no image at all.
    """
    root = Path(root)
    require_dir(root, what="image folder", hint=FOLDER_HINT)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CorruptDataError(f"{str(root)!r} has no class sub-folders; {FOLDER_HINT}")
    exts = tuple(e.lower() for e in extensions)
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        found = _walk_images(root / cls, exts)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise CorruptDataError(f"no images with suffix {list(exts)} under {str(root)!r}; {FOLDER_HINT}")
    return TrainingSet(
        name=root.name if name is None else name, root=root, paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int64), class_names=tuple(classes),
    )


def _walk_images(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fname in filenames:
            if not fname.startswith(".") and os.path.splitext(fname)[1].lower() in exts:
                found.append(Path(dirpath) / fname)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def load_folder_retrieval(root: str | os.PathLike[str], *, name: str | None = None,
                          extensions: Sequence[str] = IMAGE_EXTENSIONS) -> RetrievalDataset:
    """A retrieval dataset from the same ``root/<class>/<image>`` layout (a user's own photos).

    Protocol (the Holidays one, ``protocol="holidays"``, mAP): the gallery is every image; the
    query of each class with at least two images is its first image (by relative path); its
    positives are the other images of the class, and its own gallery entry is junk (removed from
    its ranking). Ids are paths relative to ``root``.

    Raises:
        CorruptDataError: see :func:`load_image_folder`, or no class has two images.
    """
    ts = load_image_folder(root, name=name, extensions=extensions)
    ids = tuple(p.relative_to(ts.root).as_posix() for p in ts.paths)
    query_idx, gnd = [], []
    for label in range(len(ts.class_names)):
        members = np.flatnonzero(ts.labels == label)
        if len(members) < 2:
            continue
        q = int(members[0])
        query_idx.append(q)
        gnd.append({"ok": members[1:].astype(np.int64), "junk": np.array([q], dtype=np.int64)})
    if not query_idx:
        raise CorruptDataError(f"no class folder under {str(ts.root)!r} holds two images; a query needs at least "
                               f"one other image of its class; {FOLDER_HINT}")
    return RetrievalDataset(name=ts.name, root=ts.root, protocol="holidays", gallery_paths=ts.paths, gallery_ids=ids,
                            query_paths=tuple(ts.paths[q] for q in query_idx),
                            query_ids=tuple(ids[q] for q in query_idx), gnd=tuple(gnd))
