"""Alembic migrations of the app database, run in code by `core.store.upgrade_db`."""
