"""Revisited Oxford / Paris (revisitop) and every benchmark stored in the same format.

Layout of ``root`` (as the revisitop download script leaves it)::

    root/
      gnd_<name>.pkl     dict: imlist, qimlist, gnd (one dict per query: bbx, easy, hard, junk)
      jpg/<image>.jpg    one file per name in imlist and qimlist

The loader is generic over ``<name>``, so ``roxford5k``, ``rparis6k`` and asymfuse's own
embedded benchmarks (``gnd_asymfuse-skimage.pkl`` and so on) load the same way.

Optional revisitop +1M distractors: a folder holding ``revisitop1m.txt`` (one image path per
line, relative to the folder's ``jpg/`` subfolder, extension included) and that ``jpg/``
subfolder. Distractors are appended after the dataset's own gallery, so the ground-truth
indices stay valid.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asymfuse.cloud.data.records import (
    RetrievalDataset,
    check_files_exist,
    require_dir,
    require_file,
)
from asymfuse.edge.errors import ConfigError, CorruptDataError

REVISITOP_HINT = ("download roxford5k/rparis6k with python/download.py of "
                  "https://github.com/filipradenovic/revisitop (ground truth from "
                  "http://cmp.felk.cvut.cz/revisitop/data/datasets/<name>/gnd_<name>.pkl), "
                  "or write an asymfuse benchmark with asymfuse.cloud.data.benchmark")
DISTRACTOR_HINT = ("download the revisitop1m list and images with python/download.py of "
                   "https://github.com/filipradenovic/revisitop, or pass distractors_root=None")
DISTRACTOR_LIST = "revisitop1m.txt"


def load_revisitop(
    root: str | os.PathLike[str],
    *,
    name: str | None = None,
    distractors_root: str | os.PathLike[str] | None = None,
    distractor_list: str = DISTRACTOR_LIST,
    check_files: bool = True,
) -> RetrievalDataset:
    """Load a revisitop-format benchmark.

    Args:
        root: folder holding ``gnd_<name>.pkl`` and ``jpg/``.
        name: dataset name; defaults to the name of ``root`` (``.../roxford5k`` -> ``roxford5k``).
        distractors_root: optional folder with ``distractor_list`` and ``jpg/`` (revisitop +1M).
        distractor_list: file name of the distractor list inside ``distractors_root``.
        check_files: verify that every gallery and query image of the dataset itself exists
            (distractor images are not checked one by one: a million ``stat`` calls is slow;
            a missing one fails when it is read).

    Returns:
        A :class:`RetrievalDataset` with ``protocol="revisitop"``: gallery paths
        ``root/jpg/<imlist[i]>.jpg`` followed by the distractors, query paths
        ``root/jpg/<qimlist[i]>.jpg``, ``query_bbx`` from the pickle, and ``gnd`` with
        ``easy``/``hard``/``junk`` int64 arrays.

    Raises:
        CorruptDataError: the pickle, ``jpg/``, an image or the distractor list is missing, or
            the pickle does not have the revisitop layout.
        ConfigError: ``name`` is empty.
    """
    root = Path(root)
    name = root.name if name is None else name
    if not isinstance(name, str) or not name:
        raise ConfigError("name must be a non-empty dataset name such as 'roxford5k'")
    cfg = _read_gnd_pickle(root / f"gnd_{name}.pkl")
    images = require_dir(root / "jpg", what=f"{name} image folder", hint=REVISITOP_HINT)
    gallery_ids = [str(v) for v in cfg["imlist"]]
    query_ids = [str(v) for v in cfg["qimlist"]]
    gallery = [images / f"{v}.jpg" for v in gallery_ids]
    queries = [images / f"{v}.jpg" for v in query_ids]
    if check_files:
        check_files_exist(gallery, what=f"{name} gallery images", hint=REVISITOP_HINT)
        check_files_exist(queries, what=f"{name} query images", hint=REVISITOP_HINT)
    gnd = [{k: entry[k] for k in ("easy", "hard", "junk")} for entry in cfg["gnd"]]
    bbx = [entry.get("bbx") for entry in cfg["gnd"]]
    n_distractors = 0
    if distractors_root is not None:
        d_ids, d_paths = read_distractors(Path(distractors_root), list_name=distractor_list)
        gallery_ids += d_ids
        gallery += d_paths
        n_distractors = len(d_paths)
    return RetrievalDataset(
        name=name, root=root, protocol="revisitop",
        gallery_paths=tuple(gallery), gallery_ids=tuple(gallery_ids),
        query_paths=tuple(queries), query_ids=tuple(query_ids),
        gnd=tuple(gnd), query_bbx=tuple(bbx), n_distractors=n_distractors,
    )


def _read_gnd_pickle(path: Path) -> dict[str, Any]:
    """Read and validate the layout of a ``gnd_<name>.pkl`` (indices are range-checked later).

    The file is a pickle, so only load ground truth from a source you trust.
    """
    require_file(path, what="ground-truth file", hint=REVISITOP_HINT)
    try:
        with open(path, "rb") as f:
            cfg = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError) as exc:
        raise CorruptDataError(f"{str(path)!r} is not a readable pickle ({type(exc).__name__}: {exc}); "
                               f"re-download it: {REVISITOP_HINT}") from exc
    if not isinstance(cfg, Mapping):
        raise CorruptDataError(f"{str(path)!r} holds a {type(cfg).__name__}, not a dict with keys "
                               "imlist, qimlist, gnd; it is not a revisitop ground-truth file")
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in cfg]
    if missing:
        raise CorruptDataError(f"{str(path)!r} lacks key(s) {missing} (has {sorted(map(str, cfg))}); "
                               "a revisitop ground-truth file has imlist, qimlist and gnd")
    if len(cfg["gnd"]) != len(cfg["qimlist"]):
        raise CorruptDataError(f"{str(path)!r}: gnd has {len(cfg['gnd'])} entries for "
                               f"{len(cfg['qimlist'])} queries; they must match one to one")
    for i, entry in enumerate(cfg["gnd"]):
        if not isinstance(entry, Mapping) or any(k not in entry for k in ("easy", "hard", "junk")):
            raise CorruptDataError(f"{str(path)!r}: gnd[{i}] must be a dict with easy, hard and junk "
                                   "index lists (and optionally bbx)")
    return dict(cfg)


def read_distractors(folder: Path, *, list_name: str = DISTRACTOR_LIST) -> tuple[list[str], list[Path]]:
    """Read a revisitop1m-style distractor list.

    Returns:
        ``(ids, paths)``: each non-empty line of ``folder/list_name`` as the id, and
        ``folder/jpg/<line>`` as the path.

    Raises:
        CorruptDataError: the list or ``folder/jpg`` is missing, or the list is empty.
    """
    listing = require_file(folder / list_name, what="distractor list", hint=DISTRACTOR_HINT)
    images = require_dir(folder / "jpg", what="distractor image folder", hint=DISTRACTOR_HINT)
    try:
        lines = [ln.strip() for ln in listing.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise CorruptDataError(f"{str(listing)!r} is not a text file ({exc}); {DISTRACTOR_HINT}") from exc
    ids = [ln for ln in lines if ln]
    if not ids:
        raise CorruptDataError(f"distractor list {str(listing)!r} is empty; {DISTRACTOR_HINT}")
    return ids, [images / v for v in ids]
