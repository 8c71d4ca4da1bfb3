"""Registry sweep of the gallery feature zoo, plus padding and reference checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from asymfuse.cloud.features.base import GlobalFeatures, LocalFeatures
from asymfuse.cloud.features.registry import FEATURE_EXTRACTORS, create_feature_extractor
from asymfuse.cloud.features.sift import root_normalize
from asymfuse.edge.errors import ConfigError, ShapeError, UnknownNameError
from asymfuse.edge.preprocess import preprocess
from asymfuse.edge.spec import ModelSpec


@pytest.fixture(scope="module")
def photos():
    return [skdata.astronaut(), skdata.coffee(), skdata.camera()]  # camera is grey


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """A tiny real ONNX model: conv -> global average -> linear (exported by torch)."""
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 16)).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), str(path), dynamo=False,
                      input_names=["image"], output_names=["embedding"],
                      dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}})
    spec = ModelSpec(arch="tiny", embed_dim=16, input_size=(64, 64), embedding_space_id="es-tiny")
    return model, path, spec


@pytest.fixture(scope="module")
def query_net_file(tmp_path_factory):
    from asymfuse.cloud.models.checkpoint import save_query_net
    from asymfuse.cloud.models.query_net import create_query_net

    net = create_query_net("shufflenet_v2_x1_0", embed_dim=12, input_size=64, embedding_space_id="es-qn")
    return save_query_net(net, tmp_path_factory.mktemp("qn") / "query_net.pt")


def build(name, onnx_model, query_net_file=None):
    if name == "query_net":
        return create_feature_extractor(name, checkpoint=query_net_file)
    if name == "onnx_global":
        _, path, spec = onnx_model
        return create_feature_extractor(name, model_path=path, model_spec=spec)
    if name == "gem_torchvision":
        return create_feature_extractor(name, arch="mobilenet_v2", allow_random_weights=True, max_side=128)
    return create_feature_extractor(name)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", FEATURE_EXTRACTORS.names())
def test_every_extractor_returns_valid_features(name, photos, onnx_model, query_net_file):
    with build(name, onnx_model, query_net_file) as ex:
        out = ex.extract(photos)
        assert len(out) == 3
        assert ex.extractor_id.startswith(ex.name)
        if name != "gem_torchvision":  # random weights: each build is its own extractor
            assert ex.extractor_id == build(name, onnx_model, query_net_file).extractor_id
        if ex.kind == "global":
            assert isinstance(out, GlobalFeatures) and out.features.shape == (3, ex.dim)
            assert np.isfinite(out.features).all()
            np.testing.assert_allclose(np.linalg.norm(out.features, axis=1), 1.0, atol=1e-5)
        else:
            assert isinstance(out, LocalFeatures)
            assert out.descriptors.shape == (3, ex.max_local, ex.dim)
            assert np.isfinite(out.descriptors).all()
            counts = out.counts
            assert (counts > 0).all()
            for i, img in enumerate(photos):
                n = counts[i]
                assert not out.mask[i, :n].any() and out.mask[i, n:].all()
                np.testing.assert_allclose(np.linalg.norm(out.descriptors[i, :n], axis=1), 1.0, atol=1e-5)
                assert np.all(out.descriptors[i, n:] == 0) and np.all(out.weights[i, n:] == 0)
                assert np.all(np.diff(out.weights[i, :n]) <= 1e-6)  # sorted by decreasing weight
                h, w = img.shape[:2]
                assert out.xy[i, :n, 0].max() <= w + 1 and out.xy[i, :n, 1].max() <= h + 1
        with pytest.raises(ShapeError, match="empty"):
            ex.extract([])


@pytest.mark.parametrize("name", ["gem_lite1", "local_lite2"])
def test_padding_inside_a_batch_does_not_change_features(name, photos):
    """An image's features do not depend on what it is batched with."""
    ex = create_feature_extractor(name)
    cat = skdata.chelsea()  # 300x451 -> 255x384, padded to 256x384
    crop = cat[:290]        # 247x384, also padded to 256x384: same group, different padding
    alone = ex.extract([crop])
    batched = ex.extract([photos[0], cat, crop, photos[1]])
    if name == "gem_lite1":
        np.testing.assert_allclose(batched.features[2], alone.features[0], atol=1e-5)
    else:
        np.testing.assert_allclose(batched.xy[2], alone.xy[0])
        np.testing.assert_allclose(batched.descriptors[2], alone.descriptors[0], atol=1e-5)


