"""Not a page: the Chat page's sidebar. Which character and which of its chats, a new chat, this
chat's actions (rename, export, lorebooks, delete), importing a chat, and the chat's sampling.
Every change goes through the chat service (core/chat/service.py)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.engine.sampler import PRESETS
from core.errors import AppError
from core.store import Character, Conversation
from pages import lore_ui
from pages.ui_common import T, conversation_params, md_inline, new_conversation, rt, show_error

state = st.session_state


# The browser sends a select box's choice back as its label; when a label changes (a chat was
# renamed) the choice arrives as None. Such a None is not a choice: ignore it.
def _select_character() -> None:
    if state.chat_char_sel is None:
        return
    state.char_id = state.chat_char_sel
    latest = rt().store.list_conversations(state.char_id, limit=1)
    state.conv_id = latest[0].id if latest else None
    state.editing = None


def _select_chat() -> None:
    if state.chat_conv_sel is None:
        return
    state.conv_id = state.chat_conv_sel
    state.editing = None


def new_chat(char_id: int) -> None:
    """A button's callback: a new chat with the character, opened."""
    try:
        c = new_conversation(char_id)
    except AppError as e:
        state.flash_error = str(e)
        return
    state.conv_id = c.id
    state.editing = None


def pickers(
    characters: dict[int, Character], character: Character | None, conv: Conversation | None
) -> None:
    """The character and chat select boxes, and New chat."""
    st.subheader(T("nav_chat"))
    if characters:
        wanted = state.get("char_id") if state.get("char_id") in characters else None
        if state.get("chat_char_sel", -1) != wanted:
            state.chat_char_sel = wanted
        st.selectbox(
            T("character"),
            options=list(characters),
            format_func=lambda i: characters[i].name,
            key="chat_char_sel",
            index=None,
            placeholder=T("choose_character"),
            on_change=_select_character,
        )
    if character is not None:
        chats = rt().store.list_conversations(character.id, limit=200)
        chat_ids = [c.id for c in chats]
        if conv is not None and conv.id in chat_ids:
            if state.get("chat_conv_sel") != conv.id:
                state.chat_conv_sel = conv.id
            chats_by_id = {c.id: c for c in chats}
            st.selectbox(
                T("chat"),
                options=chat_ids,
                # labels must be unique and stable (the browser sends back the label, not
                # the option): no "updated at" time in them
                format_func=lambda i: f"{chats_by_id[i].title} · #{i}",
                key="chat_conv_sel",
                on_change=_select_chat,
            )
        st.button(
            T("new_chat"),
            key="new_chat",
            icon=":material/add_comment:",
            on_click=new_chat,
            args=(character.id,),
            use_container_width=True,
        )
    elif conv is not None:
        st.caption(T("character_deleted", name=md_inline(conv.character_name)))


def chat_actions(conv: Conversation) -> None:
    """This chat: rename, export (Markdown, JSONL), its lorebooks, delete."""
    chats = rt().chat
    with st.expander(T("this_chat"), icon=":material/edit_note:"):
        with st.form(f"rename_{conv.id}", border=False):
            new_title = st.text_input(T("title"), value=conv.title, key=f"title_{conv.id}")
            if st.form_submit_button(T("rename"), icon=":material/edit:"):
                try:
                    chats.rename(conv.id, new_title)
                except AppError as e:
                    show_error(e)
                else:
                    st.rerun()
        from core.roleplay.chat_io import export_jsonl, export_markdown

        cid = conv.id
        st.download_button(
            T("export_markdown"),
            data=lambda: export_markdown(chats.store, cid),
            file_name=f"chat-{cid}.md",
            mime="text/markdown",
            key=f"dl_md_{cid}",
            icon=":material/download:",
            on_click="ignore",
        )
        st.download_button(
            T("export_jsonl"),
            data=lambda: export_jsonl(chats.store, cid),
            file_name=f"chat-{cid}.jsonl",
            mime="application/jsonl",
            key=f"dl_jsonl_{cid}",
            icon=":material/download:",
            on_click="ignore",
        )
        lore_ui.chat_lorebooks(chats.store, conv)  # lorebooks attached to this chat
        with st.popover(T("delete_chat"), icon=":material/delete:"):
            st.write(T("delete_chat_confirm"))
            if st.button(T("delete"), key=f"del_chat_{conv.id}", type="primary"):
                try:
                    chats.delete_chat(conv.id)
                except AppError as e:
                    show_error(e)
                else:
                    state.conv_id = None
                    st.rerun()


