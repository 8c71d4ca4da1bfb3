"""Export a query net to ONNX fp32 + int8, gate both on real photos, print the manifest.

Run: python examples/export_query_net.py [OUT] [CHECKPOINT]   (default OUT runs/example-export;
without CHECKPOINT it uses EfficientNet-Lite0 with its bundled ImageNet weights).
"""

import sys
from pathlib import Path

from asymfuse.cloud.bench.export_data import (calibration_images, ensure_benchmark, make_map_fn, test_split,
                                              torch_reference)
from asymfuse.cloud.models.checkpoint import load_query_net
from asymfuse.cloud.models.query_net import create_query_net
from asymfuse.export.artifact import write_manifest
from asymfuse.export.registry import EXPORTERS
from asymfuse.export.spec import ExportSpec
from asymfuse.export.verify import verify_artifact

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/example-export")
net = (load_query_net(sys.argv[2])[0] if len(sys.argv) > 2
       else create_query_net("efficientnet_lite0", pretrained=True, input_size=224)).eval()
bench = ensure_benchmark("runs/benchmark")  # the embedded real-photo benchmark (built once, ~15 s)
test = test_split(bench)
ref = torch_reference(net, test)  # torch vectors of the test split: the gallery the artifacts search
calib = calibration_images(bench, net.spec, count=32)  # real train-split photos for static int8
artifacts = []
for precision in ("fp32", "int8"):
    spec = ExportSpec(format="onnx", precision=precision, input_size=net.spec.input_size[0], calibration_images=32)
    artifact = EXPORTERS["onnx"](net, model_spec=net.spec, export=spec, out=out, calibration=calib)
    artifacts.append(verify_artifact(artifact, model=net, images=ref.images, map_fn=make_map_fn(test, ref.gallery),
                                     torch_map=ref.map))
    print(f"{artifact.path.name}: {artifacts[-1].status} {artifacts[-1].reason}".rstrip())
print(write_manifest(out, artifacts).read_text())
