"""UKBench (Nistér and Stewénius, CVPR 2006).

Images are named ``ukbenchNNNNN.jpg``; images ``4g .. 4g+3`` show the same object (group ``g``).
Official protocol: every image is a query, the gallery is every image (the query itself
included, and it counts as one of its group's four correct answers), and the score N-S is the
mean number of the group's images among the top 4 (at most 4).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from asymfuse.cloud.data.records import RetrievalDataset, image_files, require_dir
from asymfuse.edge.errors import CorruptDataError

UKBENCH_HINT = ("get UKBench (10200 images, ukbench00000.jpg ... ukbench10199.jpg), e.g. from the "
                "archive.org mirror of the original University of Kentucky page, and extract it")
_NAME = re.compile(r"^ukbench(\d{5})\.jpg$", re.IGNORECASE)
GROUP_SIZE = 4


def load_ukbench(root: str | os.PathLike[str]) -> RetrievalDataset:
    """Load UKBench.

    Args:
        root: folder of the ``ukbenchNNNNN.jpg`` files, or a folder holding them in ``full/``
            (the layout of the original archive).

    Returns:
        A :class:`RetrievalDataset` with ``protocol="ukbench"``: gallery and queries are the same
        images in number order; ``gnd[i]["ok"]`` is the 4 gallery indices of the group of image
        ``i`` (itself included), ``junk`` is empty.

    Raises:
        CorruptDataError: the folder is missing or empty, a file is misnamed, or a group does
            not have all 4 images.
    """
    root = Path(root)
    folder = root / "full" if (root / "full").is_dir() else root
    require_dir(folder, what="UKBench image folder", hint=UKBENCH_HINT)
    files = image_files(folder, extensions=(".jpg",))
    if not files:
        raise CorruptDataError(f"no .jpg images in {str(folder)!r}; {UKBENCH_HINT}")
    numbers = []
    for path in files:
        match = _NAME.match(path.name)
        if match is None:
            raise CorruptDataError(f"{str(path)!r} is not named like ukbench00000.jpg; remove files "
                                   f"that are not UKBench images from {str(folder)!r}")
        numbers.append(int(match.group(1)))
    order = np.argsort(numbers, kind="stable")
    files = [files[j] for j in order]
    numbers = [numbers[j] for j in order]
    position = {n: i for i, n in enumerate(numbers)}
    gnd = []
    for n in numbers:
        first = n - n % GROUP_SIZE
        members = [position.get(first + t) for t in range(GROUP_SIZE)]
        if any(m is None for m in members):
            raise CorruptDataError(f"UKBench group {first // GROUP_SIZE} (images {first}..{first + 3}) "
                                   f"is incomplete in {str(folder)!r}; every group needs all 4 images")
        gnd.append({"ok": np.array(members, dtype=np.int64), "junk": np.empty(0, dtype=np.int64)})
    ids = tuple(p.stem for p in files)
    return RetrievalDataset(
        name="ukbench", root=root, protocol="ukbench",
        gallery_paths=tuple(files), gallery_ids=ids, query_paths=tuple(files), query_ids=ids,
        gnd=tuple(gnd),
    )
