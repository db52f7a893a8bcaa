"""Chat: pick a character and one of its chats, talk, regenerate, page through versions, edit,
delete, rewind, continue, choose who speaks next, per-chat sampling.

Flow of one run: decide the conversation (query parameter `chat`, else session state), take the
chat input (it adds the user's message and asks for a reply), draw the history (the last N
messages only), then run a pending reply at the bottom and rerun when it is done. The parts:
chat_sidebar.py (pickers, chat actions, sampling), chat_history.py (messages and their
actions), chat_reply.py (the streaming reply), versions_ui.py (×3), group_ui.py (group chats).
Every rule is the chat service's (core/chat/service.py).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from core import chat as core_chat
from core.contracts import Op, Role
from core.errors import AppError, Conflict
from core.prompt import NARRATOR_NAME
from pages import chat_sidebar, group_ui, versions_ui
from pages.chat_history import OpenChat, history, queue, undo_bar
from pages.chat_reply import generate, wait_for_previous_run
from pages.ui_common import (
    PAGE_CHARACTERS,
    T,
    avatar_image,
    md_inline,
    model_loading,
    model_notice,
    page_guard,
    rt,
    show_error,
)

page_guard()

NEXT_SPEAKERS = (Role.CHAR.value, Role.NARRATOR.value, Role.USER.value)  # the radio's order

state = st.session_state
chats = rt().chat
db = chats.store
wait_for_previous_run()


# --- which conversation ----------------------------------------------------------------------
def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# the URL (?chat=ID) names the open chat, so a reload or a link reopens it; it wins only when it
# differs from what this page last put there (callbacks change state.conv_id, not the URL)
qp_conv = _int(st.query_params.get("chat"))
if qp_conv is not None and qp_conv != state.get("qp_chat"):
    state.conv_id = qp_conv
conv = db.get_conversation(state.get("conv_id")) if state.get("conv_id") else None
if conv is None and state.get("conv_id"):
    state.conv_id = None
if conv is not None:
    state.char_id = conv.character_id
    if st.query_params.get("chat") != str(conv.id):
        st.query_params["chat"] = str(conv.id)
    state.qp_chat = conv.id
else:
    if "chat" in st.query_params:
        del st.query_params["chat"]
    state.qp_chat = None

try:
    characters = {c.id: c for c in db.list_characters()}
except AppError as e:
    show_error(e)
    characters = {}
if state.get("char_id") is None and conv is None and characters:
    state.char_id = next(iter(characters))
character = characters.get(state.get("char_id"))

# --- sidebar -----------------------------------------------------------------------------------
with st.sidebar:
    chat_sidebar.pickers(characters, character, conv)
    if conv is not None:
        chat_sidebar.chat_actions(conv)
    if character is not None:
        chat_sidebar.import_chat(character)
if conv is not None:
    with st.sidebar.expander(T("sampling"), icon=":material/tune:"):
        chat_sidebar.sampling(conv)
    group_ui.sidebar(conv, characters)  # group chats: who speaks, members; add a character

if state.get("flash_error"):
    st.error(f"{T('err_prefix')} {md_inline(state.pop('flash_error'))}", icon=":material/error:")
group_ui.show_flash()
if state.get("reply_notice"):  # the last reply ran without the character's state file
    st.info(md_inline(state.pop("reply_notice")), icon=":material/info:")
if state.get("toast"):  # what the last action did (an import...), once
    st.toast(state.pop("toast"), icon=":material/check_circle:")

# --- no chat open ------------------------------------------------------------------------------
if conv is None:
    st.title(T("nav_chat"))
    if not characters:
        st.info(T("no_characters"))
        st.page_link(PAGE_CHARACTERS, label=T("create_character"), icon=":material/person_add:")
    elif character is not None:
        st.info(T("no_chat_open", name=md_inline(character.name)))
        st.button(
            T("start_chat_with", name=md_inline(character.name)),
            key="start_chat_main",
            type="primary",
            icon=":material/chat:",
            on_click=chat_sidebar.new_chat,
            args=(character.id,),
        )
    else:
        st.info(T("choose_character"))
    st.stop()

# --- the open chat -------------------------------------------------------------------------------
ctx = core_chat.conversation_context(db, conv.id)
user_label = ctx.user_name
names = {Role.CHAR.value: ctx.name, Role.NARRATOR.value: NARRATOR_NAME, Role.USER.value: user_label}

if conv.members:  # a group chat: each member with its avatar
    group_ui.header(conv, characters)
else:
    with st.container(horizontal=True, vertical_alignment="center"):
        avatar_image(character, width=48)
        with st.container():
            st.markdown(f"**{md_inline(ctx.name)}**")
            st.caption(md_inline(conv.title))

# the model: never waited for here (the page says it loads); a reply waits for it (generate)
engine = model_notice("chat")
view = OpenChat(conv, character, characters, names, engine is not None or model_loading())

# prefill the opened chat's state in the background, so the first reply starts at once
if engine is not None and state.get("warmed") != (conv.id, id(engine)) and not state.get("pending"):
    state.warmed = (conv.id, id(engine))
    chats.warm_in_background(conv.id)

# the user's message: added now, the reply is generated after the history is drawn
prompt = st.chat_input(T("chat_placeholder", name=user_label), key="chat_input")
if prompt:
    try:
        chats.send(conv.id, prompt)
    except AppError as e:
        show_error(e)
    else:
        state.pop("undo", None)  # a new message: the last removal is kept, no longer offered
        nxt = state.get("next_speaker", Role.CHAR.value)
        if conv.members:  # a group chat: the member its setting chooses (or the user picks)
            state.pending = group_ui.after_send(conv)
        elif nxt != Role.USER:
            state.pending = {"op": Op.NEW, "role": nxt, "conv": conv.id}
        state.editing = None

messages = db.list_messages(conv.id)
pending = state.pop("pending", None)
if pending and pending.get("conv") != conv.id:
    pending = None
if pending and Op(pending["op"]).on_last:
    try:
        chats.redo_target(conv.id, Op(pending["op"]), pending.get("msg"))
    except Conflict:
        pending = None  # the chat changed since the click
if pending is None and conv.members:
    pending = group_ui.auto_next(conv)  # the auto mode's next turn, if it goes on

# the messages and the reply in one container, the controls after it: every control keeps its
# place on the page (and its widget) from run to run, however many messages the chat has, and
# is drawn before the reply streams, so "Stop auto mode" shows while a member speaks
talk = st.container(key="talk")
with talk:
    redone = bool(pending) and Op(pending["op"]).on_last  # its message is drawn as it streams
    history(view, messages[:-1] if redone else messages, bool(pending))
    if not messages:
        st.caption(T("empty_chat"))
    reply_slot = st.container()
undo_bar(conv.id)  # what the last delete or rewind removed, with Undo


# --- who speaks next -----------------------------------------------------------------------------
def _speaker_label(role: str) -> str:  # radio options render markdown: names go escaped
    if role == Role.USER:
        return T("you_named", name=md_inline(user_label))
    return md_inline(names[Role.CHAR.value]) if role == Role.CHAR else T("narrator")


if conv.members:  # a group chat: a member, the narrator or nobody; the auto mode
    group_ui.next_controls(
        conv,
        characters,
        user_label,
        lambda op, **kw: queue(view, Op(op), **kw),
        view.can_reply,
    )
else:
    with st.container(horizontal=True, vertical_alignment="bottom", gap="small"):
        st.radio(
            T("next_speaker"),
            NEXT_SPEAKERS,
            key="next_speaker",
            horizontal=True,
            format_func=_speaker_label,
        )
        st.button(
            T("generate"),
            key="generate_next",
            icon=":material/play_arrow:",
            disabled=not view.can_reply,
            on_click=lambda: queue(view, Op.NEW, role=state.get("next_speaker", Role.CHAR.value)),
        )


# --- the reply, last: it ends with a rerun that draws the chat with it ------------------------
if pending:
    with reply_slot:
        op = Op(pending["op"])
        if op == Op.NEW:
            generate(
                view, engine, op, role=pending.get("role", Role.CHAR), member=pending.get("member")
            )
        elif op == Op.VERSIONS:
            versions_ui.generate_versions(conv.id, messages[-1])
        else:
            generate(view, engine, op, target=messages[-1])
