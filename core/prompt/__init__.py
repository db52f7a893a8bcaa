"""Prompt formats: how a chat's transcript becomes the text chunks the engine tokenizes.

`base` holds the transcript types and the PromptFormat protocol, `roleplay` the RWKV format
(`Name: text` lines), `chatml` the format of GGUF chat models with a ChatML template.
"""

from core.prompt.base import (
    CharacterContext,
    Message,
    PromptFormat,
    Role,
    StartState,
    speaker_name,
    transcript_texts,
)
from core.prompt.chatml import ChatMLFormat
from core.prompt.roleplay import RoleplayFormat
from core.text import DEFAULT_CHAR, DEFAULT_USER, NARRATOR_NAME, normalize, substitute

__all__ = [
    "DEFAULT_CHAR",
    "DEFAULT_USER",
    "NARRATOR_NAME",
    "CharacterContext",
    "ChatMLFormat",
    "Message",
    "PromptFormat",
    "Role",
    "RoleplayFormat",
    "StartState",
    "normalize",
    "speaker_name",
    "substitute",
    "transcript_texts",
]
