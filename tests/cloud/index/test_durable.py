"""DurableIndex: acknowledged writes survive reopen (log replay), snapshots empty the log, bad files refused."""

from __future__ import annotations

import numpy as np
import pytest

from asymfuse.cloud.index.durable import SNAPSHOT_FILE, WAL_FILE, DurableIndex
from asymfuse.cloud.index.faiss_index import FaissIndex, IndexConfig, UnknownIdError
from asymfuse.cloud.index.index_meta import IndexMeta
from asymfuse.edge.errors import ConfigError, CorruptDataError


def _create(folder, factory="Flat", n=20, d=8):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    index = FaissIndex.create(config=IndexConfig(factory=factory), dim=d)
    index.upsert(np.arange(n), x)
    meta = IndexMeta(dim=d, config=index.config.to_dict(), embedding_space_id="s")
    return DurableIndex.create(folder, meta=meta, index=index), x


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_log_replay_restores_every_acknowledged_write(tmp_path, factory):
    index, x = _create(tmp_path / "ix", factory)
    index.upsert([100, 101], x[:2] * 2, [{"k": "v"}, {}])
    index.delete([3, 100])
    index.upsert([5], x[6:7])
    index.close(snapshot=False)  # as after a crash: the writes exist only in the log
    again = DurableIndex.open(tmp_path / "ix")
    assert again.replayed == 3 and again.size == 20
    assert 100 not in again and 101 in again and 3 not in again
    assert again.search(x[6:7], k=2)[1][0].tolist()[:1] in ([5], [6])
    again.snapshot()
    assert again.wal_bytes() == 0
    again.upsert([200], x[:1])
    again.close(snapshot=False)
    third = DurableIndex.open(tmp_path / "ix")
    assert third.replayed == 1 and 200 in third and third.size == 21
    third.close()


def test_failed_write_changes_nothing(tmp_path):
    index, x = _create(tmp_path / "ix")
    size = index.wal_bytes()
    with pytest.raises(UnknownIdError):
        index.delete([1, 999])
    with pytest.raises(ValueError):
        index.upsert([1], np.ones((1, 3)))
    assert index.wal_bytes() == size and index.size == 20
    index.close()


def test_snapshot_survives_a_crash_between_rename_and_log_truncation(tmp_path):
    index, x = _create(tmp_path / "ix")
    index.upsert([50], x[:1])
    log = (tmp_path / "ix" / WAL_FILE).read_bytes()
    index.snapshot()
    index.close(snapshot=False)
    (tmp_path / "ix" / WAL_FILE).write_bytes(log)  # the truncation "did not happen"
    again = DurableIndex.open(tmp_path / "ix")
    assert again.replayed == 0 and again.size == 21  # the record is in the snapshot; not applied twice
    again.close()


def test_damaged_snapshot_and_existing_folder_are_refused(tmp_path):
    index, _ = _create(tmp_path / "ix")
    index.close()
    with pytest.raises(ConfigError, match="already holds an index"):
        _create(tmp_path / "ix")
    snap = tmp_path / "ix" / SNAPSHOT_FILE
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0x01
    snap.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match="checksum"):
        DurableIndex.open(tmp_path / "ix")
    with pytest.raises(CorruptDataError, match="not an index folder"):
        DurableIndex.open(tmp_path)
