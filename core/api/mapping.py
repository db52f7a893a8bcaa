"""OpenAI-style request bodies -> what the engine takes: sampling, stops, and a chat's messages
as a CharacterContext, a history and a speaker.

Messages map onto the same prompt chunks as the app's own chats (docs/ARCHITECTURE.md, "One
chat turn"), and the mapping depends only on the messages themselves, so a chat that a client
resends whole every turn (SillyTavern does) renders the same chunks each turn, and the engine
restores everything but the new tokens from its state cache:

- leading system messages (before the first user or assistant message) are the opening, kept
  verbatim (CharacterContext.system_prompt), in order; the system messages named
  `example_user` / `example_assistant` in that block (SillyTavern's example dialogue) become
  `Name: text` lines at their place in it;
- user -> role "user", assistant -> role "char", each with its `name`; a later system message
  -> a narrator message; example messages after the opening -> lines of their speaker;
- the names: `user_name` / `assistant_name` request fields (as RWKV-Runner takes them), else
  the first `name` given on a user / an assistant message, else "User" / "Assistant"; a name
  made only of underscores (SillyTavern's sanitised non-Latin name) counts as none;
- a trailing assistant message with text is continued (a prefill); with no text, it only names
  who speaks next; otherwise the assistant speaks next;
- with `notes_at_reply` (the server setting `api_notes_at_reply`, on by default for RWKV), the
  system messages among the last NOTE_MAX_DEPTH messages (SillyTavern's Author's Note and a
  card's Character's Note, injected at depth 4 by default) are fed next to the reply (depth 0,
  where the app's own chats put such notes; before the message being continued, for a
  prefill) and are not part of the transcript kept for the next turn (Message.note): a note
  that moves every turn would otherwise make each turn read the messages after it again. A
  narrator line (a system message) within that depth is fed so too, and at its place once
  older.

Request fields are checked here (types, ranges, what we cannot honour), each refusal an ApiError
400 naming its `param`. Unknown fields are ignored: clients send dozens of sampler settings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

from core.api.errors import ApiError
from core.engine.sampler import (
    MAX_BREAKER_CHARS,
    MAX_BREAKERS,
    MAX_DRY_ALLOWED,
    MAX_DRY_BASE,
    MAX_DRY_MULTIPLIER,
    MAX_DRY_RANGE,
    SamplingParams,
)
from core.prompt import DEFAULT_CHAR, DEFAULT_USER, CharacterContext, Message

MAX_TOKENS_LIMIT = 8192  # a request asking for more tokens than this is refused
MAX_N = 8  # alternatives in one request
MAX_STOPS = 64  # stop strings in one request
MAX_STOP_CHARS = 500  # characters of one stop string
MAX_NAME_CHARS = 100
# messages in one chat request: a client resends its whole chat each turn, so this is generous,
# but one request cannot make the server build and feed an unbounded prompt (issue 21: 10,000
# messages got no answer in 300 s)
MAX_MESSAGES = 5000
# the repetition-penalty aliases of text-completion clients (multiplicative, 1 = off)
REPETITION_ALIASES = ("repetition_penalty", "rep_pen", "repeat_penalty")
# a multiplicative repetition penalty r maps onto an additive presence penalty of
# REPETITION_SCALE * (r - 1): r = 1.1 (SillyTavern's default) gives 0.2, the app's own default
REPETITION_SCALE = 2.0
MAX_TOKENS_ALIASES = (
    "max_tokens",
    "max_completion_tokens",
    "max_new_tokens",
    "n_predict",
    "num_predict",
    "max_length",
)
STOP_ALIASES = ("stop", "stopping_strings", "stop_sequence")
EXAMPLE_NAMES = {"example_user": "user", "example_assistant": "char"}
# system messages at most this many messages from the end count as notes at a depth (SillyTavern
# injects its Author's Note and a card's Character's Note at depth 4 by default)
NOTE_MAX_DEPTH = 10


# ---------------------------------------------------------------------------- field checks
def _present(body: dict[str, Any], name: str) -> bool:
    return body.get(name) is not None


def number(
    body: dict[str, Any], name: str, lo: float | None = None, hi: float | None = None
) -> float | None:
    """A number field (None when absent or null); 400 when it is not a finite number in range."""
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ApiError(400, f"`{name}` must be a number.", param=name, code="invalid_type")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(
            400,
            f"`{name}` must be between {lo} and {hi}; got {v}.",
            param=name,
            code="out_of_range",
        )
    return float(v)


def integer(
    body: dict[str, Any], name: str, lo: int | None = None, hi: int | None = None
) -> int | None:
    """An integer field (a float with no fraction counts); None when absent or null."""
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"`{name}` must be an integer.", param=name, code="invalid_type")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(
            400,
            f"`{name}` must be between {lo} and {hi}; got {v}.",
            param=name,
            code="out_of_range",
        )
    return v


def boolean(body: dict[str, Any], name: str, default: bool = False) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(400, f"`{name}` must be true or false.", param=name, code="invalid_type")
    return v


def string(body: dict[str, Any], name: str) -> str | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise ApiError(400, f"`{name}` must be a string.", param=name, code="invalid_type")
    return v


def unsupported(param: str, what: str) -> ApiError:
    return ApiError(
        400, f"{what} This server cannot do that.", param=param, code="unsupported_parameter"
    )


# ---------------------------------------------------------------------------- generation
@dataclass
class Generation:
    """What a request asks of the generation, whatever the endpoint."""

    params: SamplingParams
    n: int = 1
    stream: bool = False
    stops: list[str] = field(default_factory=list)
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage

    def params_for(self, index: int) -> SamplingParams:
        """Alternative `index`'s sampling: with a seed, each alternative its own seed stream."""
        if self.params.seed is None or index == 0:
            return self.params
        return replace(self.params, seed=self.params.seed + index)


