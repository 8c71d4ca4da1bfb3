"""Datasets: loaders behind ``create_dataset(name, root=...)`` and the embedded benchmark."""

from asymfuse.edge.lazy import lazy_surface

__all__, __getattr__, __dir__ = lazy_surface(__name__, {
    "BenchmarkConfig": "asymfuse.cloud.data.benchmark_config",
    "RetrievalDataset": "asymfuse.cloud.data.records",
    "TrainingSet": "asymfuse.cloud.data.records",
    "build_benchmark": "asymfuse.cloud.data.benchmark",
    "create_dataset": "asymfuse.cloud.data.registry",
    "dataset_names": "asymfuse.cloud.data.registry",
})
