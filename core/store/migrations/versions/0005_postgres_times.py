"""PostgreSQL: every time column with a time zone, as the models declare them.

Revisions 0003 and 0004 made the times of `lorebooks` and `removals` plain `DateTime()`; on
SQLite that is the same column as the others' (SQLite keeps no time zone), on PostgreSQL it is
`timestamp without time zone` where the models want `timestamptz`. The values are UTC: they are
read as such. Nothing to do on SQLite.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = (("lorebooks", "created_at"), ("lorebooks", "updated_at"), ("removals", "created_at"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in _COLUMNS:
        op.execute(
            f"ALTER TABLE {table} ALTER COLUMN {column} TYPE timestamptz "
            f"USING {column} AT TIME ZONE 'UTC'"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in _COLUMNS:
        op.execute(
            f"ALTER TABLE {table} ALTER COLUMN {column} TYPE timestamp "
            f"USING {column} AT TIME ZONE 'UTC'"
        )
