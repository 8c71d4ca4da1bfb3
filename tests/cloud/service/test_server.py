"""The searcher over gRPC on loopback: results against NumPy, writes, auth, status codes, health."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asymfuse.cloud.index.durable import DurableIndex
from asymfuse.cloud.index.milvus_index import MilvusIndex
from asymfuse.cloud.service.config import ServerConfig
from asymfuse.cloud.service.server import create_server
from asymfuse.edge.errors import ConfigError, IncompatibleModelError, RemoteError
from asymfuse.edge.wire import pack_vector
from asymfuse.proto import searcher_pb2 as pb
from asymfuse.proto import searcher_pb2_grpc as pbg

from .conftest import API_KEY, DIM, N, SPACE, client, copy_folder, unit_vectors


def brute_force(gallery: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = gallery @ q
    order = np.lexsort((np.arange(len(s)), -s))[:k]
    return order, s[order]


def test_flat_search_equals_numpy_brute_force(served_any, gallery):
    _, port = served_any
    queries = unit_vectors(20, DIM, seed=5)
    with client(port) as c:
        for q in queries:
            hits = c.search(q, k=25)
            want_ids, want_scores = brute_force(gallery, q, 25)
            assert [h.id for h in hits] == want_ids.tolist()
            np.testing.assert_allclose([h.score for h in hits], want_scores, atol=1e-5)
            assert hits[0].metadata["key"] == f"img{want_ids[0]:05d}.jpg"
        batch = c.search_batch(queries[:3], k=5)
        stream = list(c.search_stream(iter(queries[:3]), k=5))
    for q, b, s in zip(queries[:3], batch, stream):
        assert [h.id for h in b] == [h.id for h in s] == brute_force(gallery, q, 5)[0].tolist()


def test_float16_queries_rank_like_float32(served, gallery):
    _, port = served
    q = unit_vectors(1, DIM, seed=9)[0]
    with client(port, half=True) as c:
        hits = c.search(q, k=5)
    assert [h.id for h in hits][:3] == brute_force(gallery, q, 3)[0].tolist()


def test_upsert_delete_and_filter_over_grpc(served_any, gallery):
    server, port = served_any
    new = unit_vectors(3, DIM, seed=11)
    with client(port) as c:
        seq = c.upsert([10_000, 10_001, 10_002], new, [{"shop": "a"}, {"shop": "b"}, {"shop": "a"}])
        assert c.info()["size"] == N + 3
        assert c.search(new[1], k=1)[0].id == 10_001
        only_a = c.search(new[1], k=5, filter_=("shop", ["a"]))
        assert sorted(h.id for h in only_a) == [10_000, 10_002]
        seq2 = c.delete([10_001, 3])
        assert seq2 > seq
        assert c.info()["size"] == N + 1
        assert all(h.id not in (10_001, 3) for h in c.search(new[1], k=50))
        with pytest.raises(RemoteError, match="NOT_FOUND"):
            c.delete([10_001])  # already gone
        with pytest.raises(RemoteError, match="NOT_FOUND"):
            c.delete([10_000, 999_999])  # all or nothing: 10_000 stays
        assert c.search(new[0], k=1)[0].id == 10_000


def test_writes_survive_a_restart(served_any, tmp_path):
    server, port = served_any
    new = unit_vectors(2, DIM, seed=12)
    with client(port) as c:
        c.upsert([20_000, 20_001], new)
        c.delete([0])
    index = server.searcher.index
    server.stop(0)
    reopen = (lambda: DurableIndex.open(index.folder)) if isinstance(index, DurableIndex) else \
        (lambda: MilvusIndex.open(index.target))  # a new Milvus client: every acknowledged write is there
    with reopen() as index:
        assert index.size == N + 1 and 20_001 in index and 0 not in index


def test_writes_need_an_api_key(served):
    _, port = served
    x = unit_vectors(1, DIM, seed=1)
    for key in (None, "wrong-key"):
        with client(port, key=key) as c:
            with pytest.raises(RemoteError, match="UNAUTHENTICATED"):
                c.upsert([1], x)
            with pytest.raises(RemoteError, match="UNAUTHENTICATED"):
                c.delete([1])
            assert len(c.search(x[0], k=3)) == 3  # reads are open by default


def test_another_embedding_space_is_refused_with_both_ids(served_any):
    _, port = served_any
    with client(port, space="old-space") as c:
        with pytest.raises(IncompatibleModelError) as err:
            c.search(unit_vectors(1, DIM, seed=1)[0])
    assert err.value.server_space == SPACE and err.value.client_space == "old-space"
    assert "update the phone's query model" in str(err.value) and "re-index" in str(err.value)
    with pytest.raises(IncompatibleModelError) as err:  # refused on connect, before any query
        client(port, space="old-space", check_on_connect=True)
    assert err.value.server_space == SPACE and "re-index the gallery" in str(err.value)
    with client(port, check_on_connect=True) as c:
        assert c.check_space()["embedding_space_id"] == SPACE


def test_a_server_at_a_wrong_address_fails_within_the_deadline():
    """Retries on UNAVAILABLE (refused connections) stop at the call's deadline."""
    import socket
    import time

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with client(port, retries=50, timeout_s=1.0) as c, pytest.raises(RemoteError) as err:
        c.search(unit_vectors(1, DIM, seed=1)[0])
    assert time.monotonic() - start < 3.0 and err.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    with pytest.raises(RemoteError):
        client(port, retries=0, timeout_s=0.5, check_on_connect=True)


