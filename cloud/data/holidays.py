"""INRIA Holidays (Jégou, Douze, Schmid, ECCV 2008).

Images are named ``NNNNNN.jpg`` (six digits). The first four digits name the group (one scene);
the image whose number ends in ``00`` is the group's query, the others are its positives.

Protocol choice, the one of the official ``holidays_map.py``: the gallery is **all** images,
queries included (1491 for the full set), and each query's own image is removed from its
ranking before scoring. So ``gnd[i]["ok"]`` holds the other images of the group and
``gnd[i]["junk"]`` holds only the query's own gallery index; the other queries stay in the
gallery as negatives. (Dropping every query from the gallery instead would change the set of
negatives and not match published numbers.)

Images are read as stored; the well-known 90-degree-rotated photos are not corrected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from asymfuse.cloud.data.records import RetrievalDataset, image_files, require_dir
from asymfuse.edge.errors import CorruptDataError

HOLIDAYS_HINT = ("download jpg1.tar.gz and jpg2.tar.gz from "
                 "https://lear.inrialpes.fr/people/jegou/data.php and extract them into one folder")
_NAME = re.compile(r"^(\d{6})\.jpg$", re.IGNORECASE)


def load_holidays(root: str | os.PathLike[str]) -> RetrievalDataset:
    """Load INRIA Holidays.

    Args:
        root: folder of the ``NNNNNN.jpg`` files, or a folder holding them in ``jpg/`` (the
            layout of the official tars).

    Returns:
        A :class:`RetrievalDataset` with ``protocol="holidays"``: the gallery is every image sorted
        by name, the queries are the ``...00.jpg`` images in name order, ``gnd`` as described in
        the module docstring.

    Raises:
        CorruptDataError: the folder is missing or empty, a ``.jpg`` is not named with six digits,
            or a group has no ``...00`` query.
    """
    root = Path(root)
    folder = root / "jpg" if (root / "jpg").is_dir() else root
    require_dir(folder, what="Holidays image folder", hint=HOLIDAYS_HINT)
    files = image_files(folder, extensions=(".jpg",))
    if not files:
        raise CorruptDataError(f"no .jpg images in {str(folder)!r}; {HOLIDAYS_HINT}")
    stems = []
    for path in files:
        match = _NAME.match(path.name)
        if match is None:
            raise CorruptDataError(f"{str(path)!r} is not named like 100000.jpg (six digits); remove "
                                   f"files that are not Holidays images from {str(folder)!r}")
        stems.append(match.group(1))
    groups: dict[str, list[int]] = {}
    for i, stem in enumerate(stems):
        groups.setdefault(stem[:4], []).append(i)
    query_idx, gnd = [], []
    for group, members in groups.items():
        queries = [i for i in members if stems[i].endswith("00")]
        if len(queries) != 1:
            raise CorruptDataError(f"Holidays group {group} has {len(queries)} query images "
                                   f"(named {group}00.jpg); each group needs exactly one: {HOLIDAYS_HINT}")
        q = queries[0]
        query_idx.append(q)
        gnd.append({"ok": np.array([i for i in members if i != q], dtype=np.int64),
                    "junk": np.array([q], dtype=np.int64)})
    order = np.argsort([stems[q] for q in query_idx], kind="stable")
    return RetrievalDataset(
        name="holidays", root=root, protocol="holidays",
        gallery_paths=tuple(files), gallery_ids=tuple(stems),
        query_paths=tuple(files[query_idx[j]] for j in order),
        query_ids=tuple(stems[query_idx[j]] for j in order),
        gnd=tuple(gnd[j] for j in order),
    )
