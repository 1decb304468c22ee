"""The first review schema: verdicts, users, reviews, sessions, audit.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "review_verdicts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("site", sa.String(200), nullable=False),
        sa.Column("station", sa.String(200), nullable=False),
        sa.Column("pack_name", sa.String(200), nullable=False),
        sa.Column("pack_version", sa.String(100), nullable=False),
        sa.Column("pack_digest", sa.String(64), nullable=False),
        sa.Column("view", sa.String(100), nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("reason_codes", sa.JSON, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index("ix_review_verdicts_status", "review_verdicts", ["status"])
    op.create_index("ix_review_verdicts_received_at", "review_verdicts", ["received_at"])
    op.create_table(
        "review_users",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("role", sa.String(10), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
    )
    op.create_table(
        "review_reviews",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("verdict_id", sa.String(36), sa.ForeignKey("review_verdicts.id"), nullable=False),
        sa.Column("tier", sa.Integer, nullable=False),
        sa.Column("user_name", sa.String(100), sa.ForeignKey("review_users.name"), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("flags", sa.JSON, nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index("ix_review_reviews_verdict", "review_reviews", ["verdict_id"])
    op.create_table(
        "review_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_name", sa.String(100), sa.ForeignKey("review_users.name"), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
    )
    op.create_table(
        "review_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("verdict_id", sa.String(36), nullable=True),
        sa.Column("outcome", sa.String(30), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("before", sa.JSON, nullable=True),
    )


def downgrade() -> None:
    for table in ("review_audit", "review_sessions", "review_reviews", "review_users", "review_verdicts"):
        op.drop_table(table)