def parse_generation(
    body: dict[str, Any], base: SamplingParams, n_vocab: int, eos: int | None = None
) -> Generation:
    """Sampling, n, stream and stops of a request. Fields not given keep `base` (the app's
    default preset); OpenAI's names win over the aliases of text-completion clients.
    `ban_eos_token` / `ignore_eos` (text-completion clients) ban `eos`, the end-of-text token."""
    values: dict[str, Any] = {}
    t = number(body, "temperature", 0.0, 5.0)
    if t is not None:
        values["temperature"] = t
    p = number(body, "top_p", 0.0, 1.0)
    if p is not None:
        values["top_p"] = p
    k = integer(body, "top_k")
    if k is not None:
        values["top_k"] = max(k, 0)  # 0 and -1 both mean "no limit" in the clients' servers
    m = number(body, "min_p", 0.0, 1.0)
    if m is not None:
        values["min_p"] = m
    for name in ("presence_penalty", "frequency_penalty"):
        v = number(body, name, -2.0, 2.0)
        if v is not None:
            values[name] = v
    decay = number(body, "penalty_decay", 0.0, 1.0)  # RWKV-Runner / ai00
    if decay is not None:
        values["penalty_decay"] = decay
    for name in REPETITION_ALIASES:
        r = number(body, name, 0.0, 10.0)
        if r is not None:
            presence = values.get("presence_penalty", base.presence_penalty)
            values["presence_penalty"] = max(presence, min(REPETITION_SCALE * (r - 1.0), 2.0))
            break
    values["max_tokens"] = max_tokens(body, base.max_tokens)
    seed = None
    for name in ("seed", "sampler_seed"):
        s = integer(body, name)
        if s is not None:
            seed = s if s >= 0 else None  # -1: a random seed, as the clients mean it
            break
    values["seed"] = seed
    bias = dict(logit_bias(body, n_vocab))
    if eos is not None and (boolean(body, "ban_eos_token") or boolean(body, "ignore_eos")):
        bias[eos] = -100.0
    values["logit_bias"] = tuple(sorted(bias.items()))
    values.update(dry(body))
    n = integer(body, "n", 1, MAX_N) or 1
    best_of = integer(body, "best_of", 1, MAX_N)
    if best_of is not None and best_of != n:
        raise unsupported("best_of", "`best_of` other than `n` ranks alternatives by logprobs.")
    stream = boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "`stream_options` must be an object.", param="stream_options")
    include_usage = bool(options and options.get("include_usage") is True)
    params = replace(base, **values)
    return Generation(params, n, stream, stops(body), include_usage)


