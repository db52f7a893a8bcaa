"""The chat service (service.py): every chat operation of every front end, on top of the
store and the engine; context.py turns stored chats into engine inputs, saver.py saves replies.
"""

from core.chat.context import character_context, conversation_context, prompt_messages
from core.chat.groups import AutoTalk
from core.chat.saver import SAVE_EVERY_S, ReplySaver
from core.chat.service import ChatService, Turn, model_name

__all__ = [
    "SAVE_EVERY_S",
    "AutoTalk",
    "ChatService",
    "ReplySaver",
    "Turn",
    "character_context",
    "conversation_context",
    "model_name",
    "prompt_messages",
]
