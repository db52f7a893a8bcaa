"""Removed messages and versions are kept for an undo until the next compaction.

A delete, a rewind or a "delete this version" records a removal (table `removals`, with the
token an undo names); the messages it removed stay in `messages`, pointing at it
(`removal_id`), and every read of a chat skips them. A compaction deletes old removals and
their messages for good.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "removals",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token", sa.String(), nullable=False),
        sa.Column(
            "conversation_id", sa.Integer(), sa.ForeignKey("conversations.id"), nullable=False
        ),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_removals_token", "removals", ["token"], unique=True)
    op.create_index("ix_removals_conversation_id", "removals", ["conversation_id"])
    # no foreign key: SQLite adds one only by copying the whole table (months of messages);
    # the store deletes a removal and its messages together
    op.add_column("messages", sa.Column("removal_id", sa.Integer(), nullable=True))
    op.create_index("ix_messages_removal_id", "messages", ["removal_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_removal_id", table_name="messages")
    op.drop_column("messages", "removal_id")
    op.drop_index("ix_removals_conversation_id", table_name="removals")
    op.drop_index("ix_removals_token", table_name="removals")
    op.drop_table("removals")
