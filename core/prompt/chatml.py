"""ChatML prompt format, for GGUF chat models whose template is ChatML (the embedded SmolLM2).

    opening = <|im_start|>system\\n{who the character is, persona, scenario, examples}<|im_end|>\\n
    user    = <|im_start|>user\\n{text}<|im_end|>\\n
    char    = <|im_start|>assistant\\n{text}<|im_end|>\\n
    narrator= <|im_start|>assistant\\nNarrator: {text}<|im_end|>\\n

Narrator lines are the assistant's turns, opened with "Narrator: ". They were system messages
once, and a generated narrator line then started with `<|im_start|>system\\n`: a small instruct
model continues that with the system prompts it was trained on ("You're an AI assistant for text
re-writing..."), never with narration. A message by a speaker other than the chat's user or
character (a second character in a group chat) keeps its role and starts with "Name: " after the
header, so the model knows who speaks.

The markers `<|im_start|>` / `<|im_end|>` are special tokens. The back end's `tokenize(text)`
turns exactly these marker strings into their special tokens and everything else into ordinary
text tokens; this format makes sure that a marker can only come from itself, by breaking any
marker that appears in user-written text (a zero-width space after its `<`). So a message that
contains "<|im_end|>" cannot end its turn early or forge another role.
"""

from __future__ import annotations

from core.prompt.base import CharacterContext, Message, speaker_name, stop_names
from core.prompt.roleplay import example_lines
from core.text import DEFAULT_CHAR, DEFAULT_USER, normalize, substitute

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
MARKERS = (IM_START, IM_END)
_ZWSP = "\u200b"


def defuse(text: str, markers: tuple[str, ...] = MARKERS) -> str:
    """`text` with every marker string broken so that it tokenizes as plain text."""
    for m in markers:
        if m in text:
            text = text.replace(m, m[0] + _ZWSP + m[1:])
    return text


class ChatMLFormat:
    """core.prompt.PromptFormat for ChatML models. `extra_stops` are the texts of the model's
    other end-of-generation tokens (such as "<|endoftext|>"), which also end a reply."""

    def __init__(self, extra_stops: tuple[str, ...] = ()) -> None:
        self.extra_stops = tuple(s for s in extra_stops if s and s not in MARKERS)

    def _clean(self, text: str, ctx: CharacterContext) -> str:
        return defuse(normalize(substitute(text, ctx.name, ctx.user_name)))

    def opening(self, ctx: CharacterContext) -> str:
        if not ctx.system_prompt.strip():
            return self._system(self._lines(ctx))
        text = self._clean(ctx.system_prompt, ctx)
        text = text.replace("{{original}}", self._lines(ctx))
        return self._system(text) if text.strip() else ""

    def _system(self, text: str) -> str:
        return f"{IM_START}system\n{text}{IM_END}\n"

    def _lines(self, ctx: CharacterContext) -> str:
        """The system message's text that the character's fields make."""
        char, user = ctx.name or DEFAULT_CHAR, ctx.user_name or DEFAULT_USER
        fields = (
            ctx.persona,
            ctx.personality,
            ctx.scenario,
            ctx.user_persona,
            ctx.example_dialogue,
        )
        if not any(f.strip() for f in fields) and (char, user) == (DEFAULT_CHAR, DEFAULT_USER):
            intro = "You are a helpful assistant."
        else:
            intro = (
                f"You are {char}. Stay in character and write {char}'s next reply in a role play "
                f"with {user}. Write only {char}'s words and actions, never {user}'s."
            )
        lines = [intro]
        if ctx.persona.strip():
            lines.append(self._clean(ctx.persona, ctx))
        if ctx.personality.strip():
            lines.append(f"{char}'s personality: {self._clean(ctx.personality, ctx)}")
        if ctx.scenario.strip():
            lines.append(f"Scenario: {self._clean(ctx.scenario, ctx)}")
        if ctx.user_persona.strip():
            lines.append(f"About {user}: {self._clean(ctx.user_persona, ctx)}")
        examples = example_lines(ctx)
        if examples:
            lines.append("Example dialogue:\n" + defuse(normalize(examples)))
        return "\n".join(lines)

    def note(self, text: str, ctx: CharacterContext) -> str:
        text = self._clean(text, ctx)
        return self._system(text) if text else ""

    def _role(self, msg: Message) -> str:
        return {"user": "user", "char": "assistant", "narrator": "assistant"}[msg.role]

    def header(self, msg: Message, ctx: CharacterContext) -> str:
        head = f"{IM_START}{self._role(msg)}\n"
        name = speaker_name(msg, ctx)
        usual = {"user": ctx.user_name, "char": ctx.name}.get(msg.role)
        if msg.role == "narrator" or (usual is not None and name != usual):
            head += defuse(normalize(name)) + ": "
        return head

    def body(self, text: str, msg: Message, ctx: CharacterContext) -> str:
        return self.open_body(text, msg, ctx) + f"{IM_END}\n"

    def open_body(self, text: str, msg: Message, ctx: CharacterContext) -> str:
        return self._clean(text, ctx)

    def stop_strings(self, msg: Message, ctx: CharacterContext, names: list[str]) -> list[str]:
        stops = [IM_END, IM_START, *self.extra_stops]
        for name in stop_names(msg, ctx, names):
            stops += [f"\n{name}:", f"\n{name}\uff1a"]
        stops += [s for s in ctx.stop_strings if s]
        return stops