def dry(body: dict[str, Any]) -> dict[str, Any]:
    """The DRY fields SillyTavern sends to koboldcpp and llama.cpp (core.engine.sampler.Dry):
    `dry_multiplier` (0: off), `dry_base` (below 1: off, as llama.cpp reads it),
    `dry_allowed_length`, `dry_sequence_breakers` (a list of strings, or that list as JSON
    text, which is how SillyTavern sends it; text-generation-webui's form without the brackets
    is read too), `dry_penalty_last_n` (the recent tokens compared; 0 or -1: the default)."""
    out: dict[str, Any] = {}
    m = number(body, "dry_multiplier", 0.0, MAX_DRY_MULTIPLIER)
    if m is not None:
        out["dry_multiplier"] = m
    base = number(body, "dry_base", 0.0, MAX_DRY_BASE)
    if base is not None:
        if base < 1.0:
            out["dry_multiplier"] = 0.0
        else:
            out["dry_base"] = base
    allowed = integer(body, "dry_allowed_length", 0, MAX_DRY_ALLOWED)
    if allowed is not None:
        out["dry_allowed_length"] = max(allowed, 1)
    breakers = sequence_breakers(body, "dry_sequence_breakers")
    if breakers is not None:
        out["dry_sequence_breakers"] = breakers
    last_n = integer(body, "dry_penalty_last_n", -1, None)
    if last_n is not None:
        out["dry_range"] = min(max(last_n, 0), MAX_DRY_RANGE)
    return out


def sequence_breakers(body: dict[str, Any], name: str) -> tuple[str, ...] | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, str):
        text = v.strip()
        parsed: Any = None
        for attempt in (text, f"[{text}]"):  # JSON, then text-generation-webui's form
            try:
                parsed = json.loads(attempt)
            except ValueError:
                continue
            break
        if isinstance(parsed, list):
            v = parsed
        elif text:
            v = [v]  # one breaker given as a plain string
        else:
            v = []
    if not isinstance(v, list) or not all(isinstance(b, str) for b in v):
        raise ApiError(
            400,
            f"`{name}` must be a list of strings (or that list as JSON text).",
            param=name,
            code="invalid_type",
        )
    if len(v) > MAX_BREAKERS or any(len(b) > MAX_BREAKER_CHARS for b in v):
        raise ApiError(
            400,
            f"`{name}`: at most {MAX_BREAKERS} breakers of at most {MAX_BREAKER_CHARS} "
            "characters each.",
            param=name,
        )
    return tuple(dict.fromkeys(b for b in v if b))


def max_tokens(body: dict[str, Any], default: int) -> int:
    """The first of the max-tokens aliases given; negative (llama.cpp's -1, "no limit") and 0
    mean the default; above MAX_TOKENS_LIMIT is refused."""
    for name in MAX_TOKENS_ALIASES:
        v = integer(body, name)
        if v is None:
            continue
        if v > MAX_TOKENS_LIMIT:
            raise ApiError(
                400,
                f"`{name}` is {v}; this server generates at most {MAX_TOKENS_LIMIT} tokens "
                "a request.",
                param=name,
                code="max_tokens_too_large",
            )
        return v if v > 0 else default
    return default


