"""Not a page: "What the model saw" under a reply (the Chat page's more menu opens it): the
exact prompt of the reply, in a code block, and how many of its tokens came from the cache
(ChatService.prompt_view)."""

from __future__ import annotations

import streamlit as st

from core.errors import AppError
from core.store import ChatMessage
from pages.ui_common import T, rt, show_error

KEY = "prompt_view_of"  # session state: the message whose prompt is shown


def _toggle(message_id: int) -> None:
    ss = st.session_state
    ss[KEY] = None if ss.get(KEY) == message_id else message_id


def menu_button(msg: ChatMessage) -> None:
    """The entry in a reply's more menu."""
    if msg.role == "user":
        return
    st.button(
        T("prompt_view"),
        key=f"promptview_{msg.id}",
        icon=":material/visibility:",
        on_click=_toggle,
        args=(msg.id,),
    )


def view(msg: ChatMessage) -> None:
    """Under the reply, while opened from its menu."""
    if st.session_state.get(KEY) != msg.id:
        return
    with st.expander(T("prompt_view"), expanded=True, icon=":material/visibility:"):
        try:
            pv = rt().chat.prompt_view(msg.conversation_id, msg.id)
        except AppError as e:
            show_error(e)
            return
        if pv.fed_tokens is None:
            st.caption(T("prompt_view_count", prompt=pv.prompt_tokens))
        else:
            st.caption(
                T(
                    "prompt_view_counts",
                    prompt=pv.prompt_tokens,
                    cached=pv.cached_tokens,
                    fed=pv.fed_tokens,
                )
            )
        st.code(pv.text, language=None, wrap_lines=True)
        st.button(
            T("prompt_view_close"),
            key=f"promptview_close_{msg.id}",
            on_click=_toggle,
            args=(msg.id,),
        )
