from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType

class Vector(_message.Message):
    __slots__ = ("data", "dim", "dtype")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dim: int
    dtype: DType
    def __init__(self, data: _Optional[bytes] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class LocalDescriptors(_message.Message):
    __slots__ = ("data", "count", "dim", "dtype", "mask")
    DATA_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    count: int
    dim: int
    dtype: DType
    mask: bytes
    def __init__(self, data: _Optional[bytes] = ..., count: _Optional[int] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., mask: _Optional[bytes] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("field", "values")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    field: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, field: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchOptions(_message.Message):
    __slots__ = ("k", "rerank_top_m", "disable_rerank", "filter")
    K_FIELD_NUMBER: _ClassVar[int]
    RERANK_TOP_M_FIELD_NUMBER: _ClassVar[int]
    DISABLE_RERANK_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    k: int
    rerank_top_m: int
    disable_rerank: bool
    filter: Filter
    def __init__(self, k: _Optional[int] = ..., rerank_top_m: _Optional[int] = ..., disable_rerank: _Optional[bool] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("embedding_space_id", "query", "locals", "options", "request_id")
    EMBEDDING_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LOCALS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    embedding_space_id: str
    query: Vector
    locals: LocalDescriptors
    options: SearchOptions
    request_id: str
    def __init__(self, embedding_space_id: _Optional[str] = ..., query: _Optional[_Union[Vector, _Mapping]] = ..., locals: _Optional[_Union[LocalDescriptors, _Mapping]] = ..., options: _Optional[_Union[SearchOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "global_score", "reranked", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    RERANKED_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: int
    score: float
    global_score: float
    reranked: bool
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[int] = ..., score: _Optional[float] = ..., global_score: _Optional[float] = ..., reranked: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "request_id", "num_reranked", "latency_ms")
    HITS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_RERANKED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    request_id: str
    num_reranked: int
    latency_ms: float
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., request_id: _Optional[str] = ..., num_reranked: _Optional[int] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SearchRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SearchRequest, _Mapping]]] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "vector", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: int
    vector: Vector
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[int] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("embedding_space_id", "items")
    EMBEDDING_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    embedding_space_id: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, embedding_space_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted", "size", "sequence")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    size: int
    sequence: int
    def __init__(self, upserted: _Optional[int] = ..., size: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("embedding_space_id", "ids")
    EMBEDDING_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    embedding_space_id: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, embedding_space_id: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "size", "sequence")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    size: int
    sequence: int
    def __init__(self, deleted: _Optional[int] = ..., size: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("size", "dim", "metric", "embedding_space_id", "model_spec_json", "ames_enabled", "ames_local_dim", "factory", "max_k", "max_batch", "default_k", "default_rerank_top_m")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    AMES_ENABLED_FIELD_NUMBER: _ClassVar[int]
    AMES_LOCAL_DIM_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_K_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RERANK_TOP_M_FIELD_NUMBER: _ClassVar[int]
    size: int
    dim: int
    metric: str
    embedding_space_id: str
    model_spec_json: str
    ames_enabled: bool
    ames_local_dim: int
    factory: str
    max_k: int
    max_batch: int
    default_k: int
    default_rerank_top_m: int
    def __init__(self, size: _Optional[int] = ..., dim: _Optional[int] = ..., metric: _Optional[str] = ..., embedding_space_id: _Optional[str] = ..., model_spec_json: _Optional[str] = ..., ames_enabled: _Optional[bool] = ..., ames_local_dim: _Optional[int] = ..., factory: _Optional[str] = ..., max_k: _Optional[int] = ..., max_batch: _Optional[int] = ..., default_k: _Optional[int] = ..., default_rerank_top_m: _Optional[int] = ...) -> None: ...
