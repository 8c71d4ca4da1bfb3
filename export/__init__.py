"""asymfuse.export: query nets to ONNX, TFLite and Core ML (one module per format)."""
