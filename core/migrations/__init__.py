"""Alembic migrations of the app database, run in code by `core.db.upgrade_db`."""
