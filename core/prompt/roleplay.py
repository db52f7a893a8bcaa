"""The RWKV role-play prompt format (docs/ARCHITECTURE.md, "Prompt formats"):

opening  = example dialogue, persona (each followed by a blank line)
message  = header "Name:" + body " text\n\n"
prompt   = opening + messages + header of who speaks next, "Name:" with no space after it
"""

from __future__ import annotations

import re

from core.prompt.base import CharacterContext, Message, speaker_name, stop_names
from core.text import NARRATOR_NAME, normalize, substitute


class RoleplayFormat:
    """`Name: text` lines separated by blank lines, as RWKV World / RWKV-7 models expect."""

    def opening(self, ctx: CharacterContext) -> str:
        original = self._opening(ctx)
        if not ctx.system_prompt.strip():
            return original
        text = normalize(substitute(ctx.system_prompt, ctx.name, ctx.user_name))
        text = text.replace("{{original}}", original.strip())
        return normalize(text) + "\n\n" if text.strip() else ""

    def _opening(self, ctx: CharacterContext) -> str:
        parts: list[str] = []
        examples = example_lines(ctx)
        if examples:
            parts.append(examples)
        persona = "\n".join(
            normalize(substitute(p, ctx.name, ctx.user_name))
            for p in (ctx.persona, ctx.personality, ctx.scenario, ctx.user_persona)
            if p.strip()
        )
        if persona:
            parts.append(normalize(persona))
        return "".join(p + "\n\n" for p in parts)

    def header(self, msg: Message, ctx: CharacterContext) -> str:
        return f"{speaker_name(msg, ctx)}:"

    def body(self, text: str, msg: Message, ctx: CharacterContext) -> str:
        return self.open_body(text, msg, ctx) + "\n\n"

    def open_body(self, text: str, msg: Message, ctx: CharacterContext) -> str:
        return " " + normalize(substitute(text, ctx.name, ctx.user_name))

    def note(self, text: str, ctx: CharacterContext) -> str:
        text = normalize(substitute(text, ctx.name, ctx.user_name))
        return text + "\n\n" if text else ""

    def stop_strings(self, msg: Message, ctx: CharacterContext, names: list[str]) -> list[str]:
        stops = ["\n\n"]
        for name in stop_names(msg, ctx, [NARRATOR_NAME, *names]):
            stops += [f"\n{name}:", f"\n{name}\uff1a"]
        stops += [s for s in ctx.stop_strings if s]
        return stops


def example_lines(ctx: CharacterContext) -> str:
    """Example dialogue as transcript lines: `<START>` markers dropped, names substituted."""
    text = substitute(ctx.example_dialogue, ctx.name, ctx.user_name)
    text = re.sub(r"<START>", "", text, flags=re.IGNORECASE)
    speakers = tuple(f"{n}{c}" for n in (ctx.name, ctx.user_name) for c in (":", "："))
    out: list[str] = []
    for line in normalize(text).split("\n"):
        if out and not line.startswith(speakers):
            out[-1] += "\n" + line  # a continuation line of the same turn
        else:
            out.append(line)
    return "\n\n".join(out)