def test_stream_with_locals_and_pad_shape_errors(served, gallery):
    """A streamed query may be ``(vector, locals_, pad)``; a pad of the wrong length is refused locally."""
    from asymfuse.edge.errors import ShapeError

    _, port = served
    q = unit_vectors(2, DIM, seed=4)
    locs = np.ones((3, 8), np.float32)
    with client(port) as c:
        out = list(c.search_stream([q[0], (q[1], locs, np.array([False, False, True]))], k=4))
        assert [h.id for h in out[0]] == brute_force(gallery, q[0], 4)[0].tolist()
        assert [h.id for h in out[1]] == brute_force(gallery, q[1], 4)[0].tolist()  # no AMES: global order
        with pytest.raises(ShapeError, match="one bool per row"):
            c.search(q[0], locals_=locs, pad=np.zeros(2, bool))


def _stub(port):
    return pbg.SearcherStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def _req(vec=None, *, dim=DIM, k=5, space=SPACE, data=None):
    v = pack_vector(vec if vec is not None else unit_vectors(1, dim, seed=2)[0])
    if data is not None:
        v = pb.Vector(data=data, dim=dim)
    return pb.SearchRequest(embedding_space_id=space, query=v, options=pb.SearchOptions(k=k))


BAD = {
    "wrong dim": (_req(dim=DIM + 1), grpc.StatusCode.INVALID_ARGUMENT),
    "NaN": (_req(data=np.full(DIM, np.nan, "<f4").tobytes()), grpc.StatusCode.INVALID_ARGUMENT),
    "Inf": (_req(data=np.full(DIM, np.inf, "<f4").tobytes()), grpc.StatusCode.INVALID_ARGUMENT),
    "byte count": (_req(data=b"\x00" * 7), grpc.StatusCode.INVALID_ARGUMENT),
    "k above max": (_req(k=10_000), grpc.StatusCode.INVALID_ARGUMENT),
    "missing vector": (pb.SearchRequest(embedding_space_id=SPACE), grpc.StatusCode.INVALID_ARGUMENT),
    "other space": (_req(space="nope"), grpc.StatusCode.FAILED_PRECONDITION),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_search_requests_get_their_status(served, case):
    _, port = served
    request, code = BAD[case]
    with pytest.raises(grpc.RpcError) as err:
        _stub(port).Search(request, timeout=10)
    assert err.value.code() == code, err.value.details()


def test_bad_search_requests_get_their_status_on_milvus(served_milvus):
    """The same status codes from a Milvus-backed searcher (one collection for every case)."""
    _, port = served_milvus
    for case, (request, code) in sorted(BAD.items()):
        with pytest.raises(grpc.RpcError) as err:
            _stub(port).Search(request, timeout=10)
        assert err.value.code() == code, (case, err.value.details())


def test_an_unreachable_milvus_fails_at_start_and_maps_to_unavailable():
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed: pip install 'asymfuse[milvus]'")
    import socket
    import time

    from asymfuse.cloud.index.base import IndexUnavailableError
    from asymfuse.cloud.service.servicer import status_of

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(IndexUnavailableError, match="unreachable"):
        create_server(ServerConfig(index_dir=f"milvus://127.0.0.1:{port}/gallery", milvus_timeout_s=2))
    assert time.monotonic() - start < 5
    assert status_of(IndexUnavailableError("x")) == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ConfigError, match="milvus://"):
        ServerConfig(index_dir="runs/index", ames_checkpoint="ames.pt")


