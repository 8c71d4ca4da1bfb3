"""SIFT and RootSIFT local descriptors (OpenCV), top-L keypoints by detector response."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from functools import cached_property

import numpy as np
from PIL import Image

from asymfuse.cloud.features.base import FeatureExtractor, LocalFeatures, check_batch
from asymfuse.edge.errors import ConfigError, missing_dependency
from asymfuse.edge.preprocess import as_rgb_uint8


def _cv2():  # type: ignore[no-untyped-def]
    try:
        import cv2
    except ModuleNotFoundError as exc:
        raise missing_dependency("opencv-python-headless", "cloud") from exc
    return cv2


def root_normalize(desc: np.ndarray) -> np.ndarray:
    """RootSIFT: L1-normalise, then element-wise sqrt (the result is unit L2). ``(n, 128)``."""
    d = np.maximum(desc.astype(np.float32), 0.0)
    return np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), 1e-12))


class SiftExtractor(FeatureExtractor):
    """OpenCV SIFT on the grey image (longer side resized to ``max_side``), top-L by response.

    Descriptors are ``(L, 128)`` unit-norm (RootSIFT when ``root``); weights are responses.
    """

    kind = "local"
    dim = 128

    def __init__(self, *, name: str, root: bool, max_local: int = 512, max_side: int = 512, threads: int = 2) -> None:
        if max_local < 1 or max_side < 32 or threads < 1:
            raise ConfigError(f"need max_local >= 1, max_side >= 32 and threads >= 1, got {max_local}, {max_side}, "
                              f"{threads}")
        self.name, self.root, self.max_local, self.max_side = name, root, max_local, max_side
        # OpenCV's SIFT keeps ~1.5 of 2 cores busy on one image; images of a batch run on ``threads``
        # threads (cv2 releases the GIL), each with its own detector: the same descriptors, measured
        # 2.52 s -> 1.57 s for 200 crop views on 2 cores. ``threads`` does not change the features.
        self.threads = threads
        self._local = threading.local()

    @cached_property
    def extractor_id(self) -> str:
        cfg = {"root": self.root, "max_local": self.max_local, "max_side": self.max_side,
               "opencv": _cv2().__version__}
        return f"{self.name}/" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]

    def extract(self, images: Sequence[np.ndarray]) -> LocalFeatures:
        check_batch(images)
        b, L = len(images), self.max_local
        out = LocalFeatures(np.zeros((b, L, 128), np.float32), np.zeros((b, L), np.float32),
                            np.ones((b, L), bool), np.zeros((b, L, 2), np.float32),
                            np.zeros((b, L), np.float32))
        def fill(i: int) -> None:  # each call fills its own row of ``out``
            self._fill(i, as_rgb_uint8(images[i]), out)

        if min(self.threads, b) <= 1:
            for i in range(b):
                fill(i)
        else:
            with ThreadPoolExecutor(max_workers=min(self.threads, b)) as pool:
                list(pool.map(fill, range(b)))
        return out

    def _detector(self):  # type: ignore[no-untyped-def]
        """This thread's OpenCV SIFT object (a detector is not shared across threads)."""
        sift = getattr(self._local, "sift", None)
        if sift is None:
            sift = self._local.sift = _cv2().SIFT_create()
        return sift

    def _fill(self, i: int, rgb: np.ndarray, out: LocalFeatures) -> None:
        cv2 = _cv2()
        scale = min(1.0, self.max_side / max(rgb.shape[:2]))
        if scale < 1.0:
            size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        kps, desc = self._detector().detectAndCompute(grey, None)
        if desc is None or len(kps) == 0:
            return
        resp = np.array([kp.response for kp in kps], np.float32)
        order = np.argsort(-resp, kind="stable")[: self.max_local]
        desc = desc[order]
        desc = root_normalize(desc) if self.root else desc / np.maximum(
            np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        n = len(order)
        out.descriptors[i, :n] = desc
        out.weights[i, :n] = resp[order]
        out.mask[i, :n] = False
        out.xy[i, :n] = np.array([kps[j].pt for j in order], np.float32) / scale
        out.scale[i, :n] = np.array([kps[j].size for j in order], np.float32) / scale
