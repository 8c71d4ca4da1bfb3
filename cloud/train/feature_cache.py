"""The feature-store cache of AFF training: frozen gallery features, extracted once per image set.

Layout: ``<features_dir>/<name>/<part>/<gallery|queries>``, where ``name`` is a feature name
(normally a registered extractor, see :mod:`asymfuse.cloud.features.registry`) and ``part`` is
``train`` for the training images or a benchmark split (``val``, ``test``) for evaluation.

Rule: a *complete* store already at the target path (one that holds every requested id) is used
as it is, whatever wrote it, so synthetic stores (e.g. the benchmark's noise features) can be
dropped in under a name that is no registered extractor. Otherwise the extractor ``name`` is built
and extraction runs (resuming a partial store of the same extractor and id list).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from asymfuse.cloud.data.records import RetrievalDataset, TrainingSet
from asymfuse.cloud.features.extract import default_ids, extract_to_store
from asymfuse.cloud.features.extract_dataset import extract_dataset
from asymfuse.cloud.features.layout import SIDES, store_path
from asymfuse.cloud.features.registry import FEATURE_EXTRACTORS, create_feature_extractor
from asymfuse.cloud.features.store import FeatureStore
from asymfuse.cloud.features.store_format import MANIFEST
from asymfuse.edge.errors import ConfigError, UnknownNameError

TRAIN_PART = "train"


def training_ids(training_set: TrainingSet) -> list[str]:
    """Store ids of a training set's images: their paths relative to the common parent folder.

    Raises:
        ConfigError: the training set is empty.
    """
    if len(training_set) == 0:
        raise ConfigError(f"training set {training_set.name!r} is empty; it needs at least one image")
    return default_ids(training_set.paths)



def ensure_training_features(name: str, training_set: TrainingSet, *, features_dir: str | os.PathLike[str],
                             device: str | torch.device = "cpu", progress: bool = False,
                             batch_size: int = 16, part: str = TRAIN_PART) -> Path:
    """Make sure ``<features_dir>/<name>/<part>/gallery`` holds ``name`` features of every training image.

    Rows are keyed by :func:`training_ids`; the whole image is used (no crop). ``part`` is
    ``train`` for the training images (other parts: e.g. the crop views of
    :mod:`asymfuse.cloud.train.start_views`).

    Returns:
        The store folder.

    Raises:
        UnknownNameError: no complete store there and ``name`` is no registered extractor (the
            message names both fixes).
        ConfigError: an existing store there was built by another extractor or for another image
            list; see :func:`asymfuse.cloud.features.extract.extract_to_store` for the rest.
        CorruptDataError: an image or the existing store is unreadable.
    """
    root = store_path(features_dir, name, part)
    ids = training_ids(training_set)
    if is_complete(root, ids):
        return root
    _require_extractor(name, [root], n_items=len(ids))
    with create_feature_extractor(name, device=device) as extractor:
        extract_to_store(extractor, list(training_set.paths), root, ids=ids, batch_size=batch_size,
                         resume=True, progress=progress,
                         meta={"dataset": training_set.name, "part": part}).close()
    return root


def ensure_dataset_features(name: str, dataset: RetrievalDataset, *, features_dir: str | os.PathLike[str],
                            part: str, device: str | torch.device = "cpu", progress: bool = False,
                            batch_size: int = 16) -> dict[str, Path]:
    """Make sure ``<features_dir>/<name>/<part>/{gallery,queries}`` hold ``name`` features of ``dataset``.

    Gallery rows are keyed by ``dataset.gallery_ids``, query rows by ``dataset.query_ids``; queries
    are cropped to their bbx (:func:`asymfuse.cloud.features.extract_dataset.extract_dataset`).

    Returns:
        ``{"gallery": store folder, "queries": store folder}``.

    Raises:
        UnknownNameError: a part has no complete store and ``name`` is no registered extractor.
        ConfigError: bad ``part``, or an existing store was built by another extractor or for
            another image list.
        CorruptDataError: an image or an existing store is unreadable.
    """
    roots = {side: store_path(features_dir, name, part, side) for side in SIDES}
    wanted = {"gallery": list(dataset.gallery_ids), "queries": list(dataset.query_ids)}
    todo = tuple(w for w in SIDES if wanted[w] and not is_complete(roots[w], wanted[w]))
    if todo:
        _require_extractor(name, [roots[w] for w in todo], n_items=sum(len(wanted[w]) for w in todo))
        with create_feature_extractor(name, device=device) as extractor:
            stores = extract_dataset(extractor, dataset, roots["gallery"].parent, sides=todo,
                                     batch_size=batch_size, resume=True, progress=progress)
        for store in stores.values():
            store.close()
    return roots


def is_complete(root: str | os.PathLike[str], ids: Sequence[str]) -> bool:
    """True when ``root`` is a feature store holding every id of ``ids`` (extra ids are allowed).

    Raises:
        ConfigError, CorruptDataError: ``root`` has a store manifest that is unreadable.
    """
    root = Path(root)
    if not (root / MANIFEST).is_file():
        return False
    with FeatureStore.open(root, verify="none") as store:
        if len(store) < len(ids):
            return False
        return set(ids) <= set(store.ids)


def _require_extractor(name: str, roots: Sequence[Path], *, n_items: int) -> None:
    if name in FEATURE_EXTRACTORS:
        return
    where = ", ".join(str(r) for r in roots)
    incomplete = [str(r) for r in roots if (r / MANIFEST).is_file()]
    state = f"the store(s) at {', '.join(incomplete)} lack some of the ids" if incomplete else f"no store at {where}"
    raise UnknownNameError(
        f"feature {name!r}: {state}, and {name!r} is not a registered feature extractor (registered: "
        f"{', '.join(FEATURE_EXTRACTORS.names())}); either use/register an extractor of that name "
        f"(asymfuse.cloud.features.registry), or write a complete store for the {n_items} images at {where} "
        "(e.g. create_store_from_arrays with the ids of training_ids() or the dataset's ids)")
