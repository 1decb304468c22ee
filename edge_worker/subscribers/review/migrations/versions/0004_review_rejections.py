"""The rejection commands: a Key Object Selection "Rejected for Quality Reasons" asked of the
worker only after a person confirmed the retake (``rejections.py``), with the worker's answer.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_rejections",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("verdict_id", sa.String(36), sa.ForeignKey("review_verdicts.id"), nullable=False),
        sa.Column("action", sa.String(10), nullable=False),
        sa.Column("reason_scheme", sa.String(10), nullable=True),
        sa.Column("reason_code", sa.String(20), nullable=True),
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
    )
    op.create_index("ix_review_rejections_state", "review_rejections", ["state"])
    op.create_index("ix_review_rejections_verdict", "review_rejections", ["verdict_id"])


def downgrade() -> None:
    op.drop_index("ix_review_rejections_verdict", "review_rejections")
    op.drop_index("ix_review_rejections_state", "review_rejections")
    op.drop_table("review_rejections")
