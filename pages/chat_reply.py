"""Not a page: the Chat page's reply being generated. It streams with st.write_stream; the chat
service's Turn saves the reply every couple of seconds while it streams (a crash leaves it saved,
marked interrupted) and however it ends: finished, stopped by the Stop button (the click reruns
the script, which interrupts the stream; the `finally` below closes the turn so it is saved at
once), or cut by max_tokens."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import streamlit as st

from core import chat as core_chat
from core.contracts import Op, Role
from core.store import ChatMessage
from pages import group_ui
from pages.chat_history import OpenChat
from pages.ui_common import StreamText, T, md_inline, rt, show_error, wait_for_model

if TYPE_CHECKING:
    from streamlit.delta_generator import DeltaGenerator

    from core.engine import Engine

state = st.session_state


def wait_for_previous_run() -> None:
    """A click during a reply (Stop, a new message...) makes Streamlit start the script again
    in a new thread while the old run is still ending (runner.fastReruns). The old run saves the
    interrupted reply in its `finally`; wait for that, so this run reads the chat with the reply
    in it and puts a new message after it, not before."""
    previous = state.get("gen_done")
    if previous is not None and not previous.is_set():
        previous.wait(timeout=15)


def _until_first(pieces: Iterator[str], waiting: DeltaGenerator) -> Iterator[str]:
    """Pass the pieces on; the "waiting for the model" note goes when the first one arrives."""
    first = True
    for piece in pieces:
        if first:
            waiting.empty()
            first = False
        yield piece


def _chain(first: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from first
    yield from rest


def generate(
    chat: OpenChat,
    engine: Engine | None,
    op: Op,
    role: str = Role.CHAR,
    target: ChatMessage | None = None,
    member: int | None = None,
) -> None:
    """Stream one reply (by a group chat's `member` when given); the service saves it however
    it ends (also when stopped)."""
    reply_engine = engine if engine is not None else wait_for_model()  # a load in progress
    if reply_engine is None:
        st.warning(T("no_model_loaded"))
        return
    conv = chat.conv
    done = threading.Event()
    state.gen_done = done  # the next run of this session waits for it (see the top)
    shown_role, shown_name = (role, "") if target is None else (target.role, target.name)
    speaking = chat.characters.get(member) if member is not None else None
    if speaking is not None:
        shown_name = speaking.name
    elif target is not None:
        speaking = group_ui.speaker(target, conv, chat.characters, None)
    name = chat.display_name(shown_role, shown_name)
    turn: core_chat.Turn | None = None
    error: BaseException | None = None
    with st.chat_message(
        name if shown_role != Role.USER else "user",
        avatar=group_ui.avatar(shown_role, speaking or chat.character, conv),
    ):
        st.caption(md_inline(name))
        waiting = st.empty()
        if reply_engine.busy:
            waiting.info(T("waiting_model"), icon=":material/hourglass_top:")
        body = st.empty()  # the reply's text; a group reply made again replaces it
        stop_slot = st.empty()  # a click reruns the script, which interrupts the stream
        # Stop ends the group's auto mode too (its callback runs first in the click's rerun)
        stop_slot.button(
            T("stop"), key="stop_gen", icon=":material/stop_circle:", on_click=group_ui.stop_auto
        )
        try:
            chats = rt().chat
            if member is not None:  # a group chat's member
                turn = chats.reply_as(conv.id, member)
            else:
                target_id = target.id if target is not None else None
                turn = chats.reply(conv.id, op, role=role, target_id=target_id)
            if turn.notice:  # the character's state file is not used (Engine.start_notice)
                state.reply_notice = turn.notice  # shown again after the rerun below
                st.info(md_inline(turn.notice), icon=":material/info:")
            source = _until_first(iter(turn), waiting)
            if op == Op.CONTINUE:  # show the old text, then what the model adds to it
                source = _chain([turn.base_text], source)
            with body.container(key="streaming"):
                st.write_stream(StreamText(source))
            again = turn.retry()  # the chat service's guard: a group reply that repeated one
            if again is not None:
                turn.close()
                turn = again
                with body.container(key="streaming_again"):
                    st.caption(T("reply_repeated"))
                    st.write_stream(StreamText(iter(turn)))
        except Exception as e:  # AppError, or a back end failing: a message, not a traceback
            error = e
        finally:
            # a Stop click or a rerun interrupts write_stream: end the generation here, so
            # the reply is saved before the next run reads the chat
            if turn is not None:
                turn.close()
            done.set()
        stop_slot.empty()
    error = error or (turn.error if turn is not None else None)
    if error is not None:
        show_error(error)
        return
    res = turn.result if turn is not None else None
    if res is not None and not (res.text or "").strip():
        st.warning(T("empty_reply"))
        return
    st.rerun()


if __name__ == "__main__":  # run as a page by the old pages/ mechanism: it is not one
    from pages.ui_common import page_guard

    page_guard()
