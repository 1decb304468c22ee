"""The journal keeps one message per image: a re-judged image is re-sent with the same content."""

from __future__ import annotations

from pathlib import Path

from edge_worker.publish.journal import Journal


def test_same_id_keeps_the_first_content_across_reopen(tmp_path: Path) -> None:
    db = tmp_path / "j.sqlite3"
    j = Journal(db)
    first = j.remember("id-1", "verdict", {"score": 1.2, "times": {"seen": "t1"}})
    assert first["score"] == 1.2
    j.close()
    j = Journal(db)
    again = j.remember("id-1", "verdict", {"score": 1.3, "times": {"seen": "t2"}})
    assert again == first  # what was sent once is what is sent again
    j.close()


def test_unqueued_messages_are_replayed_once(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    j.remember("a", "verdict", {"n": 1})
    j.remember("b", "error", {"n": 2})
    assert [m[0] for m in j.unqueued()] == ["a", "b"]
    key = Journal.key(Path("x.dcm"), 10, 123)
    assert j.seen(key) is None
    j.mark_queued(key, "a", "verdict")
    assert j.seen(key) == "a"
    assert [m[0] for m in j.unqueued()] == ["b"]
    j.mark_queued(None, "b", "error")
    assert j.unqueued() == [] and j.count() == 1
    assert j.prune(older_than_s=-1) == 3  # everything is older than "one second in the future"
    j.close()
