"""Home: the model in use (with the embedded one, an offer of the recommended RWKV model), the
characters (one click starts a chat) and recent chats."""

from __future__ import annotations

import streamlit as st

from core.errors import AppError
from pages import group_ui, models_ui
from pages.ui_common import (
    PAGE_CHARACTERS,
    PAGE_SETTINGS,
    T,
    avatar_image,
    choice_label,
    current_choice,
    fmt_time,
    md_inline,
    model_loading,
    model_notice,
    model_summary,
    new_conversation,
    open_chat,
    page_guard,
    retry,
    show_error,
    store,
)

page_guard()

st.title(T("app_title"))

# --- the model ------------------------------------------------------------------------------
with st.container(border=True):
    engine = model_notice("home", buttons=False)  # never waits: loading, failed or unloaded
    if engine is not None:
        st.markdown(f":material/memory: **{T('model')}**")
        st.text(model_summary(engine))
    elif not model_loading():
        with st.container(horizontal=True):
            st.button(
                T("load_named", name=md_inline(choice_label(current_choice()))),
                key="home_load",
                type="primary",
                icon=":material/play_arrow:",
                on_click=retry,
            )
            st.page_link(PAGE_SETTINGS, label=T("choose_model"), icon=":material/settings:")

models_ui.flash("home")
models_ui.home_offer()  # the embedded model in use: say so, offer the recommended RWKV model

s = store()

# --- characters -----------------------------------------------------------------------------
st.subheader(T("characters"))
try:
    characters = s.list_characters()
except AppError as e:
    show_error(e)
    characters = []
if not characters:
    st.info(T("no_characters"))
    st.page_link(PAGE_CHARACTERS, label=T("create_character"), icon=":material/person_add:")
else:
    cols_per_row = 4
    for start in range(0, len(characters), cols_per_row):
        cols = st.columns(cols_per_row)
        for col, ch in zip(cols, characters[start : start + cols_per_row], strict=False):
            with col, st.container(border=True):
                avatar_image(ch, width=96)
                st.text(ch.name)
                if st.button(
                    T("start_chat"),
                    key=f"home_chat_{ch.id}",
                    icon=":material/chat:",
                    use_container_width=True,
                ):
                    try:
                        conv = new_conversation(ch.id)
                    except AppError as e:
                        show_error(e)
                    else:
                        open_chat(conv.id)

group_ui.new_group_form(characters)  # pick two or more characters: a group chat

# --- recent chats ---------------------------------------------------------------------------
st.subheader(T("recent_chats"))
try:
    recent = s.list_conversations(limit=10)
except AppError as e:
    show_error(e)
    recent = []
if not recent:
    st.caption(T("no_chats"))
by_id = {c.id: c for c in characters}
for conv in recent:
    ch = by_id.get(conv.character_id)
    with st.container(border=True, horizontal=True, vertical_alignment="center"):
        avatar_image(ch, width=40)
        with st.container():
            st.text(conv.title)
            st.caption(f"{md_inline(conv.character_name)} · {fmt_time(conv.updated_at)}")
        if st.button(T("resume"), key=f"home_resume_{conv.id}", icon=":material/replay:"):
            open_chat(conv.id)

models_ui.poll()  # last: while a download shown above runs, its bar moves
