"""Synthetic "noisy" gallery features for the robustness block of ``asymfuse bench aff``.

The AFF paper adds useless or weak features to the gallery side and checks that the mixer learns
to ignore them while plain concatenation degrades. Two such features are written here as global
feature stores, in the feature-cache layout ``<features_dir>/<name>/<part>/<gallery|queries>``
that :mod:`asymfuse.cloud.train.feature_cache` reads ("an existing store wins"):

- ``noise_gaussian``: per item an N(0, I) vector of dimension 128, unit-normalised. It is seeded
  from ``(seed, item id)`` only (the id is hashed), so the same id always gets the same vector and
  the feature carries no information about the image.
- ``noise_weak``: a weak image feature. A tiny colour thumbnail of the image (``thumb x thumb``
  RGB, area-averaged; queries are bbx-cropped first) is flattened, centred, projected by a fixed
  seeded Gaussian matrix to 64 dimensions, and Gaussian noise is added (``weak_noise`` times the
  projection's RMS per coordinate, seeded from ``(seed, id)``); the result is unit-normalised.

Parts: ``train`` holds the training set's images (gallery only, ids = ``default_ids(paths)``);
``val``/``test`` hold a retrieval dataset's gallery and queries (their dataset ids).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from asymfuse.cloud.data.records import RetrievalDataset, TrainingSet
from asymfuse.cloud.features.base import GlobalFeatures
from asymfuse.cloud.features.extract import default_ids, ids_digest
from asymfuse.cloud.features.layout import store_path
from asymfuse.cloud.features.store import FeatureStore, create_store_from_arrays
from asymfuse.cloud.features.store_format import MANIFEST
from asymfuse.edge.errors import ConfigError, CorruptDataError, unknown_name
from asymfuse.edge.preprocess import load_image

GAUSSIAN = "noise_gaussian"
WEAK = "noise_weak"
NOISE_FEATURES = (GAUSSIAN, WEAK)

ImageLoader = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class NoiseConfig:
    """How the synthetic features are drawn. Changing any field changes their ``extractor_id``."""

    seed: int = 0
    gaussian_dim: int = 128
    weak_dim: int = 64
    weak_thumb: int = 4
    weak_noise: float = 1.0

    def __post_init__(self) -> None:
        for name in ("gaussian_dim", "weak_dim", "weak_thumb"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"NoiseConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"NoiseConfig.seed must be an int >= 0, got {self.seed!r}")
        if not self.weak_noise >= 0:
            raise ConfigError(f"NoiseConfig.weak_noise must be >= 0, got {self.weak_noise!r}")

    def extractor_id(self, name: str) -> str:
        """Stable id of the synthetic feature ``name`` under this config."""
        blob = json.dumps({"name": name, **asdict(self)}, sort_keys=True).encode()
        return f"{name}-v1-{hashlib.sha256(blob).hexdigest()[:16]}"


def item_rng(seed: int, item_id: str, salt: str) -> np.random.Generator:
    """A generator seeded from ``(seed, salt, item_id)`` only (the id is hashed with sha256)."""
    digest = hashlib.sha256(f"{salt}\0{item_id}".encode()).digest()
    words = np.frombuffer(digest[:16], dtype=np.uint32).tolist()
    return np.random.default_rng([seed, *words])


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def gaussian_features(ids: Sequence[str], *, dim: int = 128, seed: int = 0) -> np.ndarray:
    """``(N, dim)`` float32 unit-norm rows, row i a function of ``(seed, ids[i])`` only."""
    rows = [item_rng(seed, i, "gaussian").standard_normal(dim) for i in ids]
    return _unit(np.asarray(rows, dtype=np.float64).reshape(len(ids), dim))


def thumbnail(image: np.ndarray, *, side: int) -> np.ndarray:
    """``(side * side * 3,)`` float32 in [0, 1]: the image area-averaged to ``side x side`` RGB."""
    small = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).reshape(-1) / 255.0


def projection_matrix(*, thumb: int, dim: int, seed: int) -> np.ndarray:
    """``(3 * thumb * thumb, dim)`` float64 Gaussian matrix, scaled by 1/sqrt(rows); fixed by ``seed``."""
    rows = 3 * thumb * thumb
    return np.random.default_rng([seed, 0x3EA4]).standard_normal((rows, dim)) / np.sqrt(rows)


def weak_features(images: Sequence[np.ndarray], ids: Sequence[str], *, cfg: NoiseConfig) -> np.ndarray:
    """The weak projection feature of ``images``: ``(N, cfg.weak_dim)`` float32 unit-norm.

    Raises:
        ConfigError: ``len(images) != len(ids)``.
    """
    if len(images) != len(ids):
        raise ConfigError(f"got {len(images)} images for {len(ids)} ids; pass one id per image")
    proj = projection_matrix(thumb=cfg.weak_thumb, dim=cfg.weak_dim, seed=cfg.seed)
    out = np.empty((len(ids), cfg.weak_dim), dtype=np.float64)
    for row, (image, item) in enumerate(zip(images, ids)):
        t = thumbnail(image, side=cfg.weak_thumb).astype(np.float64)
        signal = (t - t.mean()) @ proj
        rms = np.sqrt(np.mean(signal ** 2)) + 1e-6
        noise = item_rng(cfg.seed, item, "weak").standard_normal(cfg.weak_dim)
        out[row] = signal + cfg.weak_noise * rms * noise
    return _unit(out)


def _is_complete(root: Path, *, extractor_id: str, ids: Sequence[str]) -> bool:
    """True if ``root`` holds a readable store of exactly these ids from this generator."""
    if not (root / MANIFEST).is_file():
        return False
    try:
        with FeatureStore.open(root) as store:
            meta = store.meta
            return (len(store) == len(ids) and meta.get("extractor_id") == extractor_id
                    and meta.get("ids_sha256") == ids_digest(ids))
    except (ConfigError, CorruptDataError):
        return False


def write_noise_store(name: str, root: str | os.PathLike[str], *, ids: Sequence[str], load: ImageLoader,
                      cfg: NoiseConfig, meta: Mapping[str, object] | None = None) -> Path:
    """Write the synthetic feature ``name`` for ``ids`` to the global store ``root`` (idempotent).

    Args:
        name: one of :data:`NOISE_FEATURES`.
        ids: ``N`` unique item ids. load: ``load(i)`` returns item i as ``(H, W, 3)`` uint8 RGB
            (only called for ``noise_weak``).
        meta: extra JSON metadata (e.g. dataset and part).

    Returns:
        ``root``. A complete store of the same ids and generator config is left as it is;
        anything else there is overwritten.

    Raises:
        UnknownNameError: an unknown ``name``.
        CorruptDataError: an image is unreadable.
        ConfigError, ShapeError: as :func:`create_store_from_arrays` (e.g. duplicate ids).
    """
    if name not in NOISE_FEATURES:
        raise unknown_name("noise feature", name, list(NOISE_FEATURES))
    root, ids = Path(root), list(ids)
    extractor_id = cfg.extractor_id(name)
    if _is_complete(root, extractor_id=extractor_id, ids=ids):
        return root
    if name == GAUSSIAN:
        x = gaussian_features(ids, dim=cfg.gaussian_dim, seed=cfg.seed)
    else:
        x = weak_features([load(i) for i in range(len(ids))], ids, cfg=cfg)
    info = {**dict(meta or {}), "extractor_id": extractor_id, "extractor_name": name, "kind": "global",
            "dim": int(x.shape[1]), "max_local": None, "ids_sha256": ids_digest(ids),
            "num_target_items": len(ids), "synthetic": True, "noise_config": asdict(cfg)}
    root.mkdir(parents=True, exist_ok=True)
    create_store_from_arrays(root, ids=ids, features=GlobalFeatures(x), meta=info, overwrite=True).close()
    return root


def write_noise_features(*, features_dir: str | os.PathLike[str], training_set: TrainingSet | None,
                         datasets: Mapping[str, RetrievalDataset], cfg: NoiseConfig | None = None,
                         names: Sequence[str] = NOISE_FEATURES,
                         image_sets: Mapping[str, TrainingSet] | None = None) -> dict[str, dict[str, Path]]:
    """Write every synthetic feature for the training set and the retrieval datasets.

    Args:
        features_dir: the feature-cache folder.
        training_set: written as part ``train`` (gallery only); None skips it.
        datasets: ``{part: dataset}``, e.g. ``{"val": val, "test": test}``; gallery and queries.
        names: which synthetic features (default both).
        image_sets: more ``{part: images}`` written gallery-only, e.g. the training crop views of the
            closed-form starts (part :func:`~asymfuse.cloud.train.start_views.views_part`).

    Returns:
        ``{name: {"<part>/<gallery|queries>": store root}}``.

    Raises:
        ConfigError: a part named ``train`` in ``datasets``; see :func:`write_noise_store`.
    """
    cfg = cfg or NoiseConfig()
    if "train" in datasets:
        raise ConfigError("part 'train' is the training set's; pass it as training_set, not in datasets")
    base = Path(features_dir)
    gallery_only = {**({"train": training_set} if training_set is not None else {}), **dict(image_sets or {})}
    out: dict[str, dict[str, Path]] = {}
    for name in names:
        roots: dict[str, Path] = {}
        for part, images in gallery_only.items():
            paths = list(images.paths)
            roots[f"{part}/gallery"] = write_noise_store(
                name, store_path(base, name, part, "gallery"), ids=default_ids(paths),
                load=lambda i, p=paths: load_image(p[i]), cfg=cfg, meta={"dataset": images.name, "part": "gallery"})
        for part, ds in datasets.items():
            for side, ids, load in (("gallery", ds.gallery_ids, ds.load_gallery_image),
                                    ("queries", ds.query_ids, ds.load_query_image)):
                roots[f"{part}/{side}"] = write_noise_store(
                    name, store_path(base, name, part, side), ids=ids, load=load, cfg=cfg,
                    meta={"dataset": ds.name, "part": side})
        out[name] = roots
    return out
