"""The review store's tables (SQLAlchemy 2 Core) and their versioned migrations (Alembic).

One library for SQLite (``sqlite:///path``, the default) and PostgreSQL
(``postgresql+psycopg://user@host:port/db``).  :func:`upgrade` brings any database to the
newest migration programmatically (no ``alembic.ini``); :func:`open_engine` does that at start.
The migrations live in ``migrations/versions``; :data:`metadata` must always describe what the
newest one builds (``tests/test_review_migrations.py`` compares them).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from edge_worker.subscribers.review.errors import StoreUnavailable

MIGRATIONS = Path(__file__).with_name("migrations")
HEAD = "0004"

metadata = sa.MetaData()

#: Every verdict the dashboard received, once (id = the verdict's id), and where review stands.
verdicts = sa.Table(
    "review_verdicts",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("site", sa.String(200), nullable=False),
    sa.Column("station", sa.String(200), nullable=False),
    sa.Column("pack_name", sa.String(200), nullable=False),
    sa.Column("pack_version", sa.String(100), nullable=False),
    sa.Column("pack_digest", sa.String(64), nullable=False),
    sa.Column("view", sa.String(100), nullable=False),
    sa.Column("decision", sa.String(20), nullable=False),
    sa.Column("reason_codes", sa.JSON, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    # new | good | questionable | disputed | reopened | final_good | final_bad (store.Status)
    sa.Column("status", sa.String(20), nullable=False),
    # Optimistic concurrency: every change names the version it saw and raises it by one.
    sa.Column("version", sa.Integer, nullable=False),
    sa.Index("ix_review_verdicts_status", "status"),
    sa.Index("ix_review_verdicts_received_at", "received_at"),
)

users = sa.Table(
    "review_users",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("role", sa.String(10), nullable=False),  # tier1 | tier2 | admin
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False),
)

#: One row per human change of a verdict: a tier-one or tier-two review, or a reopening.
reviews = sa.Table(
    "review_reviews",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("verdict_id", sa.String(36), sa.ForeignKey("review_verdicts.id"), nullable=False),
    sa.Column("tier", sa.Integer, nullable=False),
    sa.Column("user_name", sa.String(100), sa.ForeignKey("review_users.name"), nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),  # good | questionable | bad | reopen
    sa.Column("flags", sa.JSON, nullable=False),
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),  # the verdict's version this change made
    sa.Index("ix_review_reviews_verdict", "verdict_id"),
)

sessions = sa.Table(
    "review_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),  # sha256 hex; the token is never stored
    sa.Column("user_name", sa.String(100), sa.ForeignKey("review_users.name"), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("csrf_token", sa.String(64), nullable=False),
)

#: Append-only: who did or tried what, when, and the value before, as JSON.
audit = sa.Table(
    "review_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("action", sa.String(50), nullable=False),
    sa.Column("verdict_id", sa.String(36), nullable=True),
    sa.Column("outcome", sa.String(30), nullable=False),  # done | refused:<code>
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("before", sa.JSON, nullable=True),
)

#: The reduced copy of the image each verdict was about (``copies.py``).  No foreign key to
#: review_verdicts: a copy may arrive before its verdict (two topics, no order between them).
copies = sa.Table(
    "review_copies",
    metadata,
    sa.Column("verdict_id", sa.String(36), primary_key=True),
    sa.Column("media_type", sa.String(30), nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("scale", sa.Float, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False),  # len(data): pruning by size reads no images
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_review_copies_received_at", "received_at"),
)

#: One row per rejection command (``rejections.py``): a ``reject`` written in the same
#: transaction as the review that confirmed a retake, or a ``withdraw`` written with a tier-two
#: reversal.  The id is the command's (uuid5 of verdict id, action, review version), the same on
#: every re-publish.  ``state``: pending (no answer yet) | queued | sent | refused (the worker's
#: answer, ``docs/review.md``) | cancelled (a withdraw whose reject was refused: nothing to undo).
rejections = sa.Table(
    "review_rejections",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("verdict_id", sa.String(36), sa.ForeignKey("review_verdicts.id"), nullable=False),
    sa.Column("action", sa.String(10), nullable=False),  # reject | withdraw
    sa.Column("reason_scheme", sa.String(10), nullable=True),  # reject only: DCM
    sa.Column("reason_code", sa.String(20), nullable=True),  # a CID 7011 code value
    sa.Column("confirmed_by", sa.String(100), nullable=False),
    sa.Column("tier", sa.Integer, nullable=False),
    sa.Column("review_version", sa.Integer, nullable=False),
    sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("state", sa.String(10), nullable=False),
    sa.Column("result_reason", sa.String(50), nullable=True),
    sa.Column("result_detail", sa.Text, nullable=True),
    sa.Column("document_uid", sa.String(64), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_review_rejections_state", "state"),
    sa.Index("ix_review_rejections_verdict", "verdict_id"),
)

UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError)


def _alembic_config(connection: sa.Connection) -> object:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def create_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys on and a busy timeout."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: object, _record: object) -> None:
            # pysqlite's own transaction handling off, so "begin" below decides how one starts.
            dbapi_conn.isolation_level = None  # type: ignore[attr-defined]
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # IMMEDIATE: take the write lock at the start.  A deferred transaction that read a
            # snapshot and then writes after another writer committed fails at once with
            # SQLITE_BUSY_SNAPSHOT; with the lock taken first the second reviewer waits, then
            # sees the new version and gets a Conflict, as on PostgreSQL.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` (default the newest), creating it from empty.

    Raises :class:`StoreUnavailable` when the database cannot be reached.
    """
    from alembic import command

    engine = create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), revision)  # type: ignore[arg-type]
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"review database unavailable: {exc.orig if hasattr(exc, 'orig') else exc}") from exc
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision (``None``: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def open_engine(url: str) -> Engine:
    """An engine for ``url`` with the database upgraded to the newest migration."""
    engine = create_engine(url)
    upgrade(engine)
    return engine
