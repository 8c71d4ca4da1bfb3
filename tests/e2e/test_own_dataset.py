"""A user's own photos, end to end from the CLI: class folders -> extract -> index fuse -> eval,
symmetric and asymmetric, an AMES re-rank, and an exported ONNX query net as an extractor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from asymfuse.cloud.cli.main import main

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")
SPACE = "es-own-dataset-test"
D = 32


def _views(img: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The photo, a random crop of it and a mirrored crop: three views of one object."""
    h, w = img.shape[:2]
    out = [img]
    for flip in (False, True):
        ch, cw = int(h * rng.uniform(0.6, 0.85)), int(w * rng.uniform(0.6, 0.85))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[y:y + ch, x:x + cw]
        out.append(crop[:, ::-1] if flip else crop)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("own") / "photos"
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        img = getattr(skdata, name)()
        img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]
        (root / name).mkdir(parents=True)
        for k, view in enumerate(_views(img, rng)):
            Image.fromarray(np.ascontiguousarray(view)).resize((160, 120)).save(root / name / f"{k}.jpg", quality=92)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A query net and a mixer of one embedding space, and a binary AMES over SIFT (all untrained)."""
    from asymfuse.cloud.ames.checkpoint import save_ames
    from asymfuse.cloud.ames.model import create_ames
    from asymfuse.cloud.models.checkpoint import save_query_net
    from asymfuse.cloud.models.fusion import FeatureSlot, GallerySchema
    from asymfuse.cloud.models.mixers import create_mixer, save_mixer
    from asymfuse.cloud.models.query_net import create_query_net

    out = tmp_path_factory.mktemp("models")
    net = create_query_net("efficientnet_lite0", embed_dim=D, input_size=64, embedding_space_id=SPACE)
    save_query_net(net, out / "query_net.pt")
    schema = GallerySchema((FeatureSlot("gem_lite1", "global", 1280), FeatureSlot("sift", "local", 128, max_local=16)))
    save_mixer(create_mixer("mlp", schema=schema, embed_dim=D, seed=1), out / "mixer.pt", embedding_space_id=SPACE,
               query_model_spec=net.spec)
    save_ames(create_ames(local_dim=128, binary=True, layers=1, seed=0), out / "ames.pt")
    return {"query_net": out / "query_net.pt", "mixer": out / "mixer.pt", "ames": out / "ames.pt", "net": net}


def _run(argv: list[str], capsys) -> str:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _metrics(path) -> dict:
    return json.loads(path.read_text())


def test_own_photos_symmetric_asymmetric_and_ames_from_the_cli(photos, models, tmp_path, capsys):
    ds = ["--dataset", "folder-retrieval", "--root", photos]
    feats = tmp_path / "features"
    for name, opts in (("gem_lite1", []), ("sift", ["--option", "max_local=16"])):
        _run(["extract", *ds, "--extractor", name, *opts, "--out", feats / name], capsys)
    # Symmetric, one real model on both sides: far above chance (5 of 18 images are relevant).
    _run(["eval", *ds, "--features", feats / "gem_lite1", "--json", tmp_path / "sym.json"], capsys)
    sym = _metrics(tmp_path / "sym.json")
    assert sym["mAP"] > 60.0, sym
    # Gallery side: the mixer over both stores; query side: the query net's own store.
    for side in ("gallery", "queries"):
        _run(["index", "fuse", "--mixer", models["mixer"], "--stores", feats / "gem_lite1" / side,
              feats / "sift" / side, "--out", tmp_path / "fused" / side], capsys)
    _run(["extract", *ds, "--extractor", "query_net", "--option", f"checkpoint={models['query_net']}",
          "--sides", "queries", "--out", feats / "query_net"], capsys)
    out = _run(["eval", *ds, "--queries", feats / "query_net" / "queries", "--gallery", tmp_path / "fused" / "gallery",
                "--json", tmp_path / "asym.json"], capsys)
    assert SPACE in out
    asym = _metrics(tmp_path / "asym.json")
    _run(["eval", *ds, "--features", tmp_path / "fused", "--json", tmp_path / "fused.json"], capsys)
    for metrics in (asym, _metrics(tmp_path / "fused.json")):
        assert 0.0 <= metrics["mAP"] <= 100.0
    # Queries of another space (the raw gem_lite1 store) against the fused gallery are refused.
    assert main(["eval", *map(str, ds), "--queries", str(feats / "gem_lite1" / "queries"),
                 "--gallery", str(tmp_path / "fused" / "gallery")]) == 2
    assert "embedding space" in capsys.readouterr().err
    # AMES: pack the gallery's SIFT with the binary checkpoint, then re-rank in the same eval call.
    _run(["index", "pack-ames", "--ames", models["ames"], "--store", feats / "sift" / "gallery", "--max-local", 16,
          "--out", tmp_path / "packed"], capsys)
    _run(["eval", *ds, "--queries", feats / "query_net" / "queries", "--gallery", tmp_path / "fused" / "gallery",
          "--ames", models["ames"], "--packed", tmp_path / "packed", "--query-locals", feats / "sift" / "queries",
          "--top-m", 10, "--json", tmp_path / "ames.json"], capsys)
    both = _metrics(tmp_path / "ames.json")
    assert both["global"]["mAP"] == asym["mAP"] and 0.0 <= both["ames"]["mAP"] <= 100.0 and both["ames"]["top_m"] == 10


def test_query_net_store_equals_torch_and_onnx_global_reads_the_spec_from_the_file(photos, models, tmp_path, capsys):
    from asymfuse.cloud.data.folder import load_folder_retrieval
    from asymfuse.cloud.embed import embed_queries
    from asymfuse.cloud.features.store import FeatureStore
    from asymfuse.export.onnx import export_onnx
    from asymfuse.export.spec import ExportSpec

    ds = ["--dataset", "folder-retrieval", "--root", photos, "--sides", "queries"]
    _run(["extract", *ds, "--extractor", "query_net", "--option", f"checkpoint={models['query_net']}",
          "--out", tmp_path / "qn"], capsys)
    net = models["net"].eval()
    want = embed_queries(net, load_folder_retrieval(photos))
    with FeatureStore.open(tmp_path / "qn" / "queries") as store:
        got = np.asarray(store.global_features())
        assert store.meta["embedding_space_id"] == SPACE
    np.testing.assert_allclose(got, want, atol=1e-5)
    art = export_onnx(net, model_spec=net.spec, export=ExportSpec(format="onnx", input_size=64), out=tmp_path / "x")
    _run(["extract", *ds, "--extractor", "onnx_global", "--option", f"model_path={art.path}",
          "--out", tmp_path / "onnx"], capsys)
    with FeatureStore.open(tmp_path / "onnx" / "queries") as store:
        cosine = (np.asarray(store.global_features()) * want).sum(axis=1)
    assert cosine.min() > 0.999, cosine
