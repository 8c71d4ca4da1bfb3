"""The checked-in generated modules are exactly what grpcio-tools makes from the .proto."""

from __future__ import annotations

from pathlib import Path

import pytest

from asymfuse.proto import codegen


def test_checked_in_modules_equal_fresh_generation(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) generates the modules")
    written = codegen.generate(tmp_path)
    assert len(written) == 3 * len(codegen.PROTO_FILES)
    for path in written:
        rel = path.relative_to(tmp_path)
        checked_in = codegen.PROTO_ROOT / rel
        assert checked_in.is_file(), f"{rel} is not checked in; run python -m asymfuse.proto.codegen"
        assert checked_in.read_text() == path.read_text(), (
            f"{rel} differs from what grpcio-tools generates from the .proto; never edit it by hand, "
            "run python -m asymfuse.proto.codegen")


def test_generated_imports_point_at_the_installed_package(tmp_path: Path) -> None:
    from asymfuse.proto import searcher_pb2, searcher_pb2_grpc

    assert searcher_pb2_grpc.asymfuse_dot_v1_dot_searcher__pb2 is searcher_pb2
    service = searcher_pb2.DESCRIPTOR.services_by_name["Searcher"]
    assert {m.name for m in service.methods} == {"Search", "SearchBatch", "SearchStream", "Upsert", "Delete",
                                                 "GetInfo"}
    assert searcher_pb2.DESCRIPTOR.package == "asymfuse.v1"


def test_unknown_name_is_refused() -> None:
    import asymfuse.proto as proto

    with pytest.raises(AttributeError, match="exports"):
        proto.not_a_module  # noqa: B018