def test_batch_limits_and_garbage_bytes(served):
    _, port = served
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pbg.SearcherStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.SearchBatch(pb.SearchBatchRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stub.SearchBatch(pb.SearchBatchRequest(requests=[_req()] * 9), timeout=10)  # max_batch 8
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as err:  # above max_message_bytes (1 MiB)
        stub.Search(_req(data=b"\x00" * (2 << 20)), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    raw = channel.unary_unary("/asymfuse.v1.Searcher/Search")
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff\xff not a protobuf", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(stub.Search(_req(), timeout=10).hits) == 5  # the server lives on


def test_health_reflection_and_info(served_any):
    server, port = served_any
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "asymfuse.v1.Searcher"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"asymfuse.v1.Searcher", "grpc.health.v1.Health"} <= names
    with client(port) as c:
        info = c.info()
    assert info["embedding_space_id"] == SPACE and info["dim"] == DIM and info["size"] == N
    assert info["model_spec"] == {"name": "toy-query-net", "input_size": 64}
    assert info["factory"] == ("Flat" if isinstance(server.searcher.index, DurableIndex) else "milvus:FLAT")
    assert info["ames_enabled"] is False


def test_requests_are_logged_without_the_key(served, caplog):
    _, port = served
    with caplog.at_level("INFO", logger="asymfuse.service"), client(port) as c:
        c.upsert([30_000], unit_vectors(1, DIM, seed=3))
        with pytest.raises(IncompatibleModelError):
            client(port, space="x").search(unit_vectors(1, DIM, seed=3)[0])
    text = caplog.text
    assert "Upsert OK" in text and "Search FAILED_PRECONDITION" in text
    assert API_KEY not in text


class _RecordingIndex:
    """Delegates to the real durable index and notes the OpenMP thread count of each search."""

    def __init__(self, index):
        self._index, self.seen = index, []

    def search(self, xq, **kw):
        import faiss

        self.seen.append(faiss.omp_get_max_threads())
        return self._index.search(xq, **kw)

    def __getattr__(self, name):
        return getattr(self._index, name)


def test_faiss_threads_hold_for_the_search_only_and_leave_torch_alone(tmp_path, flat_folder, gallery):
    """``faiss_threads`` is set around each faiss call; a server start and searches on this thread
    leave its torch and OpenMP counts as they were (a process-wide set once leaked into a trainer
    run later in the same process)."""
    import faiss
    import torch

    from asymfuse.cloud.service.loader import open_searcher

    before = (torch.get_num_threads(), faiss.omp_get_max_threads())
    server, _ = create_server(ServerConfig(index_dir=str(copy_folder(flat_folder, tmp_path / "a")),
                                           snapshot_interval_s=0, faiss_threads=1))
    server.stop(0)
    searcher = open_searcher(ServerConfig(index_dir=str(copy_folder(flat_folder, tmp_path / "b")), faiss_threads=1))
    try:
        searcher.index = _RecordingIndex(searcher.index)
        result = searcher.search(gallery[7], k=3)
        assert searcher.index.seen == [1]
        assert result.hits[0].id == 7
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == before
    finally:
        searcher.index.close(snapshot=False)
