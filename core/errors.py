"""Errors of ours. Each message says what is wrong and what to do; pages show them as they are."""

from __future__ import annotations


class AppError(Exception):
    """Base of every error the app shows to a user."""


class ModelError(AppError):
    """A model cannot be loaded or used: missing or bad file, unknown or unsupported strategy."""


class StoreError(AppError):
    """A database operation was refused or failed; the message says why."""
