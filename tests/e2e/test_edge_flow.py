"""The phone flow across packages: an exported query model, the torch-free edge SDK, a real gRPC
searcher on loopback. The gallery is embedded by the same exported file, so every photo's own
gallery copy must come back first, and the SDK's hits must equal NumPy brute force."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asymfuse.cloud.features.base import GlobalFeatures
from asymfuse.cloud.features.store import create_store_from_arrays
from asymfuse.cloud.index.build import build_index
from asymfuse.cloud.index.faiss_index import IndexConfig
from asymfuse.cloud.service.config import ServerConfig
from asymfuse.cloud.service.server import create_server
from tests.export.conftest import PHOTOS, TINY_SIZE, tiny_query_net

ROOT = Path(__file__).resolve().parents[2]
NAMES = PHOTOS[:8]


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """``(model file, photo paths, gallery (n, d), server port, space id)``."""
    import skimage.data

    from asymfuse.edge.embedder import ImageEmbedder
    from asymfuse.export.registry import create_exporter
    from asymfuse.export.spec import ExportSpec

    root = tmp_path_factory.mktemp("edge-flow")
    net = tiny_query_net()
    model = create_exporter("onnx")(net, model_spec=net.spec, export=ExportSpec(format="onnx", input_size=TINY_SIZE),
                                    out=root / "query.onnx")
    model_path = Path(getattr(model, "path", root / "query.onnx"))
    paths = []
    for name in NAMES:
        img = getattr(skimage.data, name)()
        img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]
        paths.append(root / f"{name}.png")
        Image.fromarray(img).save(paths[-1])
    with ImageEmbedder.create_from_model_path(model_path) as embedder:
        xb = np.stack([embedder.embed(p).embedding for p in paths])
    space = net.spec.embedding_space_id
    create_store_from_arrays(root / "fused", ids=[p.name for p in paths], features=GlobalFeatures(xb),
                             meta={"extractor_name": "edge_onnx", "extractor_id": space, "embedding_space_id": space,
                                   "query_spec": net.spec.to_dict()}).close()
    build_index([root / "fused"], root / "index", config=IndexConfig(factory="Flat"))
    server, port = create_server(ServerConfig(index_dir=str(root / "index"), snapshot_interval_s=0))
    yield model_path, paths, xb, port, space
    server.stop(0)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def test_example_edge_query_returns_each_photo_first(flow):
    model_path, paths, xb, port, _ = flow
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "edge_query.py"), str(model_path),
                          f"127.0.0.1:{port}", *map(str, paths[:3])], capture_output=True, text=True, timeout=120,
                         env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    for i, p in enumerate(paths[:3]):
        block = res.stdout.split(f"{p}:")[1]
        assert f"1. id={i} " in block and f"key={p.name}" in block


def test_sdk_hits_equal_brute_force_and_no_torch_is_loaded(flow):
    """In a fresh interpreter: embed + search through the SDK; hits equal NumPy over the gallery,
    and neither torch nor asymfuse.cloud / asymfuse.export was imported."""
    model_path, paths, xb, port, space = flow
    code = f"""
import json, sys
from asymfuse.edge import ImageEmbedder
from asymfuse.edge.search_client import ClientConfig, SearchClient
with ImageEmbedder.create_from_model_path({str(model_path)!r}) as e:
    r = e.embed({str(paths[2])!r})
    with SearchClient(ClientConfig(target="127.0.0.1:{port}", embedding_space_id=r.embedding_space_id)) as c:
        hits = c.search(r.embedding, k=5)
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "asymfuse.cloud", "asymfuse.export")))
print(json.dumps({{"q": r.embedding.tolist(), "ids": [h.id for h in hits], "scores": [h.score for h in hits],
                  "space": r.embedding_space_id, "bad": bad}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["bad"] == [] and out["space"] == space
    q = np.asarray(out["q"], np.float32)
    np.testing.assert_allclose(q, xb[2], atol=1e-6)
    want = np.argsort(-(xb @ q), kind="stable")[:5]
    assert out["ids"] == want.tolist()
    np.testing.assert_allclose(out["scores"], (xb @ q)[want], atol=1e-5)


def test_edge_cli_embed_and_query(flow, capsys):
    from asymfuse.edge.cli import main

    model_path, paths, _, port, space = flow
    assert main(["embed", "--model", str(model_path), str(paths[0])]) == 0
    out = capsys.readouterr().out
    assert "d=32 norm=1.0000" in out and f"space={space}" in out
    assert main(["query", "--model", str(model_path), "--server", f"127.0.0.1:{port}", "-k", "3", str(paths[1])]) == 0
    out = capsys.readouterr().out
    assert "3 hits" in out and "id=1 " in out.splitlines()[1] and paths[1].name in out.splitlines()[1]
    assert main(["embed", "--model", str(paths[0]), str(paths[0])]) == 2  # a photo is not a model
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_the_edge_extra_installs_alone_and_runs_the_flow(flow, tmp_path):
    """``pip install .[edge]`` into a fresh venv (no torch there), then the phone flow against the
    searcher; the result equals the in-tree SDK's. Prints the install size (bench edge reports it)."""
    model_path, paths, xb, port, _ = flow
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", f"{ROOT}[edge]"],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.stdout.strip() == "True", "the edge extra pulled in torch"
    res = subprocess.run([str(py), str(ROOT / "examples" / "edge_query.py"), str(model_path), f"127.0.0.1:{port}",
                          str(paths[4])], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1. id=4 " in res.stdout
    size_mb = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 2**20
    print(f"edge venv: {size_mb:.0f} MB")
