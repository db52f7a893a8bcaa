"""Role-play content, in and out of the store: character cards (cards.py), their pictures
(avatars.py), chat files (chat_io.py), macros such as {{time}} (macros.py), lorebooks (lore/) and
who speaks next in a group chat (group.py). No model code here: the engine never sees a card."""
