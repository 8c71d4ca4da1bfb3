"""The write-ahead log: round trip, a torn tail dropped and cut, mid-file damage refused."""

from __future__ import annotations

import numpy as np
import pytest

from asymfuse.cloud.index.ops import Delete, Upsert, decode, encode_delete, encode_upsert
from asymfuse.cloud.index.wal import WriteAheadLog, read_records
from asymfuse.edge.errors import CorruptDataError


def _log(tmp_path, n=5):
    wal, scan = WriteAheadLog.open(tmp_path / "wal.log", next_sequence=10)
    assert scan.records == []
    for i in range(n):
        assert wal.append(f"payload-{i}".encode() * (i + 1)) == 10 + i
    wal.close()
    return tmp_path / "wal.log"


def test_round_trip_in_order(tmp_path):
    scan = read_records(_log(tmp_path))
    assert [r.sequence for r in scan.records] == list(range(10, 15))
    assert scan.records[2].payload == b"payload-2" * 3 and scan.torn_bytes == 0


@pytest.mark.parametrize("cut", [1, 5, 19, 25])
def test_torn_last_record_is_dropped_and_cut_off(tmp_path, cut):
    path = _log(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    scan = read_records(path)
    assert [r.sequence for r in scan.records] == list(range(10, 14)) and scan.torn_bytes > 0
    wal, _ = WriteAheadLog.open(path, next_sequence=0)
    assert wal.append(b"after") == 14  # numbering continues after the intact prefix
    wal.close()
    assert [r.payload for r in read_records(path).records][-1] == b"after"


def test_damage_before_intact_records_is_corruption(tmp_path):
    path = _log(tmp_path)
    data = bytearray(path.read_bytes())
    data[30] ^= 0xFF  # inside the first record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match="disk corruption"):
        read_records(path)


def test_ops_encode_and_decode():
    ids = np.array([5, 9], np.int64)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    up = decode(encode_upsert(ids, x, [{"a": "b"}, {}]))
    assert isinstance(up, Upsert) and up.ids.tolist() == [5, 9] and np.array_equal(up.vectors, x)
    assert up.metadata == [{"a": "b"}, {}]
    de = decode(encode_delete(ids))
    assert isinstance(de, Delete) and de.ids.tolist() == [5, 9]
    with pytest.raises(CorruptDataError):
        decode(b"X" + bytes(8))
    with pytest.raises(CorruptDataError):
        decode(encode_upsert(ids, x, None)[:-5])
