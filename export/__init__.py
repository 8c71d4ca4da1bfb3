"""asymfuse.export: query nets to ONNX, TFLite and Core ML (one module per format)."""

from asymfuse.edge.lazy import lazy_surface

__all__, __getattr__, __dir__ = lazy_surface(__name__, {
    "Artifact": "asymfuse.export.artifact",
    "EXPORTERS": "asymfuse.export.registry",
    "ExportSpec": "asymfuse.export.spec",
    "create_exporter": "asymfuse.export.registry",
    "load_runner": "asymfuse.export.registry",
    "read_model_spec": "asymfuse.export.registry",
    "verify_artifact": "asymfuse.export.verify",
})
