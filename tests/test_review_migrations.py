"""An empty database upgraded to head has exactly the tables db.metadata describes."""

from __future__ import annotations

import pytest

pytest.importorskip("alembic")

import sqlalchemy as sa

from edge_worker.subscribers.review import db
from tests.review_db import postgres_server, review_url  # noqa: F401


def test_empty_database_upgraded_to_head_matches_metadata(review_url: str) -> None:  # noqa: F811
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = db.create_engine(review_url)
    try:
        assert db.current_revision(engine) is None
        db.upgrade(engine)
        assert db.current_revision(engine) == db.HEAD
        names = set(sa.inspect(engine).get_table_names())
        assert {t.name for t in db.metadata.sorted_tables} <= names
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
        assert diff == []
        db.upgrade(engine)  # again: a no-op
        assert db.current_revision(engine) == db.HEAD
    finally:
        engine.dispose()


def test_audit_is_append_only(review_url: str) -> None:  # noqa: F811
    engine = db.open_engine(review_url)
    try:
        with engine.begin() as c:
            c.execute(sa.insert(db.audit).values(at=sa.func.now(), actor="a", action="x", outcome="done",
                                                 detail={}, before=None))  # fmt: skip
        for statement in (sa.update(db.audit).values(actor="b"), sa.delete(db.audit)):
            with pytest.raises(sa.exc.DatabaseError), engine.begin() as c:
                c.execute(statement)
        with engine.connect() as c:
            assert c.execute(sa.select(db.audit.c.actor)).scalars().all() == ["a"]
    finally:
        engine.dispose()
