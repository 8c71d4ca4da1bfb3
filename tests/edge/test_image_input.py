"""The SDK's input path against the training side's preprocessing, on real photos.

The training side already calls the same reference functions (``cloud/embed.py``: ``load_image`` +
``preprocess``; ``cloud/train/augment.eval_image`` = ``resize_to_spec``, ``cloud/train/aff_data``:
``normalize_pixels``), so what is checked here is the SDK's own entry points (array, BGR array,
file path, PIL image, grey, RGBA) against those training-side calls. Measured max abs diff: 0.0
(bit-identical) for every entry point and resize policy.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from asymfuse.cloud.train.augment import eval_image
from asymfuse.edge.errors import ConfigError
from asymfuse.edge.image_input import to_model_input, to_rgb_uint8
from asymfuse.edge.preprocess import load_image, normalize_pixels, preprocess
from asymfuse.edge.spec import HALF_MEAN, ModelSpec

PHOTOS = ("astronaut", "coffee", "chelsea")


def _spec(resize: str) -> ModelSpec:
    letterbox = resize == "letterbox"  # also another interpolation and mean/std (its fill colour is the mean)
    return ModelSpec(arch="a", embed_dim=8, input_size=(48, 64), embedding_space_id="es-x", resize=resize,
                     interpolation="bicubic" if letterbox else "bilinear",
                     **({"mean": HALF_MEAN, "std": HALF_MEAN} if letterbox else {}))


@pytest.mark.parametrize("resize", ["squash", "center_crop", "letterbox"])
@pytest.mark.parametrize("photo", PHOTOS)
def test_every_entry_point_equals_the_training_side_preprocessing(photo, resize, tmp_path):
    import skimage.data

    rgb = getattr(skimage.data, photo)()
    spec = _spec(resize)
    png = tmp_path / f"{photo}.png"
    Image.fromarray(rgb).save(png)
    training = {
        "cloud.embed (load_image + preprocess)": preprocess([load_image(png)], spec)[0],
        "cloud.train (eval_image + normalize_pixels)": normalize_pixels(eval_image(rgb, spec=spec), spec),
    }
    sdk = {
        "array": to_model_input(rgb, spec),
        "BGR array": to_model_input(np.ascontiguousarray(rgb[:, :, ::-1]), spec, color_order="BGR"),
        "path": to_model_input(png, spec),
        "str path": to_model_input(str(png), spec),
        "PIL": to_model_input(Image.open(png), spec),
    }
    for t_name, want in training.items():
        assert want.shape == (3, 48, 64) and want.dtype == np.float32
        for s_name, got in sdk.items():
            diff = float(np.abs(got - want).max())
            assert diff == 0.0, (s_name, t_name, diff)


def test_grey_and_rgba_match_the_training_sides_conversion():
    import skimage.data

    spec = _spec("squash")
    grey = skimage.data.camera()
    rgba = np.dstack([skimage.data.coffee(), np.full(skimage.data.coffee().shape[:2], 9, np.uint8)])
    np.testing.assert_array_equal(to_model_input(grey, spec), preprocess(grey, spec)[0])  # (H, W) grey
    np.testing.assert_array_equal(to_model_input(rgba, spec), preprocess(rgba, spec)[0])  # alpha dropped
    np.testing.assert_array_equal(to_rgb_uint8(grey[:, :, None]), np.repeat(grey[:, :, None], 3, axis=2))


def test_hw_float_arrays_that_training_accepts_are_refused_here():
    """``as_rgb_uint8`` (training) reads float arrays as [0, 1]; the SDK refuses to guess."""
    from asymfuse.edge.errors import ShapeError

    with pytest.raises(ShapeError, match="uint8"):
        to_rgb_uint8(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ConfigError, match="color_order"):
        to_rgb_uint8(np.zeros((4, 4, 3), np.uint8), color_order="bgr")