def stops(body: dict[str, Any]) -> list[str]:
    """Stop strings from `stop` (a string or a list), `stopping_strings` and `stop_sequence`."""
    out: list[str] = []
    for name in STOP_ALIASES:
        v = body.get(name)
        if v is None:
            continue
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ApiError(
                400,
                f"`{name}` must be a string or a list of strings.",
                param=name,
                code="invalid_type",
            )
        for s in items:
            if len(s) > MAX_STOP_CHARS:
                raise ApiError(
                    400,
                    f"A stop string in `{name}` is over {MAX_STOP_CHARS} characters.",
                    param=name,
                )
            if s and s not in out:
                out.append(s)
    if len(out) > MAX_STOPS:
        raise ApiError(400, f"At most {MAX_STOPS} stop strings, please.", param="stop")
    return out


def logit_bias(body: dict[str, Any], n_vocab: int) -> tuple[tuple[int, float], ...]:
    """`logit_bias`: {"token id": bias in [-100, 100]} (OpenAI's shape; -100 bans a token)."""
    v = body.get("logit_bias")
    if v is None:
        return ()
    if not isinstance(v, dict):
        raise ApiError(
            400, "`logit_bias` must be an object of token id -> bias.", param="logit_bias"
        )
    out: dict[int, float] = {}
    for key, bias in v.items():
        try:
            tok = int(key)
        except ValueError:
            raise ApiError(
                400, f"`logit_bias` key {key!r} is not a token id.", param="logit_bias"
            ) from None
        if not 0 <= tok < n_vocab:
            raise ApiError(
                400,
                f"`logit_bias` token {tok} is not in the vocabulary (0..{n_vocab - 1}).",
                param="logit_bias",
            )
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise ApiError(
                400,
                f"`logit_bias` for token {tok} must be a number from -100 to 100.",
                param="logit_bias",
            )
        out[tok] = float(bias)
    return tuple(sorted(out.items()))


def refuse_unsupported(body: dict[str, Any], chat: bool) -> None:
    """Fields that would change what the answer means and that we cannot honour: refused,
    rather than silently ignored."""
    if body.get("tools") or body.get("functions"):
        raise unsupported("tools", "Tool and function calling is not supported.")
    choice = body.get("tool_choice") or body.get("function_call")
    if choice not in (None, "none", "auto"):
        raise unsupported("tool_choice", "Tool and function calling is not supported.")
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind != "text":
            raise unsupported("response_format", "Only the `text` response format is supported.")
    for name in ("grammar", "grammar_string", "guided_grammar", "guided_json", "json_schema"):
        if body.get(name):
            raise unsupported(name, "Constrained generation (grammars, JSON schemas) is off.")
    logprobs = body.get("logprobs")
    if logprobs not in (None, False, 0) or body.get("top_logprobs") or body.get("n_probs"):
        raise unsupported("logprobs", "Token log probabilities are not reported.")
    if not chat:
        if body.get("echo"):
            raise unsupported("echo", "`echo` is not supported.")
        if body.get("suffix"):
            raise unsupported("suffix", "Insertion (`suffix`) is not supported.")
    if body.get("audio") or body.get("modalities") not in (None, ["text"]):
        raise unsupported("modalities", "This model reads and writes text only.")


# ---------------------------------------------------------------------------- messages
@dataclass
class ChatInput:
    """A chat request as the engine's inputs (Engine.reply's arguments)."""

    ctx: CharacterContext
    history: list[Message]
    speaker: Message
    continue_last: bool = False


def _content(msg: dict[str, Any], i: int) -> str:
    """A message's text: a string, or the text parts of a list joined (images refused)."""
    content = msg.get("content")
    param = f"messages[{i}].content"
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, "A message's `content` must be a string or a list of parts.", param)
    texts: list[str] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "image", "input_image"):
            raise ApiError(
                400,
                "This model reads text only: images in messages are not supported.",
                param,
                code="unsupported_content",
            )
        else:
            raise ApiError(
                400,
                f"Unsupported content part {kind!r}: this server takes text parts only.",
                param,
                code="unsupported_content",
            )
    return "\n".join(texts)


