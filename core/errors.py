"""Errors of ours. Each message says what is wrong and what to do; pages show them as they are."""

from __future__ import annotations


class AppError(Exception):
    """Base of every error the app shows to a user."""


class ModelError(AppError):
    """A model cannot be loaded or used: missing or bad file, unknown or unsupported strategy."""


class ModelUnavailable(ModelError):
    """No model can make a reply now; `code` says why, for API clients: "model_unloaded" (the
    user unloaded it in Settings) or "model_not_loaded" (the model chosen could not be
    loaded). The API answers 503."""

    def __init__(self, message: str, code: str = "model_not_loaded") -> None:
        super().__init__(message)
        self.code = code


class StoreError(AppError):
    """A database operation was refused or failed; the message says why."""


class StoreUnavailable(StoreError):
    """The database cannot be used now, whatever was asked: busy (another program writes), the
    disk is full, the file is damaged. Nothing was changed. The API answers 503."""


class NotFound(StoreError):
    """What was asked for does not exist (any more): a character, chat, message, lorebook...
    The API answers 404."""


class Conflict(StoreError):
    """The request no longer fits what is stored: the chat changed since it was read, the
    message is not the last one, there is nothing to regenerate. The API answers 409; `code`
    names the case for clients."""

    def __init__(self, message: str, code: str = "conflict") -> None:
        super().__init__(message)
        self.code = code
