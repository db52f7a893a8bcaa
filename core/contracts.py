"""The words the layers say to each other: who speaks (Role), what a reply does (Op), how it
stopped (Stop) and what a saved reply records (ReplyMeta). One definition each, shared by the
prompt formats, the store, the chat service, the pages and the API.

Role, Op and Stop are `StrEnum`s: each member is also its plain string, so the database, JSON
bodies and old callers that pass "char" or "regen" keep working unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    """Who a message is by."""

    USER = "user"
    CHAR = "char"  # the character (or, in a group chat, the member named by the message)
    NARRATOR = "narrator"


ROLES: tuple[str, ...] = tuple(Role)  # ("user", "char", "narrator")

# the setting (app_settings key) that makes "continue" add a new version of the message instead
# of extending the version shown (SillyTavern's way, the default): read by the chat service,
# set through core.settings.AppSettings
CONTINUE_NEW_VERSION = "continue_new_version"


class Op(StrEnum):
    """What a reply does to the chat."""

    NEW = "new"  # the next message
    REGEN = "regen"  # a new version of the last message
    CONTINUE = "continue"  # the last message, made longer
    VERSIONS = "versions"  # several new versions of the last message at once (one batch)

    @property
    def on_last(self) -> bool:
        """It works on the chat's last message (which must still be the one the user saw)."""
        return self is not Op.NEW


class Stop(StrEnum):
    """Why a reply ended (the engine's stop reasons, and the saver's own)."""

    STOP = "stop"  # a stop string: the turn ended
    EOS = "eos"  # the model's end-of-turn token
    LENGTH = "length"  # max_tokens
    CANCEL = "cancel"  # the Stop button, or a client's cancel
    CLOSED = "closed"  # whoever read the reply went away
    INTERRUPTED = "interrupted"  # saved mid-reply and never finished (a crash, a kill)


@dataclass
class ReplyMeta:
    """What a message's `meta` says (the store keeps it as JSON; `from_dict` reads it back, any
    key it does not know kept in `extra`). A message written by a person has no tokens and no
    stop reason."""

    tokens: int | None = None  # new tokens generated (for continue: all of the message's)
    tok_s: float | None = None  # decode speed
    ttft_s: float | None = None  # time to the first token
    stop: str | None = None  # a Stop value
    model: str | None = None  # the model file that wrote it
    before: str | None = None  # text fed just before the reply's header (lore, instructions)
    prompt_tokens: int | None = None  # tokens of the prompt the reply was made from
    fed_tokens: int | None = None  # of those, the ones fed (not restored from the cache)
    edited: bool = False  # changed by hand after it was made
    continued: bool = False  # made longer by continue
    extra: dict[str, Any] = field(default_factory=dict)  # lore, joined, depth_prompt, ...

    _KNOWN = (
        "tokens",
        "tok_s",
        "ttft_s",
        "stop",
        "model",
        "before",
        "prompt_tokens",
        "fed_tokens",
        "edited",
        "continued",
    )

    @classmethod
    def from_dict(cls, meta: dict[str, Any] | None) -> ReplyMeta:
        meta = meta if isinstance(meta, dict) else {}

        def num(key: str) -> Any:
            v = meta.get(key)
            return v if isinstance(v, int | float) and not isinstance(v, bool) else None

        tokens = meta.get("tokens")
        before = meta.get("before")
        return cls(
            tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
            tok_s=num("tok_s"),
            ttft_s=num("ttft_s"),
            stop=meta.get("stop") if isinstance(meta.get("stop"), str) else None,
            model=meta.get("model") if isinstance(meta.get("model"), str) else None,
            before=before if isinstance(before, str) else None,
            prompt_tokens=num("prompt_tokens"),
            fed_tokens=num("fed_tokens"),
            edited=meta.get("edited") is True,
            continued=meta.get("continued") is True,
            extra={k: v for k, v in meta.items() if k not in cls._KNOWN},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for key in self._KNOWN:
            value = getattr(self, key)
            if value not in (None, False):
                out[key] = value
        return out

    @property
    def generated(self) -> bool:
        """Made by the model (whole or in part), not written by a person."""
        return self.tokens is not None or self.stop is not None

    @property
    def stopped_by_user(self) -> bool:
        return self.stop in (Stop.CANCEL, Stop.CLOSED)