def _name(msg: dict[str, Any], i: int) -> str:
    name = msg.get("name")
    if name is None:
        return ""
    if not isinstance(name, str):
        raise ApiError(400, "A message's `name` must be a string.", f"messages[{i}].name")
    name = " ".join(name.split())[:MAX_NAME_CHARS]
    return "" if not name.strip("_") else name


def _request_name(body: dict[str, Any], field_name: str) -> str:
    v = string(body, field_name)
    return " ".join(v.split())[:MAX_NAME_CHARS] if v else ""


def map_messages(
    body: dict[str, Any], stop_strings: list[str] | None = None, notes_at_reply: bool = False
) -> ChatInput:
    """The chat request's `messages` (and `user_name` / `assistant_name`) as engine inputs;
    with `notes_at_reply`, notes at a depth go next to the reply (the module's doc)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` must be a non-empty list.", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(
            400,
            f"`messages` has {len(messages):,} messages; this server takes at most "
            f"{MAX_MESSAGES:,} in one request. Send fewer (the oldest are the first to go).",
            param="messages",
            code="too_many_messages",
        )
    parsed: list[tuple[str, str, str]] = []  # (role, text, name)
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ApiError(400, "Each message must be an object.", param=f"messages[{i}]")
        role = msg.get("role")
        if role == "developer":
            role = "system"
        if role in ("tool", "function"):
            raise unsupported(
                f"messages[{i}].role", "Tool and function messages are not supported."
            )
        if role not in ("system", "user", "assistant"):
            raise ApiError(
                400,
                f"messages[{i}].role must be system, user or assistant; got {role!r}.",
                param=f"messages[{i}].role",
            )
        if msg.get("tool_calls") or msg.get("function_call"):
            raise unsupported(f"messages[{i}]", "Tool and function calls are not supported.")
        parsed.append((role, _content(msg, i), _name(msg, i)))

    user_name = _request_name(body, "user_name") or next(
        (n for r, _, n in parsed if r == "user" and n), DEFAULT_USER
    )
    char_name = _request_name(body, "assistant_name") or next(
        (n for r, _, n in parsed if r == "assistant" and n), DEFAULT_CHAR
    )
    defaults = {"user": user_name, "char": char_name}

    opening: list[str] = []
    history: list[Message] = []
    notes: list[str] = []
    in_opening = True
    for i, (role, text, name) in enumerate(parsed):
        example = EXAMPLE_NAMES.get(name) if role == "system" else None
        if role in ("user", "assistant"):
            in_opening = False
        depth = len(parsed) - 1 - i  # messages after this one
        if (
            notes_at_reply
            and not in_opening
            and role == "system"
            and example is None
            and depth <= NOTE_MAX_DEPTH
        ):
            if text.strip():
                notes.append(text)
            continue
        if in_opening:
            if example is not None:
                opening.append(f"{defaults[example]}: {text}")
            else:
                opening.append(text)
            continue
        if example is not None:
            history.append(Message(example, text))  # type: ignore[arg-type]
        elif role == "system":
            history.append(Message("narrator", text))
        else:
            r = "user" if role == "user" else "char"
            history.append(Message(r, text, "" if name == defaults[r] else name))  # type: ignore[arg-type]

    ctx = CharacterContext(
        name=char_name,
        user_name=user_name,
        system_prompt="\n".join(t for t in opening if t.strip()),
        stop_strings=list(stop_strings or []),
    )
    note = "\n".join(notes)
    last = history[-1] if history else None
    if last is not None and last.role == "char" and parsed[-1][0] == "assistant":
        if last.text.strip():  # (notes go before the message being continued)
            last.note = note
            return ChatInput(ctx, history, last, continue_last=True)
        history.pop()  # an empty assistant message: only who speaks next
        return ChatInput(ctx, history, Message("char", "", last.name, note=note))
    return ChatInput(ctx, history, Message("char", note=note))
