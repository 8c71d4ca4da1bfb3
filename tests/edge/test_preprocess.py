"""Reference preprocessing checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from asymfuse.edge.errors import CorruptDataError, ShapeError
from asymfuse.edge.preprocess import load_image, preprocess, resize_to_spec
from asymfuse.edge.spec import ModelSpec


def spec(**kw):
    base = dict(arch="a", embed_dim=4, input_size=(4, 6), embedding_space_id="es-x",
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5), interpolation="nearest")
    base.update(kw)
    return ModelSpec(**base)


def test_normalisation_matches_hand_computation():
    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 0] = 255
    img[..., 1] = 51  # 0.2
    x = preprocess(img, spec(resize="squash"))
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 1.0)               # (1 - .5) / .5
    np.testing.assert_allclose(x[0, 1], (0.2 - 0.5) / 0.25, rtol=1e-6)
    np.testing.assert_allclose(x[0, 2], -1.0)              # (0 - .5) / .5


def test_center_crop_and_letterbox_geometry():
    img = np.zeros((10, 30, 3), np.uint8)
    img[:, :10] = 10
    img[:, 10:20] = 200
    img[:, 20:] = 90
    crop = resize_to_spec(img, spec(resize="center_crop", input_size=(4, 4)))
    assert crop.shape == (4, 4, 3) and np.all(crop == 200)  # only the middle third survives
    box = resize_to_spec(img, spec(resize="letterbox", input_size=(6, 6)))
    # 30x10 -> 6x2 content rows in the middle, mean-colour (128) padding above and below.
    assert np.all(box[:2] == 128) and np.all(box[4:] == 128)
    assert list(box[2, :, 0]) == [10, 10, 200, 200, 90, 90]


def test_batches_of_different_sizes_and_grey_images():
    a = np.full((20, 10), 255, np.uint8)
    b = np.zeros((7, 13, 3), np.uint8)
    x = preprocess([a, b], spec())
    assert x.shape == (2, 3, 4, 6)
    np.testing.assert_allclose(x[0, 0], 1.0)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4, 3), np.uint8),
                                 np.full((4, 4, 3), np.nan, np.float32)])
def test_bad_images_raise_shape_errors(bad):
    with pytest.raises(ShapeError):
        preprocess(bad, spec())
    with pytest.raises(ShapeError, match="empty"):
        preprocess([], spec())


def test_load_image_reads_rgb_and_rejects_corrupt_files(tmp_path):
    Image.fromarray(np.full((5, 7), 77, np.uint8)).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.shape == (5, 7, 3) and img.dtype == np.uint8 and np.all(img == 77)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(CorruptDataError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(CorruptDataError, match="does not exist"):
        load_image(tmp_path / "missing.jpg")
