"""asymfuse.v1: generated from searcher.proto by asymfuse.proto.codegen; do not edit the *_pb2 files."""
