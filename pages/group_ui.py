"""Not a page: the group chat parts of the Home and Chat pages. Starting a group chat, its
members with their avatars, the group's settings (who speaks next, self-replies, auto turns),
mute / unmute / remove / add a member, the manual pick and the auto mode. The rules live in
core/roleplay/group.py (who speaks) and the chat service (core/chat: members, settings,
prompts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from core.contracts import Op, Role
from core.errors import AppError
from core.store import Character, ChatMessage, Conversation
from pages.ui_common import T, avatar_image, md_inline, open_chat, role_avatar, rt, show_error

ss = st.session_state
AUTO = "group_auto_mode"  # session state: the running auto mode (core.chat.AutoTalk)


def _modes() -> dict[str, str]:
    return {
        "natural": T("group_mode_natural"),
        "list": T("group_mode_list"),
        "manual": T("group_mode_manual"),
    }


# --- Home: start a group chat -----------------------------------------------------------------
def new_group_form(characters: list[Character]) -> None:
    """Pick two or more characters and start a chat with all of them."""
    if len(characters) < 2:
        return
    by_id = {c.id: c for c in characters}
    with st.expander(T("group_new"), icon=":material/groups:"):
        picked = st.multiselect(
            T("group_pick"),
            options=list(by_id),
            format_func=lambda i: by_id[i].name,
            key="group_new_pick",
        )
        if st.button(T("group_start"), key="group_new_start", icon=":material/forum:"):
            if len(picked) < 2:
                st.warning(T("group_need_two"))
                return
            try:
                conv = rt().chat.new_group_chat(
                    [int(i) for i in picked], default_user=T("default_user")
                )
            except AppError as e:
                show_error(e)
            else:
                open_chat(conv.id)


# --- Chat: who is in the chat ---------------------------------------------------------------
def members(conv: Conversation, chars_by_id: dict[Any, Character]) -> list[Character]:
    return [chars_by_id[i] for i in conv.members or [] if i in chars_by_id]


def header(conv: Conversation, chars_by_id: dict[Any, Character]) -> None:
    """The group's members, each with its avatar and name (muted ones say so), and the title."""
    muted = set((conv.group or {}).get("muted", []))
    with st.container(horizontal=True, vertical_alignment="center", key="group_header"):
        for c in members(conv, chars_by_id):
            with st.container(width="content"):
                avatar_image(c, width=48)
                label = T("group_muted", name=c.name) if c.id in muted else c.name
                st.caption(md_inline(label))
    st.caption(md_inline(conv.title))


def speaker(
    msg: ChatMessage, conv: Conversation, chars_by_id: dict[Any, Character], default: Any
) -> Any:
    """The character who wrote a message: its speaker in a group chat, else `default`."""
    if not conv.members or msg.role != Role.CHAR:
        return default
    if msg.character_id in chars_by_id:
        return chars_by_id[msg.character_id]
    by_name = {c.name: c for c in members(conv, chars_by_id)}
    return by_name.get(msg.name, default)


@st.cache_data(show_spinner=False, max_entries=500)
def _initials(name: str) -> bytes:
    from core.roleplay.avatars import placeholder_png

    return placeholder_png(name, size=128)


def avatar(role: str, character: Character | None, conv: Conversation) -> Any:
    """A message's avatar: in a group chat, a member without a picture gets its own initials
    (the page's shared bot icon would make the members look alike)."""
    if conv.members and role == Role.CHAR and character is not None and not character.avatar:
        return _initials(character.name)
    return role_avatar(role, character)


# --- Chat: the group's settings and members (sidebar) ---------------------------------------
def _act(fn: Callable[..., object], *args: Any, **kw: Any) -> None:
    try:
        fn(*args, **kw)
    except AppError as e:
        ss.flash_error = str(e)


def sidebar(conv: Conversation, chars_by_id: dict[Any, Character]) -> None:
    """Settings and members of a group chat; in any chat, adding a character."""
    chats = rt().chat
    cid = conv.id
    group = conv.group or {}
    with st.sidebar.expander(T("group_settings"), icon=":material/groups:"):
        if conv.members:
            modes = _modes()
            mode = group.get("activation", "natural")
            st.selectbox(
                T("group_activation"),
                list(modes),
                index=list(modes).index(mode) if mode in modes else 0,
                format_func=lambda m: modes[m],
                key=f"group_mode_{cid}",
                on_change=lambda: _act(chats.set_group, cid, activation=ss[f"group_mode_{cid}"]),
            )
            st.checkbox(
                T("group_allow_self"),
                value=bool(group.get("allow_self")),
                key=f"group_self_{cid}",
                on_change=lambda: _act(chats.set_group, cid, allow_self=ss[f"group_self_{cid}"]),
            )
            st.number_input(
                T("group_auto_turns"),
                min_value=1,
                max_value=50,
                step=1,
                value=int(group.get("auto_turns") or 3),
                key=f"group_turns_{cid}",
                on_change=lambda: _act(
                    chats.set_group, cid, auto_turns=int(ss[f"group_turns_{cid}"])
                ),
            )
            st.markdown(f"**{T('group_members')}**")
            muted = set(group.get("muted", []))
            for c in members(conv, chars_by_id):
                with st.container(horizontal=True, vertical_alignment="center"):
                    avatar_image(c, width=28)
                    st.text(c.name)
                    on = c.id in muted
                    st.button(
                        ":material/volume_up:" if on else ":material/volume_off:",
                        key=f"group_mute_{c.id}",
                        help=T("group_unmute" if on else "group_mute", name=c.name),
                        type="tertiary",
                        on_click=_act,
                        args=(chats.mute_member, cid, c.id, not on),
                    )
                    st.button(
                        ":material/person_remove:",
                        key=f"group_remove_{c.id}",
                        help=T("group_remove", name=c.name),
                        type="tertiary",
                        disabled=len(conv.members) <= 1,
                        on_click=_act,
                        args=(chats.remove_member, cid, c.id),
                    )
        inside = set(conv.members or [conv.character_id])
        others = [c for c in chars_by_id.values() if c.id not in inside]
        if others:
            by_id = {c.id: c for c in others}
            pick = st.selectbox(
                T("group_add"),
                list(by_id),
                index=None,
                format_func=lambda i: by_id[i].name,
                key=f"group_add_{cid}",
            )
            if st.button(
                T("group_add_btn"),
                key=f"group_add_btn_{cid}",
                icon=":material/person_add:",
                disabled=pick is None,
            ):
                try:
                    chats.add_member(cid, int(pick))
                except AppError as e:
                    show_error(e)
                else:
                    ss.flash_info = T("group_added", name=md_inline(by_id[pick].name))
                    st.rerun()


