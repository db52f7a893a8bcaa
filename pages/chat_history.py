"""Not a page: the Chat page's messages. Each message with its speaker and avatar, its meta line
(tokens, speed, how it stopped), its versions, and its actions: regenerate, ×3, continue, edit,
delete, delete this version, rewind, "what the model saw". The actions are button callbacks:
they change the chat through the chat service, or queue a reply (`queue`) that the page runs
after drawing. What a delete, a version's delete or a rewind removed is kept: the page says what
went, with an Undo (`undo_bar`), until the next removal or message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from core.contracts import Op, ReplyMeta, Role
from core.errors import AppError
from core.store import Character, ChatMessage, Conversation
from pages import group_ui, lore_ui, prompt_ui
from pages.ui_common import T, md_inline, md_text, rt, show_error

DEFAULT_VISIBLE = 30  # messages drawn when a chat opens
MORE_STEP = 50  # messages added by "show earlier"

state = st.session_state


@dataclass
class OpenChat:
    """What the Chat page knows of the open chat while it draws it."""

    conv: Conversation
    character: Character | None  # the chat's character (None: deleted)
    characters: dict[int, Character]  # every character, by id (a group's members among them)
    names: dict[str, str]  # role -> the name shown ("char", "narrator", "user")
    can_reply: bool  # a model is loaded or loading

    def display_name(self, role: str, name: str) -> str:
        return name or (T("narrator") if role == Role.NARRATOR else self.names.get(role, role))


def queue(chat: OpenChat, op: Op, **kw: Any) -> None:
    """Ask for a reply (run at the bottom of the next run: `pending`)."""
    state.pending = {"op": op, "conv": chat.conv.id, **kw}
    state.editing = None


def meta_line(meta: dict[str, Any] | None) -> str:
    m = ReplyMeta.from_dict(meta)
    parts: list[str] = []
    if m.tokens is not None:
        parts.append(T("meta_tokens", n=m.tokens))
        if m.tok_s:
            parts.append(T("meta_speed", v=f"{float(m.tok_s):.1f}"))
    if m.stopped_by_user:
        parts.append(T("meta_stopped"))
    elif m.stop == "interrupted":
        parts.append(T("meta_interrupted"))
    elif m.stop == "length":
        parts.append(T("meta_length"))
    if m.edited:
        parts.append(T("meta_edited"))
    return " · ".join(parts)


# --- actions (callbacks run before the next script run) ------------------------------------------
def _act(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except AppError as e:
        state.flash_error = str(e)


def _choose(msg_id: int, index: int) -> None:
    _act(rt().chat.choose_version, msg_id, index)


def _removed(fn: Any, *args: Any) -> None:
    """A removal (delete, a version's delete, rewind): done, and offered for an undo."""
    state.editing = None
    try:
        removed = fn(*args)
    except AppError as e:
        state.flash_error = str(e)
        return
    if removed.token:
        state.undo = {"token": removed.token, "conv": removed.conversation_id}
        state.undo |= {"kind": removed.kind, "n": removed.messages}


def _delete(msg_id: int) -> None:
    _removed(rt().chat.delete, msg_id)


def _delete_version(msg_id: int, index: int) -> None:
    _removed(rt().chat.delete_version, msg_id, index)


def _rewind(conversation_id: int, position: int) -> None:
    _removed(rt().chat.rewind_to, conversation_id, position)


def _undo() -> None:
    undo = state.get("undo")
    if not undo or undo.get("done"):
        return
    try:
        back = rt().chat.undo(undo["token"])
    except AppError as e:
        state.flash_error = str(e)
        state.pop("undo", None)
    else:
        state.undo = {**undo, "done": True, "n": back.messages}


def undo_bar(conversation_id: int) -> None:
    """What the last removal in this chat took away, with Undo; once undone, that it is back
    (the button stays, disabled: a clicked button the next run would not draw stays in the
    browser while it has the focus, and moves the page when it loses it). Shown until the
    next removal, a message sent, or another chat; always one container, so that the controls
    after it keep their place."""
    undo = state.get("undo")
    with st.container(key="undo_bar"):
        if not undo or undo.get("conv") != conversation_id:
            return
        with st.container(horizontal=True, vertical_alignment="center"):
            done = bool(undo.get("done"))
            what = f"undo_done_{undo['kind']}" if done else f"undo_{undo['kind']}"
            icon = ":material/check_circle:" if done else ":material/delete:"
            st.success(T(what, n=undo["n"]), icon=icon)
            st.button(
                T("undo"), key="undo_btn", icon=":material/undo:", on_click=_undo, disabled=done
            )


def _start_edit(msg_id: int) -> None:
    state.editing = msg_id


def _more(conversation_id: int) -> None:
    key = f"visible_{conversation_id}"
    state[key] = state.get(key, DEFAULT_VISIBLE) + MORE_STEP


# --- drawing -------------------------------------------------------------------------------------
def history(chat: OpenChat, shown: list[ChatMessage], replying: bool) -> None:
    """The last messages of `shown` ("show earlier" adds more); the last one has the reply
    actions unless a reply is about to run (`replying`)."""
    visible = state.get(f"visible_{chat.conv.id}", DEFAULT_VISIBLE)
    hidden = max(0, len(shown) - visible)
    if hidden:
        st.button(
            T("show_earlier", n=hidden),
            key="show_earlier",
            icon=":material/expand_less:",
            on_click=_more,
            args=(chat.conv.id,),
        )
    for i, m in enumerate(shown[hidden:], start=hidden):
        message(chat, m, is_last=(i == len(shown) - 1) and not replying)


def message(chat: OpenChat, msg: ChatMessage, is_last: bool) -> None:
    name = chat.display_name(msg.role, msg.name)
    speaking = group_ui.speaker(msg, chat.conv, chat.characters, chat.character)
    with st.chat_message(
        name if msg.role != Role.USER else "user",
        avatar=group_ui.avatar(msg.role, speaking, chat.conv),
    ):
        st.caption(md_inline(name))
        if state.get("editing") == msg.id:
            _edit_form(msg)
            return
        st.markdown(md_text(msg.text))
        line = meta_line(msg.meta)
        if line:
            st.caption(line)
        lore_ui.fired_entries(msg)  # the lorebook entries that fired for this reply
        prompt_ui.view(msg)  # "what the model saw", when opened from the more menu
        with st.container(horizontal=True, gap="small", vertical_alignment="center"):
            _versions(msg)
            if is_last and chat.can_reply:
                _reply_buttons(chat, msg)
            st.button(
                ":material/edit:",
                key=f"edit_{msg.id}",
                help=T("edit"),
                on_click=_start_edit,
                args=(msg.id,),
                type="tertiary",
            )
            with st.popover(":material/more_horiz:", help=T("more_actions"), type="tertiary"):
                prompt_ui.menu_button(msg)
                if len(msg.alternatives or []) > 1:  # one swipe, as SillyTavern deletes it
                    st.button(
                        T("delete_version"),
                        key=f"delver_{msg.id}",
                        icon=":material/layers_clear:",
                        on_click=_delete_version,
                        args=(msg.id, msg.chosen),
                    )
                st.button(
                    T("delete_message"),
                    key=f"del_{msg.id}",
                    icon=":material/delete:",
                    on_click=_delete,
                    args=(msg.id,),
                )
                st.button(
                    T("rewind_here"),
                    key=f"rewind_{msg.id}",
                    icon=":material/undo:",
                    disabled=is_last,
                    on_click=_rewind,
                    args=(chat.conv.id, msg.position + 1),
                )


def _edit_form(msg: ChatMessage) -> None:
    with st.form(f"editform_{msg.id}"):
        text = st.text_area(
            T("edit_message"), value=msg.text, key=f"edit_text_{msg.id}", height=150
        )
        with st.container(horizontal=True):
            save = st.form_submit_button(T("save"), type="primary", icon=":material/check:")
            cancel = st.form_submit_button(T("cancel"), icon=":material/close:")
    if save:
        try:
            rt().chat.edit(msg.id, text)
        except AppError as e:
            show_error(e)
        else:
            state.editing = None
            st.rerun()
    if cancel:
        state.editing = None
        st.rerun()


def _versions(msg: ChatMessage) -> None:
    """‹ i/n ›: the message's versions, when it has several."""
    n_alts = len(msg.alternatives or [])
    if n_alts <= 1:
        return
    st.button(
        ":material/chevron_left:",
        key=f"prev_{msg.id}",
        help=T("prev_version"),
        disabled=msg.chosen <= 0,
        on_click=_choose,
        args=(msg.id, msg.chosen - 1),
        type="tertiary",
    )
    st.caption(f"{msg.chosen + 1}/{n_alts}", width="content")
    st.button(
        ":material/chevron_right:",
        key=f"next_{msg.id}",
        help=T("next_version"),
        disabled=msg.chosen >= n_alts - 1,
        on_click=_choose,
        args=(msg.id, msg.chosen + 1),
        type="tertiary",
    )


def _reply_buttons(chat: OpenChat, msg: ChatMessage) -> None:
    """Regenerate and ×3 (for a generated message), continue."""
    if rt().chat.can_regenerate(msg):
        st.button(
            ":material/refresh:",
            key=f"regen_{msg.id}",
            help=T("regenerate"),
            on_click=queue,
            type="tertiary",
            args=(chat, Op.REGEN),
            kwargs={"msg": msg.id},
        )
        st.button(  # three versions at once, decoded as one batch
            "×3",
            key=f"regen3_{msg.id}",
            help=T("regenerate_3"),
            on_click=queue,
            type="tertiary",
            args=(chat, Op.VERSIONS),
            kwargs={"msg": msg.id},
        )
    st.button(
        ":material/fast_forward:",
        key=f"cont_{msg.id}",
        help=T("continue"),
        on_click=queue,
        type="tertiary",
        args=(chat, Op.CONTINUE),
        kwargs={"msg": msg.id},
    )


if __name__ == "__main__":  # run as a page by the old pages/ mechanism: it is not one
    from pages.ui_common import page_guard

    page_guard()
