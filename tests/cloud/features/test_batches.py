"""Decoding and preprocessing in DataLoader workers gives exactly what the in-process path gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from asymfuse.cloud.features.batches import check_workers, iter_collated
from asymfuse.cloud.features.cnn_batch import PaddedGroups, PadResize
from asymfuse.cloud.features.extract import extract_to_store
from asymfuse.cloud.features.registry import create_feature_extractor
from asymfuse.edge.errors import ConfigError, CorruptDataError
from asymfuse.edge.preprocess import load_image


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> list[Path]:
    """Seven real photos of different sizes and aspects (grey included) as JPEG files."""
    folder = tmp_path_factory.mktemp("photos")
    photos = [skdata.astronaut(), skdata.coffee(), skdata.camera(), skdata.chelsea(), skdata.chelsea()[:290],
              skdata.rocket(), skdata.coins()]
    paths = []
    for i, photo in enumerate(photos):
        paths.append(folder / f"p{i}.jpg")
        Image.fromarray(photo).save(paths[-1], quality=92)
    return paths


@pytest.fixture(scope="module")
def gem():
    return create_feature_extractor("gem_lite1", max_side=96, batch_size=3)


def test_workers_give_the_same_batches_and_features(gem, photo_files):
    batches = [[0, 1, 2], [3, 4], [5, 6]]
    inline = list(iter_collated(gem, photo_files, batches, load_fn=load_image, workers=0))
    pooled = list(iter_collated(gem, photo_files, batches, load_fn=load_image, workers=2))
    assert len(inline) == len(pooled) == 3
    for a, b in zip(inline, pooled):
        assert isinstance(b, PaddedGroups) and a.count == b.count
        for (ia, ga), (ib, gb) in zip(a.groups, b.groups, strict=True):
            np.testing.assert_array_equal(ia, ib)
            assert ga.pixels.equal(gb.pixels) and np.array_equal(ga.sizes, gb.sizes)
    for batch, collated in zip(batches, pooled):  # the extractor's own one-call path, batch by batch
        expect = gem.extract([load_image(photo_files[i]) for i in batch]).features
        np.testing.assert_array_equal(gem.extract_collated(collated).features, expect)
    whole = gem.extract([load_image(p) for p in photo_files]).features  # other forward batches: rounding only
    got = np.concatenate([gem.extract_collated(b).features for b in pooled])
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-6)


def test_store_extracted_with_workers_equals_the_one_without(gem, photo_files, tmp_path):
    a = extract_to_store(gem, photo_files, tmp_path / "a", batch_size=3, shard_size=4, progress=False, workers=0)
    b = extract_to_store(gem, photo_files, tmp_path / "b", batch_size=3, shard_size=4, progress=False, workers=2)
    assert a.ids == b.ids and a.meta == b.meta
    np.testing.assert_array_equal(a.global_features(), b.global_features())


def test_pad_resize_keeps_aspect_and_groups_by_padded_size():
    pre = PadResize(max_side=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), multiple=32, batch_size=2)
    images = [np.full((100, 50, 3), 255, np.uint8), np.zeros((40, 80, 3), np.uint8), np.zeros((90, 50), np.uint8),
              np.zeros((100, 48, 3), np.uint8)]
    prepared = [pre.prepare(im) for im in images]
    assert [p.pixels.shape for p in prepared] == [(3, 64, 32), (3, 32, 64), (3, 64, 36), (3, 64, 31)]
    assert prepared[0].pixels.max() == pytest.approx(2.0) and prepared[1].pixels.min() == pytest.approx(-2.0)
    batch = pre.collate(prepared)
    assert batch.count == 4
    assert [(list(idx), tuple(g.pixels.shape)) for idx, g in batch.groups] == [
        ([0, 3], (2, 3, 64, 32)), ([1], (1, 3, 32, 64)), ([2], (1, 3, 64, 64))]
    group = batch.groups[0][1]
    assert float(group.pixels[1, :, :, 31:].abs().sum()) == 0.0       # padding stays zero
    with pytest.raises(ConfigError, match="PadResize needs"):
        PadResize(max_side=0, mean=(0, 0, 0), std=(1, 1, 1))


def test_a_bad_image_in_a_worker_raises_its_own_error(gem, photo_files, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    files = [*photo_files[:2], broken]
    with pytest.raises(CorruptDataError, match="broken.jpg"):
        list(iter_collated(gem, files, [[0, 1], [2]], load_fn=load_image, workers=1))
    with pytest.raises(ConfigError, match="workers must be an int >= 0"):
        check_workers(-1)
