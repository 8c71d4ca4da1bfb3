"""Calibration sets for static int8: real train-split photos, half of them query-like crops."""

from __future__ import annotations

import numpy as np
import pytest

from asymfuse.cloud.bench.export_data import CROP_AREA, CROP_ASPECT, calibration_images, random_crop
from asymfuse.cloud.data.benchmark import BenchmarkConfig, build_benchmark
from asymfuse.cloud.models.query_net import create_query_net
from asymfuse.cloud.train.aff_data import load_training_set
from asymfuse.edge.errors import ConfigError
from asymfuse.edge.preprocess import load_image, preprocess


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    config = BenchmarkConfig(seed=3, photos=("astronaut", "camera", "chelsea", "coffee", "coins", "rocket"),
                             n_views=3, image_max_side=128, distractors_per_split=2, multiview_distractors=2)
    return build_benchmark(tmp_path_factory.mktemp("calib") / "bench", config=config)


@pytest.fixture(scope="module")
def spec():
    return create_query_net("mobilenet_v2", embed_dim=16, pretrained=False, input_size=32).spec


def test_random_crop_covers_the_asked_area_and_aspect():
    rng = np.random.default_rng(0)
    image = np.arange(300 * 400 * 3, dtype=np.int64).reshape(300, 400, 3).astype(np.uint8)
    for _ in range(200):
        crop = random_crop(image, rng=rng)
        h, w = crop.shape[:2]
        # rounding to whole pixels moves area and aspect a little past the drawn values
        assert CROP_AREA[0] - 0.01 <= h * w / (300 * 400) <= CROP_AREA[1] + 0.01
        assert CROP_ASPECT[0] - 0.01 <= w / h <= CROP_ASPECT[1] + 0.01
    big = np.zeros((10, 1000, 3), np.uint8)  # a strip: the crop is clipped to the image, never larger
    assert all(c.shape[0] <= 10 and c.shape[1] <= 1000 for c in (random_crop(big, rng=rng) for _ in range(50)))


def test_calibration_mixes_whole_photos_and_crops_reproducibly(bench, spec):
    paths = list(load_training_set("benchmark", bench.root).paths)
    count = 8
    whole = calibration_images(bench, spec, count=count, crop_share=0.0)
    mixed = calibration_images(bench, spec, count=count)
    assert whole.shape == mixed.shape == (count, 3, 32, 32) and mixed.dtype == np.float32
    picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
    np.testing.assert_array_equal(whole, preprocess([load_image(paths[i]) for i in picks], spec))
    same = [bool(np.array_equal(a, b)) for a, b in zip(whole, mixed, strict=True)]
    assert same.count(False) == count // 2, same  # exactly half replaced by crops of the same photos
    np.testing.assert_array_equal(mixed, calibration_images(bench, spec, count=count))
    assert not np.array_equal(mixed, calibration_images(bench, spec, count=count, seed=1))
    assert np.array_equal(calibration_images(bench, spec, count=count, crop_share=1.0)[0], whole[0]) is False


def test_calibration_count_is_checked_or_clipped(bench, spec):
    n = len(load_training_set("benchmark", bench.root).paths)
    with pytest.raises(ConfigError, match=f"pass at most {n}"):
        calibration_images(bench, spec, count=n + 1)
    assert calibration_images(bench, spec, count=n + 50, clip=True).shape[0] == n
    for bad in (0, -2, True):
        with pytest.raises(ConfigError, match="positive int"):
            calibration_images(bench, spec, count=bad)
    with pytest.raises(ConfigError, match="crop_share"):
        calibration_images(bench, spec, count=2, crop_share=1.5)