def test_rootsift_is_the_square_root_of_l1_normalised_sift(photos):
    sift = create_feature_extractor("sift", max_local=64).extract(photos[:1])
    root = create_feature_extractor("rootsift", max_local=64).extract(photos[:1])
    np.testing.assert_allclose(root.xy, sift.xy)
    n = sift.counts[0]
    # Both are normalisations of the same raw descriptor: sqrt(l1norm(raw)) == sqrt(l1norm(l2norm(raw))).
    np.testing.assert_allclose(root.descriptors[0, :n], root_normalize(sift.descriptors[0, :n]), atol=1e-5)


def test_sift_threads_change_nothing_but_speed(photos):
    from asymfuse.cloud.features.sift import SiftExtractor

    images = photos + [p[::2, ::2] for p in photos]  # 6 images of different sizes, one grey
    one = SiftExtractor(name="sift", root=False, max_local=128, threads=1).extract(images)
    two = SiftExtractor(name="sift", root=False, max_local=128, threads=2).extract(images)
    for field in ("descriptors", "weights", "mask", "xy", "scale"):
        np.testing.assert_array_equal(getattr(two, field), getattr(one, field), err_msg=field)
    assert (one.counts > 50).all()  # real keypoints on every photo, so the comparison has teeth


def test_onnx_extractor_matches_torch(onnx_model, photos):
    model, path, spec = onnx_model
    ex = create_feature_extractor("onnx_global", model_path=path, model_spec=spec)
    got = ex.extract(photos).features
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model(torch.from_numpy(preprocess(photos, spec))), dim=-1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    ex.close()
    with pytest.raises(ConfigError, match="closed"):
        ex.extract(photos)


def test_query_net_extractor_id_follows_the_weights_and_it_records_the_space(query_net_file, tmp_path):
    from asymfuse.cloud.models.checkpoint import load_query_net, save_query_net

    net, _ = load_query_net(query_net_file)
    with torch.no_grad():
        net.whiten.weight.add_(0.01)
    other = save_query_net(net, tmp_path / "other.pt")
    a, b = create_feature_extractor("query_net", checkpoint=query_net_file), create_feature_extractor(
        "query_net", checkpoint=other)
    assert a.extractor_id != b.extractor_id and a.extractor_id.startswith("query_net/es-qn/")
    assert a.store_meta["embedding_space_id"] == "es-qn"


def test_onnx_extractor_without_a_spec_needs_one_stored_in_the_file(onnx_model, photos, tmp_path):
    _, path, spec = onnx_model  # a plain torch.onnx export: no asymfuse metadata
    with pytest.raises(ConfigError, match="carries no ModelSpec.*asymfuse export"):
        create_feature_extractor("onnx_global", model_path=path)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    from_file = create_feature_extractor("onnx_global", model_path=path, model_spec=str(spec_file))
    assert from_file.spec == spec


def test_bad_names_and_options_are_explained(tmp_path):
    with pytest.raises(UnknownNameError, match="gem_lite2"):
        create_feature_extractor("gem_lite9")
    with pytest.raises(ConfigError, match="does not take"):
        create_feature_extractor("sift", colour=True)
    with pytest.raises(ConfigError, match="weights_path"):
        create_feature_extractor("gem_torchvision", arch="resnet50")
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    spec = ModelSpec(arch="x", embed_dim=4, input_size=(32, 32), embedding_space_id="es-x")
    from asymfuse.edge.errors import CorruptDataError
    with pytest.raises(CorruptDataError, match="cannot be loaded"):
        create_feature_extractor("onnx_global", model_path=tmp_path / "broken.onnx", model_spec=spec)
