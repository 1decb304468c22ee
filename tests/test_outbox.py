"""The SQLite outbox on its own: order, idempotence, the full policy, durability, threads."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from edge_worker.errors import EdgeWorkerError
from edge_worker.publish.outbox import Outbox, OutboxFull


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite"


def test_pending_in_insertion_order_and_ack_deletes(path: Path) -> None:
    with Outbox(path) as box:
        rows = [box.put("t/v", f"p{i}".encode(), key=f"k{i}").row_id for i in range(5)]
        assert rows == sorted(rows)
        pending = box.pending(limit=10)
        assert [e.key for e in pending] == [f"k{i}" for i in range(5)]
        assert (pending[0].topic, pending[0].payload, pending[0].qos, pending[0].retain) == (
            "t/v", b"p0", 1, False
        )
        assert [e.key for e in box.pending(limit=2, after_id=rows[1])] == ["k2", "k3"]
        assert box.ack(rows[2]) is True
        assert box.ack(rows[2]) is False
        assert [e.key for e in box.pending()] == ["k0", "k1", "k3", "k4"]
        assert box.depth() == 4


def test_same_key_is_one_row_and_first_payload_wins(path: Path) -> None:
    with Outbox(path) as box:
        first = box.put("t", b"one", key="uid-1")
        again = box.put("t", b"two", key="uid-1")
        assert first.created and not again.created
        assert again.row_id == first.row_id
        assert box.depth() == 1
        assert box.pending()[0].payload == b"one"


def test_key_is_forgotten_after_ack(path: Path) -> None:
    with Outbox(path) as box:
        row = box.put("t", b"x", key="k").row_id
        box.ack(row)
        again = box.put("t", b"x", key="k")
        assert again.created and again.row_id > row


def test_row_ids_are_never_reused_after_emptying(path: Path) -> None:
    with Outbox(path) as box:
        first = box.put("t", b"x", key="a").row_id
        box.ack(first)
    with Outbox(path) as box:
        assert box.put("t", b"x", key="b").row_id > first


def test_full_outbox_refuses_new_keys_and_keeps_old_rows(path: Path) -> None:
    with Outbox(path, max_rows=2) as box:
        box.put("t", b"0", key="0")
        box.put("t", b"1", key="1")
        with pytest.raises(OutboxFull) as info:
            box.put("t", b"2", key="2")
        assert isinstance(info.value, EdgeWorkerError)
        assert "limit 2" in str(info.value)
        assert [e.key for e in box.pending()] == ["0", "1"]  # nothing evicted
        assert box.put("t", b"0", key="0").created is False  # a pending key is still accepted
        box.ack(box.pending()[0].row_id)
        assert box.put("t", b"2", key="2").created


def test_survives_reopen(path: Path) -> None:
    with Outbox(path) as box:
        for i in range(3):
            box.put("t", bytes([i]), key=str(i), qos=1, retain=(i == 1))
    with Outbox(path) as box:
        entries = box.pending()
        assert [e.payload for e in entries] == [b"\x00", b"\x01", b"\x02"]
        assert [e.retain for e in entries] == [False, True, False]


def test_uses_wal_journal(path: Path) -> None:
    with Outbox(path):
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            db.close()


def test_rejects_bad_arguments_and_use_after_close(path: Path) -> None:
    with pytest.raises(ValueError):
        Outbox(path, max_rows=0)
    box = Outbox(path)
    with pytest.raises(ValueError):
        box.put("t", b"", key="")
    with pytest.raises(ValueError):
        box.put("t", b"", key="k", qos=3)
    box.close()
    box.close()
    with pytest.raises(RuntimeError, match="closed"):
        box.depth()


def test_refuses_unknown_schema_version(path: Path) -> None:
    Outbox(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(EdgeWorkerError, match="schema version 99"):
        Outbox(path)


def test_concurrent_puts_from_threads(path: Path) -> None:
    with Outbox(path, max_rows=1000) as box:
        def worker(n: int) -> None:
            for i in range(25):
                box.put("t", b"x", key=f"{n}-{i}")
                box.put("t", b"x", key=f"{n}-{i}")  # duplicates race too

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert box.depth() == 100
        ids = [e.row_id for e in box.pending(limit=1000)]
        assert ids == sorted(ids) and len(set(ids)) == 100
