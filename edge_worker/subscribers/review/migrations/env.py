"""Alembic environment: run on the connection :func:`edge_worker.subscribers.review.db.upgrade`
passes in ``config.attributes`` (no alembic.ini, no URL in a file)."""

from __future__ import annotations

from alembic import context

from edge_worker.subscribers.review.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
