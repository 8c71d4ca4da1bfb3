"""A client in another language (Node.js, @grpc/grpc-js + @grpc/proto-loader) talks to the searcher
through the same .proto: the schema is portable. CI installs the pinned packages (.ci/run runs
``npm ci`` in examples/node_client); elsewhere the test is skipped with the reason."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .conftest import API_KEY, DIM, N, SPACE

CLIENT = Path(__file__).resolve().parents[3] / "examples" / "node_client"


def test_node_client_searches_upserts_and_deletes(served, gallery):
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed; install Node >= 18 to run the cross-language client check")
    if not (CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip(f"the Node client's packages are not installed; run `npm ci --prefix {CLIENT}`")
    _, port = served
    res = subprocess.run([node, str(CLIENT / "client.js"), f"127.0.0.1:{port}", SPACE, str(DIM), API_KEY],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["info"] == {"size": N, "dim": DIM, "embedding_space_id": SPACE}
    query = np.zeros(DIM, np.float32)
    query[0] = 1.0
    want = np.argsort(-(gallery @ query), kind="stable")[:5]
    assert [h["id"] for h in out["search"]] == want.tolist()
    np.testing.assert_allclose([h["score"] for h in out["search"]], (gallery @ query)[want], atol=1e-5)
    assert out["search"][0]["key"] == f"img{want[0]:05d}.jpg"
    assert out["mismatch"] == "FAILED_PRECONDITION"
    assert out["upsert"] == {"upserted": 1, "size": N + 1} and out["top_after_upsert"] == 777777
    assert out["deleted"] == 1
