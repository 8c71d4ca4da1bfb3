"""Dataset registry: ``create_dataset(name, root=...)`` over the loaders.

Retrieval benchmarks return a :class:`~asymfuse.cloud.data.records.RetrievalDataset`, training
sets a :class:`~asymfuse.cloud.data.records.TrainingSet`. Registered names:

- ``roxford5k``, ``rparis6k``: revisitop, optional ``distractors_root`` for +1M;
- ``revisitop``: any revisitop-format benchmark, ``name=`` picks ``gnd_<name>.pkl``
  (e.g. asymfuse's own ``asymfuse-skimage``);
- ``gldv2-retrieval``, ``gldv2-train``, ``holidays``, ``ukbench``, ``image-folder``;
- ``benchmark_train``: the labelled train split of an embedded benchmark
  (:mod:`~asymfuse.cloud.data.benchmark`), ``root`` = the benchmark folder.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asymfuse.cloud.data.folder import load_folder_retrieval, load_image_folder
from asymfuse.cloud.data.gldv2 import USAGES, load_gldv2_retrieval, load_gldv2_train
from asymfuse.cloud.data.holidays import load_holidays
from asymfuse.cloud.data.records import RetrievalDataset, TrainingSet
from asymfuse.cloud.data.revisitop import load_revisitop
from asymfuse.cloud.data.ukbench import load_ukbench
from asymfuse.cloud.registry import Registry
from asymfuse.edge.errors import ConfigError, CorruptDataError

PathLike = str | os.PathLike[str]
DatasetFactory = Callable[..., RetrievalDataset | TrainingSet]

DATASETS: Registry[DatasetFactory] = Registry("dataset")


@DATASETS.register("roxford5k")
def roxford5k(root: PathLike, *, distractors_root: PathLike | None = None,
              check_files: bool = True) -> RetrievalDataset:
    """Revisited Oxford 5k (``root/gnd_roxford5k.pkl``, ``root/jpg/``)."""
    return load_revisitop(root, name="roxford5k", distractors_root=distractors_root, check_files=check_files)


@DATASETS.register("rparis6k")
def rparis6k(root: PathLike, *, distractors_root: PathLike | None = None,
             check_files: bool = True) -> RetrievalDataset:
    """Revisited Paris 6k (``root/gnd_rparis6k.pkl``, ``root/jpg/``)."""
    return load_revisitop(root, name="rparis6k", distractors_root=distractors_root, check_files=check_files)


@DATASETS.register("revisitop")
def revisitop(root: PathLike, *, name: str | None = None, distractors_root: PathLike | None = None,
              check_files: bool = True) -> RetrievalDataset:
    """Any revisitop-format benchmark: ``root/gnd_<name>.pkl`` and ``root/jpg/``."""
    return load_revisitop(root, name=name, distractors_root=distractors_root, check_files=check_files)


@DATASETS.register("gldv2-retrieval")
def gldv2_retrieval(root: PathLike, *, usages: tuple[str, ...] = USAGES) -> RetrievalDataset:
    """GLDv2 index/test retrieval benchmark (mAP@100)."""
    return load_gldv2_retrieval(root, usages=usages)


@DATASETS.register("gldv2-train")
def gldv2_train(root: PathLike, *, csv: str = "train.csv") -> TrainingSet:
    """GLDv2 training split (``train.csv`` or ``train_clean.csv``)."""
    return load_gldv2_train(root, csv=csv)


@DATASETS.register("holidays")
def holidays(root: PathLike) -> RetrievalDataset:
    """INRIA Holidays (mAP)."""
    return load_holidays(root)


@DATASETS.register("ukbench")
def ukbench(root: PathLike) -> RetrievalDataset:
    """UKBench (N-S score)."""
    return load_ukbench(root)


@DATASETS.register("image-folder")
def image_folder(root: PathLike, *, name: str | None = None) -> TrainingSet:
    """Training images in ``root/<class>/<image>``."""
    return load_image_folder(root, name=name)


@DATASETS.register("folder-retrieval")
def folder_retrieval(root: PathLike, *, name: str | None = None) -> RetrievalDataset:
    """Retrieval on ``root/<class>/<image>``: each class's first image queries the rest (mAP)."""
    return load_folder_retrieval(root, name=name)


@DATASETS.register("benchmark_train")
def benchmark_train(root: PathLike) -> TrainingSet:
    """The train split of an embedded benchmark: ``root/train/train.csv`` with images in ``root/train/jpg``.

    Named ``"<benchmark name>-train"``; ``root`` of the returned set is the benchmark folder.

    Raises:
        CorruptDataError: ``root`` is not a benchmark (no readable ``benchmark.json``) or its train
            files are missing or malformed.
    """
    from asymfuse.cloud.data.benchmark import MANIFEST_NAME, open_benchmark  # lazy: pulls in OpenCV

    folder = Path(root)
    if not (folder / MANIFEST_NAME).is_file():
        raise CorruptDataError(f"{str(folder)!r} is not an asymfuse benchmark (no {MANIFEST_NAME}); pass "
                               "the folder written by `asymfuse data build --out <folder>` (or "
                               "build_benchmark), or use data source 'gldv2' / 'folder' for other data")
    bench = open_benchmark(folder)
    train = load_gldv2_train(bench.train_csv.parent / "jpg", csv=f"../{bench.train_csv.name}")
    return dataclasses.replace(train, name=f"{bench.config.name}-train", root=bench.root)


def create_dataset(name: str, /, *, root: PathLike, **kwargs: Any) -> RetrievalDataset | TrainingSet:
    """Load the dataset registered as ``name`` from ``root``.

    Args:
        name: a registered name (see :func:`dataset_names`).
        root: the dataset folder.
        **kwargs: loader options, e.g. ``distractors_root=`` for ``roxford5k`` or ``name=`` for
            the generic ``revisitop`` entry.

    Raises:
        UnknownNameError: ``name`` is not registered.
        ConfigError: an option is not accepted by that dataset.
        CorruptDataError: the files on disk are missing or malformed.
    """
    factory = DATASETS.get(name)
    signature = inspect.signature(factory)
    try:
        signature.bind(root, **kwargs)
    except TypeError as exc:
        accepted = [p for p in signature.parameters if p != "root"]
        raise ConfigError(f"dataset {name!r} does not take these options ({exc}); accepted keyword "
                          f"options: {accepted}") from None
    return factory(root, **kwargs)


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return DATASETS.names()
