"""Property-based fuzzing of the wire: garbage dims, NaN, huge k, random bytes, random filters and
deletes. The server never dies and always answers OK or a documented status code."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asymfuse.proto import searcher_pb2 as pb
from asymfuse.proto import searcher_pb2_grpc as pbg

from .conftest import API_KEY, DIM, SPACE

DOCUMENTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED}
AUTH = (("authorization", f"Bearer {API_KEY}"),)

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
dims = st.one_of(st.just(DIM), st.integers(0, 70), st.integers(0, 2**32 - 1))


def _vector(dim: int, values: list[float], dtype: int, raw: bytes, use_raw: bool) -> pb.Vector:
    with np.errstate(over="ignore"):  # float16 overflow to inf is part of the garbage
        data = raw if use_raw else np.asarray(values, dtype="<f2" if dtype == 2 else "<f4").tobytes()
    return pb.Vector(dim=dim, dtype=dtype, data=data)


vectors = st.builds(_vector, dims, st.lists(floats, max_size=70), st.integers(0, 3), st.binary(max_size=300),
                    st.booleans())
options = st.builds(lambda k, m, off, field, values: pb.SearchOptions(
    k=k, rerank_top_m=m, disable_rerank=off, filter=pb.Filter(field=field, values=values)),
    st.one_of(st.integers(0, 20), st.integers(0, 2**32 - 1)), st.integers(0, 5000), st.booleans(),
    st.sampled_from(["", "key", "shop", "\x00"]), st.lists(st.text(max_size=12), max_size=3))
locals_ = st.builds(lambda count, dim, raw, mask: pb.LocalDescriptors(count=count, dim=dim, data=raw, mask=mask),
                    st.integers(0, 10_000), st.integers(0, 200), st.binary(max_size=400), st.binary(max_size=20))
requests = st.builds(lambda space, q, o, loc, use_loc: pb.SearchRequest(
    embedding_space_id=space, query=q, options=o, locals=loc if use_loc else None),
    st.one_of(st.just(SPACE), st.text(max_size=10)), vectors, options, locals_, st.booleans())


def _code(call) -> grpc.StatusCode:
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


@pytest.fixture
def stub(served):
    _, port = served
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pbg.SearcherStub(channel), channel
    channel.close()


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests)
def test_search_answers_a_documented_code(stub, request):
    s, _ = stub
    assert _code(lambda: s.Search(request, timeout=10)) in DOCUMENTED
    assert _code(lambda: s.SearchBatch(pb.SearchBatchRequest(requests=[request] * 2), timeout=10)) in DOCUMENTED


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(-2**63, 2**63 - 1), max_size=5), vec=vectors, space=st.sampled_from([SPACE, "x"]),
       auth=st.booleans())
def test_writes_answer_a_documented_code(stub, ids, vec, space, auth):
    s, _ = stub
    md = AUTH if auth else ()
    up = pb.UpsertRequest(embedding_space_id=space, items=[pb.Item(id=i, vector=vec) for i in ids])
    assert _code(lambda: s.Upsert(up, timeout=10, metadata=md)) in DOCUMENTED
    de = pb.DeleteRequest(embedding_space_id=space, ids=ids)
    assert _code(lambda: s.Delete(de, timeout=10, metadata=md)) in DOCUMENTED


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=500), method=st.sampled_from(["Search", "SearchBatch", "Upsert", "Delete", "GetInfo"]))
def test_random_bytes_answer_a_documented_code(stub, raw, method):
    s, channel = stub
    call = channel.unary_unary(f"/asymfuse.v1.Searcher/{method}")
    assert _code(lambda: call(raw, timeout=10, metadata=AUTH)) in DOCUMENTED
    # and the server is still alive and right
    good = pb.SearchRequest(embedding_space_id=SPACE, query=pb.Vector(data=np.ones(DIM, "<f4").tobytes(), dim=DIM))
    assert len(s.Search(good, timeout=10).hits) == 10
