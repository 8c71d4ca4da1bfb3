"""Real images and retrieval scoring for exports: calibration, verification queries, torch gallery.

Shared by ``asymfuse export`` and ``asymfuse bench export``. Everything comes from the embedded
benchmark (:mod:`asymfuse.cloud.data.benchmark`):

- calibration: real photos of the **train** split, half of them as query-like random crops,
  preprocessed with the net's ModelSpec;
- verification: the **test** split's queries, cropped to their bbx (as :func:`embed_queries` does),
  preprocessed the same way; the parity gate compares artifact and torch vectors on them;
- mAP: the artifact's query vectors search the **torch model's own gallery vectors** of the test
  split (revisitop mAP Medium, %), so the comparison stays asymmetric as in use: only the query
  side changes. There is no trained mixer here; the gallery side is the torch query net itself
  (a symmetric torch baseline).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from asymfuse.cloud.data.benchmark import Benchmark, BenchmarkConfig
from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.edge.errors import ConfigError, CorruptDataError
from asymfuse.edge.spec import ModelSpec
from torch import nn

LOG = logging.getLogger("asymfuse.export")
MAP_KEY = "mAP_medium"
DEFAULT_BENCH_ROOT = "runs/benchmark"


def ensure_benchmark(root: str | os.PathLike[str], *, config: BenchmarkConfig | None = None) -> Benchmark:
    """The benchmark at ``root``: reused when it is there (any config), else built (a few seconds).

    Raises:
        ConfigError, CorruptDataError: the build failed or ``root`` holds something else.
    """
    from asymfuse.cloud.data.benchmark import MANIFEST_NAME, build_benchmark, open_benchmark

    root = Path(root)
    if (root / MANIFEST_NAME).is_file() and config is None:
        return open_benchmark(root, reused=True)
    LOG.info("building the embedded benchmark at %s", root)
    return build_benchmark(root, config=config)


def test_split(bench: Benchmark) -> RetrievalDataset:
    """The benchmark's test split as a revisitop :class:`RetrievalDataset`."""
    from asymfuse.cloud.data.benchmark import dataset_name
    from asymfuse.cloud.data.revisitop import load_revisitop

    return load_revisitop(bench.split("test").root, name=dataset_name(bench.config.name, "test"))


CROP_AREA = (0.3, 0.85)
"""Area range (fraction of the photo) of the query-like calibration crops; the benchmark's bbx
queries cover 0.34-0.84 of their photos."""
CROP_ASPECT = (0.7, 1.3)
"""Width/height range of those crops (the bbx queries: 0.72-1.26)."""


def calibration_images(bench: Benchmark, spec: ModelSpec, *, count: int, crop_share: float = 0.5,
                       seed: int = 0, clip: bool = False) -> np.ndarray:
    """``(count, 3, H, W)`` float32: ``count`` train-split photos spread evenly over the split.

    With ``clip``, a ``count`` above the split's size takes the whole split instead of failing.

    ``round(count * crop_share)`` of them (chosen at random with ``seed``) are replaced by a random
    crop of themselves covering :data:`CROP_AREA` of the photo, like the bbx-cropped queries a
    query net sees in use: int8 ranges and the exporters' self-check then cover zoomed-in views
    too, not only whole photos (calibrating on whole photos alone left both int8 files of
    EfficientNet-Lite0 below the 0.99 gate on the bbx queries).

    Raises:
        ConfigError: ``count`` < 1 or larger than the train split (the message gives its size), or
            ``crop_share`` outside [0, 1].
    """
    from asymfuse.cloud.train.aff_data import load_training_set
    from asymfuse.edge.preprocess import load_image, preprocess

    paths = list(load_training_set("benchmark", bench.root).paths)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"the calibration count must be a positive int, got {count!r}")
    if clip:
        count = min(count, len(paths))
    if count > len(paths):
        raise ConfigError(f"--calibration {count} asks for more images than the benchmark's train split has "
                          f"({len(paths)}); pass at most {len(paths)} or a folder of images")
    if not 0.0 <= float(crop_share) <= 1.0:
        raise ConfigError(f"crop_share must be in [0, 1], got {crop_share!r}")
    picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
    rng = np.random.default_rng(seed)
    cropped = set(rng.choice(count, size=int(round(count * crop_share)), replace=False).tolist())
    images = [load_image(paths[i]) for i in picks]
    return preprocess([random_crop(img, rng=rng) if j in cropped else img for j, img in enumerate(images)], spec)