def import_chat(character: Character) -> None:
    """A SillyTavern JSONL file as a new chat of the character: opened, said, and the uploader
    emptied (a new key each time: Streamlit keeps an uploader's file otherwise)."""
    with st.expander(T("import_chat"), icon=":material/upload:"):
        key = f"import_chat_up_{state.get('import_chat_n', 0)}"
        up = st.file_uploader(T("import_chat_file"), type=["jsonl"], key=key)
        if up is not None and st.button(T("import"), key="import_chat_btn"):
            try:
                imported = rt().chat.import_chat(up.getvalue(), character.id)
            except AppError as e:
                show_error(e)
            else:
                n = len(rt().store.list_messages(imported.id))  # type: ignore[arg-type]
                state.conv_id = imported.id
                state.import_chat_n = state.get("import_chat_n", 0) + 1
                state.toast = T("chat_imported", title=md_inline(imported.title), n=n)
                st.rerun()


# the sampling controls: (field, widget, the widget's arguments)
SAMPLING_FIELDS: list[tuple[str, str, dict[str, Any]]] = [
    ("temperature", "slider", {"min_value": 0.0, "max_value": 5.0, "step": 0.05}),
    ("top_p", "slider", {"min_value": 0.0, "max_value": 1.0, "step": 0.01}),
    ("top_k", "number", {"min_value": 0, "max_value": 1000, "step": 1}),
    ("min_p", "slider", {"min_value": 0.0, "max_value": 1.0, "step": 0.01}),
    ("presence_penalty", "slider", {"min_value": 0.0, "max_value": 2.0, "step": 0.05}),
    ("frequency_penalty", "slider", {"min_value": 0.0, "max_value": 2.0, "step": 0.05}),
    ("penalty_decay", "slider", {"min_value": 0.9, "max_value": 1.0, "step": 0.001}),
    # DRY: a word-for-word repeat of the chat's recent text costs more the longer it runs
    ("dry_multiplier", "slider", {"min_value": 0.0, "max_value": 5.0, "step": 0.05}),
    ("dry_base", "slider", {"min_value": 1.0, "max_value": 4.0, "step": 0.05}),
    ("dry_allowed_length", "number", {"min_value": 1, "max_value": 20, "step": 1}),
    ("max_tokens", "number", {"min_value": 1, "max_value": 8192, "step": 10}),
    ("seed", "seed", {}),
]


def sampling(conv: Conversation) -> None:
    """Per-chat sampling with presets, saved in conversation.sampling on every change."""
    chats = rt().chat
    prefix = f"samp_{conv.id}_"
    params = conversation_params(conv)
    preset = (conv.sampling or {}).get("preset")
    preset_options = [*PRESETS, "custom"]
    if prefix + "preset" not in state:
        state[prefix + "preset"] = preset if preset in preset_options else "custom"
    for name, _kind, _kw in SAMPLING_FIELDS:
        if prefix + name not in state:
            state[prefix + name] = getattr(params, name)

    def save(preset_name: str) -> None:
        values = {name: state[prefix + name] for name, _k, _w in SAMPLING_FIELDS}
        try:
            chats.set_sampling(conv.id, values, preset_name)
        except (AppError, TypeError, ValueError) as e:
            state.flash_error = str(e)

    def on_preset() -> None:
        name = state[prefix + "preset"]
        if name in PRESETS:
            values = chats.preset_sampling(name)  # "auto": the loaded model's own values
            for fname, _k, _w in SAMPLING_FIELDS:
                state[prefix + fname] = values.get(fname, getattr(PRESETS[name], fname))
        save(name)

    def on_field() -> None:
        state[prefix + "preset"] = "custom"
        save("custom")

    st.selectbox(
        T("preset"),
        preset_options,
        key=prefix + "preset",
        format_func=lambda n: T(f"preset_{n}"),
        on_change=on_preset,
    )
    for name, kind, kw in SAMPLING_FIELDS:
        label = T(f"samp_{name}")
        if kind == "slider":
            st.slider(label, key=prefix + name, on_change=on_field, **kw)
        elif kind == "number":
            st.number_input(label, key=prefix + name, on_change=on_field, **kw)
        else:
            st.number_input(
                label,
                key=prefix + name,
                min_value=0,
                step=1,
                placeholder=T("seed_random"),
                on_change=on_field,
            )


if __name__ == "__main__":  # run as a page by the old pages/ mechanism: it is not one
    from pages.ui_common import page_guard

    page_guard()
