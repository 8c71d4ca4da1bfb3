"""asymfuse.proto: the wire schema (proto/asymfuse/v1/*.proto)."""