# --- Chat: who speaks next ---------------------------------------------------------------------
def _pending(conv: Conversation, member: int) -> dict[str, Any]:
    return {"op": Op.NEW, "role": Role.CHAR, "member": member, "conv": conv.id}


def after_send(conv: Conversation) -> dict[str, Any] | None:
    """After the user's message: the reply of the member chosen by the chat's setting (none in
    manual mode: the user picks). A message of the user ends the auto mode."""
    ss.pop(AUTO, None)
    if (conv.group or {}).get("activation") == "manual":
        return None
    try:
        who = rt().chat.pick_speaker(conv.id)
    except AppError as e:
        ss.flash_error = str(e)
        return None
    if who is None:
        st.info(T("group_nobody"), icon=":material/info:")
        return None
    return _pending(conv, who)


def auto_next(conv: Conversation) -> dict[str, Any] | None:
    """The next turn of the auto mode, while it runs (the chat service says whether it goes on:
    not after a Stop, when its turns are done, when the last turn's reply is missing...)."""
    auto = ss.get(AUTO)
    if auto is None or auto.conversation_id != conv.id:
        return None
    try:
        auto, who = rt().chat.auto_turn(auto)
    except AppError as e:
        ss.flash_error = str(e)
        auto, who = None, None
    if auto is None or who is None:
        ss.pop(AUTO, None)
        return None
    ss[AUTO] = auto
    return _pending(conv, who)


def stop_auto() -> None:
    """A callback (the reply's Stop, "Stop auto mode"): the auto mode ends; the click's rerun
    has already stopped the reply being streamed."""
    auto = ss.get(AUTO)
    if auto is not None:
        ss[AUTO] = auto.stop()


def _toggle_auto(conv_id: int) -> None:
    auto = ss.get(AUTO)
    if auto is not None and auto.conversation_id == conv_id and not auto.stopped:
        stop_auto()
        return
    try:
        ss[AUTO] = rt().chat.start_auto(conv_id)
    except AppError as e:
        ss.flash_error = str(e)
    ss.editing = None


def next_controls(
    conv: Conversation,
    chars_by_id: dict[Any, Character],
    user_label: str,
    queue: Callable[..., None],
    can_reply: bool,
) -> None:
    """The manual pick (a member, the narrator or nobody), Generate, and the auto mode."""
    muted = set((conv.group or {}).get("muted", []))
    people = {c.id: c for c in members(conv, chars_by_id)}
    options: list[Any] = [*people, "narrator", "user"]

    def label(o: Any) -> str:  # radio options render markdown: names go escaped
        if o == "user":
            return T("you_named", name=md_inline(user_label))
        if o == "narrator":
            return T("narrator")
        name = md_inline(people[o].name)
        return T("group_muted", name=name) if o in muted else name

    if ss.get("group_next") not in options:
        ss.group_next = options[0]

    def go() -> None:
        who = ss.get("group_next")
        if who == Role.NARRATOR:
            queue(Op.NEW, role=Role.NARRATOR)
        elif who in people:
            queue(Op.NEW, role=Role.CHAR, member=who)

    with st.container(horizontal=True, vertical_alignment="bottom", gap="small"):
        st.radio(T("next_speaker"), options, key="group_next", horizontal=True, format_func=label)
        st.button(
            T("generate"),
            key="generate_next",
            icon=":material/play_arrow:",
            disabled=not can_reply,
            on_click=go,
        )
    # one button, one key, whether the auto mode runs or not: the browser keeps a focused
    # widget that a run replaced by another one (Streamlit's "retained" elements) and hides it
    # once it loses the focus, which moved the page under the mouse of whoever clicked Stop
    auto = ss.get(AUTO)
    running = auto is not None and auto.conversation_id == conv.id and not auto.stopped
    turns = int((conv.group or {}).get("auto_turns") or 3)
    with st.container(horizontal=True, vertical_alignment="center", key="group_auto_row"):
        st.button(
            T("group_auto_stop") if running else T("group_auto_start", n=turns),
            key="group_auto",
            icon=":material/stop_circle:" if running else ":material/autoplay:",
            type="primary" if running else "secondary",
            disabled=not (can_reply or running),
            on_click=_toggle_auto,
            args=(conv.id,),
        )
        if running:
            st.caption(T("group_auto_left", n=auto.left))


def show_flash() -> None:
    if ss.get("flash_info"):
        st.info(ss.pop("flash_info"), icon=":material/info:")


if __name__ == "__main__":  # run as a page by the old pages/ mechanism: it is not one
    from pages.ui_common import page_guard

    page_guard()
