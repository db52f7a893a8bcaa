"""What the model saw: the exact prompt text of a reply, in its parts, and how many of its tokens
came from the state cache.

The text is rendered from the stored transcript by the loaded model's prompt format, the way
the engine renders it (`Engine.prompt_text`): the opening, every earlier message with what was
fed before it, what was fed before the reply (lore, post-history instructions, depth prompt),
then the reply's header. So it is what was fed, unless an earlier message was edited or deleted
since (then it is what the model would read now). The token counts are the ones recorded when
the reply was made (its meta: `prompt_tokens`, `fed_tokens`); a message without them (a
greeting, a reply made before they were recorded) gets the prompt's token count now and no
cache figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.chat.context import conversation_context, to_message
from core.errors import StoreError
from core.prompt import Message
from core.store import Store

if TYPE_CHECKING:
    from core.engine import Engine


@dataclass
class PromptView:
    text: str  # the whole prompt, as fed
    parts: list[tuple[str, str]] = field(default_factory=list)  # (kind, text), in order
    prompt_tokens: int = 0  # tokens of the prompt
    fed_tokens: int | None = None  # of those, fed when the reply was made (None: unknown)
    message_id: int | None = None  # the reply (None: the next reply, not made yet)
    recorded: bool = False  # the counts are the reply's own (else counted now)

    @property
    def cached_tokens(self) -> int | None:
        """Tokens that came from the state cache (None when unknown)."""
        return None if self.fed_tokens is None else max(self.prompt_tokens - self.fed_tokens, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "prompt_tokens": self.prompt_tokens,
            "fed_tokens": self.fed_tokens,
            "cached_tokens": self.cached_tokens,
            "recorded": self.recorded,
            "parts": [{"kind": k, "text": t} for k, t in self.parts],
            "text": self.text,
        }


def prompt_view(
    store: Store, engine: Engine, conversation_id: int, message_id: int | None = None
) -> PromptView:
    """The prompt of reply `message_id` of a chat, or of the chat's next reply by its character
    when `message_id` is None."""
    messages = store.list_messages(conversation_id)
    if message_id is None:
        index = len(messages)
        speaker = Message("char")
        meta: dict[str, Any] = {}
    else:
        index = next((i for i, m in enumerate(messages) if m.id == message_id), -1)
        if index < 0:
            raise StoreError(f"Chat {conversation_id} has no message with id {message_id}.")
        target = messages[index]
        speaker = to_message(target)
        speaker.text = ""
        meta = dict(target.meta or {})
    history = [to_message(m) for m in messages[:index]]
    ctx = conversation_context(store, conversation_id, speaker=speaker.name)
    fmt = engine.format
    parts: list[tuple[str, str]] = []
    opening = fmt.opening(ctx)
    if opening:
        parts.append(("opening", opening))
    for msg in history:
        if msg.before:
            parts.append(("before", fmt.note(msg.before, ctx)))
        parts.append(("header", fmt.header(msg, ctx)))
        parts.append(("message", fmt.body(msg.text, msg, ctx)))
    if speaker.before:
        parts.append(("before_reply", fmt.note(speaker.before, ctx)))
    parts.append(("reply_header", fmt.header(speaker, ctx)))
    text = engine.prompt_text(ctx, history, speaker)
    if "".join(t for _, t in parts) != text:  # a format this view does not know: whole text
        parts = [("prompt", text)]
    counted = sum(len(engine.backend.tokenize(t)) for _, t in parts if t)
    prompt_tokens, fed = meta.get("prompt_tokens"), meta.get("fed_tokens")
    if isinstance(prompt_tokens, int) and isinstance(fed, int):
        return PromptView(text, parts, prompt_tokens, fed, message_id, recorded=True)
    return PromptView(text, parts, counted, None, message_id)
