"""Lorebooks (World Info) and group chats.

A table of lorebooks; characters and chats list the lorebooks attached to them; a chat lists its
members when it is a group chat, with the group's settings; a message records which character
spoke it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "lorebooks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False, server_default=""),
        sa.Column("entries", sa.JSON(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("is_global", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_lorebooks_name", "lorebooks", ["name"], unique=True)
    op.add_column(
        "characters", sa.Column("lorebook_ids", sa.JSON(), nullable=False, server_default="[]")
    )
    for name, default in (("members", "[]"), ("group", "{}"), ("lorebook_ids", "[]")):
        op.add_column(
            "conversations", sa.Column(name, sa.JSON(), nullable=False, server_default=default)
        )
    op.add_column("messages", sa.Column("character_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "character_id")
    for name in ("lorebook_ids", "group", "members"):
        op.drop_column("conversations", name)
    op.drop_column("characters", "lorebook_ids")
    op.drop_index("ix_lorebooks_name", table_name="lorebooks")
    op.drop_table("lorebooks")
