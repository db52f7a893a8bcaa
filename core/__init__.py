"""The RWKV role-play app below its pages. Never imports streamlit.

Where to start (docs/ARCHITECTURE.md has the whole picture):

    core.backends   load a model file: Backend protocol, rwkv package, llama.cpp, embedded model
    core.engine     Engine.reply: prompt chunks, prefix state cache, sampling, stop strings
    core.prompt     prompt formats: RWKV role play, ChatML
    core.store      the database: characters, conversations, messages, settings
    core.chat       a saved conversation as the engine reads it
    core.roleplay.cards      character cards in and out, and the app's store with bundled characters
    core.roleplay.chat_io    chats in and out (Markdown, SillyTavern JSONL)
    core.models.convert    .pth to GGUF

Each part imports only the parts below it (tests/unit/test_layers.py enforces the table).
"""
