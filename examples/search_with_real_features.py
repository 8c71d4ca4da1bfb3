"""Build the embedded benchmark, embed it with a real ImageNet model and search it with faiss.

Run: .venv/bin/python examples/search_with_real_features.py [OUT_DIR]
"""

import sys
from pathlib import Path

from asymfuse.cloud.data.benchmark import BenchmarkConfig, build_benchmark
from asymfuse.cloud.data.revisitop import load_revisitop
from asymfuse.cloud.eval.evaluate import evaluate_ranking, rank_features
from asymfuse.cloud.features.extract_dataset import extract_dataset
from asymfuse.cloud.features.registry import create_feature_extractor

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/example")
photos = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text")
bench = build_benchmark(out / "benchmark", config=BenchmarkConfig(photos=photos, n_views=4))
test = load_revisitop(bench.split("test").root, name="asymfuse-skimage")

with create_feature_extractor("gem_lite1", device="cpu") as extractor:
    stores = extract_dataset(extractor, test, out / "features", progress=False)

ranks = rank_features(stores["queries"].global_features(), stores["gallery"].global_features())
metrics = evaluate_ranking(ranks, test)
print(f"{test.nq} queries, {test.nb} gallery images")
print(f"mAP easy {metrics['mAP_easy']:.2f}  medium {metrics['mAP_medium']:.2f}  hard {metrics['mAP_hard']:.2f}")