def random_crop(image: np.ndarray, *, rng: np.random.Generator, area: tuple[float, float] = CROP_AREA,
                aspect: tuple[float, float] = CROP_ASPECT) -> np.ndarray:
    """A random ``(h, w, 3)`` crop of an ``(H, W, 3)`` image: ``area`` fraction, ``aspect`` = w / h."""
    height, width = image.shape[:2]
    frac = rng.uniform(*area)
    ratio = float(np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]))))
    w = int(np.clip(round(np.sqrt(frac * height * width * ratio)), 1, width))
    h = int(np.clip(round(np.sqrt(frac * height * width / ratio)), 1, height))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return np.ascontiguousarray(image[top:top + h, left:left + w])


def folder_images(folder: str | os.PathLike[str], spec: ModelSpec, *, limit: int | None = None) -> np.ndarray:
    """``(N, 3, H, W)`` float32 from the image files of ``folder`` (sorted; jpg/jpeg/png/bmp/webp).

    Raises:
        ConfigError: not a folder, or no images in it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"calibration folder {root} does not exist; pass a folder of photos or a count")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp"))
    if not files:
        raise ConfigError(f"calibration folder {root} holds no .jpg/.png images; add real photos to it")
    return load_images(files[:limit] if limit else files, spec)


def load_images(paths: list[Any], spec: ModelSpec) -> np.ndarray:
    """Image files -> ``(N, 3, H, W)`` float32 preprocessed with ``spec``."""
    from asymfuse.edge.preprocess import load_image, preprocess

    return preprocess([load_image(p) for p in paths], spec)


def query_images(test: RetrievalDataset, spec: ModelSpec) -> np.ndarray:
    """``(nq, 3, H, W)`` float32: the test queries cropped to their bbx, preprocessed with ``spec``.

    Raises:
        CorruptDataError: the split has no queries or an unreadable image.
    """
    from asymfuse.edge.preprocess import preprocess

    if test.nq == 0:
        raise CorruptDataError(f"the test split {test.name!r} has no queries; rebuild the benchmark")
    return preprocess([test.load_query_image(i) for i in range(test.nq)], spec)


@dataclass(frozen=True)
class TorchReference:
    """What the torch model gives on the test split.

    Attributes:
        gallery: ``(nb, D)`` float32 torch vectors of the test gallery.
        queries: ``(nq, D)`` float32 torch vectors of the test queries (from ``images``).
        images: ``(nq, 3, H, W)`` float32 preprocessed test queries (the verification set).
        map: torch queries vs torch gallery, mAP Medium (%).
        metrics: every metric of that evaluation.
    """

    gallery: np.ndarray
    queries: np.ndarray
    images: np.ndarray
    map: float
    metrics: dict[str, float]


def torch_reference(model: nn.Module, test: RetrievalDataset, *, batch_size: int = 16) -> TorchReference:
    """Embed the test split with the torch model (gallery whole images, queries bbx crops).

    Raises:
        ConfigError: the model has no ModelSpec ``spec``.
    """
    from asymfuse.cloud.embed import embed_images, embed_pixels

    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise ConfigError("the query net has no ModelSpec `spec`; build it with create_query_net")
    device = next(model.parameters()).device
    gallery = embed_images(model, list(test.gallery_paths), device=device, batch_size=batch_size)
    images = query_images(test, spec)
    queries = embed_pixels(model, images, device=device, batch_size=batch_size)
    metrics = retrieval_metrics(test, queries, gallery)
    return TorchReference(gallery=gallery, queries=queries.astype(np.float32), images=images,
                          map=float(metrics[MAP_KEY]), metrics=metrics)


def retrieval_metrics(test: RetrievalDataset, query_vectors: np.ndarray, gallery: np.ndarray) -> dict[str, float]:
    """Rank ``gallery`` by inner product for each query vector; revisitop metrics in percent."""
    from asymfuse.cloud.eval.evaluate import evaluate_aff

    q = np.asarray(query_vectors, dtype=np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)  # runtimes may drift off unit norm
    return {k: float(v) for k, v in evaluate_aff(dataset=test, query_vectors=q, gallery_vectors=gallery).items()}


def make_map_fn(test: RetrievalDataset, gallery: np.ndarray) -> Callable[[np.ndarray], float]:
    """``query_vectors (nq, D) -> mAP Medium (%)`` against the fixed torch ``gallery``."""
    def map_fn(query_vectors: np.ndarray) -> float:
        return float(retrieval_metrics(test, query_vectors, gallery)[MAP_KEY])

    return map_fn
