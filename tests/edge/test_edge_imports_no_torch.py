"""The phone-side path end to end in a fresh process: import ``asymfuse.edge``, embed a real photo
with an ONNX and a TFLite file, and check torch, ``asymfuse.cloud`` and ``asymfuse.export`` were
never imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CODE = """
import json, sys
import asymfuse.edge as edge
out = {}
for path in sys.argv[2:]:
    with edge.ImageEmbedder.create_from_model_path(path) as embedder:
        out[path] = embedder.embed(sys.argv[1]).embedding.tolist()
bad = [m for m in ("torch", "torchvision", "asymfuse.cloud", "asymfuse.export") if m in sys.modules]
print(json.dumps({"bad": bad, "vectors": out}))
"""


def test_edge_embeds_a_photo_without_torch_cloud_or_export(edge_models, real_photos, tmp_path):
    from PIL import Image

    from asymfuse.edge import ImageEmbedder

    photo = tmp_path / "astronaut.png"
    Image.fromarray(real_photos[0]).save(photo)
    paths = [str(edge_models["onnx-fp32"]), str(edge_models["tflite-fp32"])]
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # the parent's asymfuse, not another
    res = subprocess.run([sys.executable, "-c", CODE, str(photo), *paths], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["bad"] == []
    for path in paths:  # it really embedded: the same vector as in this process
        with ImageEmbedder.create_from_model_path(path) as embedder:
            want = embedder.embed(photo).embedding
        assert abs(float(want @ want) - 1.0) < 1e-5
        assert max(abs(a - b) for a, b in zip(report["vectors"][path], want.tolist())) < 1e-6
