"""The review copies: the reduced image each verdict was about, as the worker sent it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_copies",
        sa.Column("verdict_id", sa.String(36), primary_key=True),
        sa.Column("media_type", sa.String(30), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("scale", sa.Float, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_review_copies_received_at", "review_copies", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_review_copies_received_at", "review_copies")
    op.drop_table("review_copies")
