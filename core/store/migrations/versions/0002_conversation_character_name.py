"""Conversations keep their character's name; indexes for the chat list and message order.

A conversation outlives its character when the user deletes the character but keeps the chats
(`character_id` becomes NULL): `character_name` is what the chat list shows then. Existing rows
get the name of their character.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column("character_name", sa.String(), nullable=False, server_default=""),
    )
    op.execute(
        "UPDATE conversations SET character_name = "
        "(SELECT name FROM characters WHERE characters.id = conversations.character_id) "
        "WHERE character_id IS NOT NULL"
    )
    op.create_index("ix_conversations_updated_at", "conversations", ["updated_at"])
    op.drop_index("ix_messages_conversation_id", table_name="messages")
    op.create_index(
        "ix_messages_conversation_position", "messages", ["conversation_id", "position"]
    )


def downgrade() -> None:
    op.drop_index("ix_messages_conversation_position", table_name="messages")
    op.create_index("ix_messages_conversation_id", "messages", ["conversation_id"])
    op.drop_index("ix_conversations_updated_at", table_name="conversations")
    op.drop_column("conversations", "character_name")
