"""Not a page: the Chat page's "×3" (three versions of the last message at once). The versions
are decoded as one batch (core/engine/batch.py), each saved as a version of the message when it
ends; they stream side by side, and the Stop button keeps what each had said."""

from __future__ import annotations

import threading
import time
from typing import Any

import streamlit as st

from core.store import ChatMessage
from pages.ui_common import T, md_text, rt, show_error

VERSIONS = 3
ss = st.session_state


def generate_versions(conversation_id: int, target: ChatMessage) -> None:
    """Stream VERSIONS new versions of `target` (the chat's last message) side by side."""
    svc = rt().chat
    done = threading.Event()
    ss.gen_done = done  # the next run of this session waits for it (as for one reply)
    turns: list[Any] = []
    threads: list[threading.Thread] = []
    try:
        turns = svc.regenerate_versions(conversation_id, VERSIONS)
        texts = [""] * len(turns)

        def read(i: int) -> None:
            for piece in turns[i]:
                texts[i] += piece

        threads += [threading.Thread(target=read, args=(i,), daemon=True) for i in range(VERSIONS)]
        for t in threads:
            t.start()
        st.caption(T("writing_versions", n=VERSIONS))
        st.button(T("stop"), key="stop_versions", icon=":material/stop_circle:")
        slots = [col.empty() for col in st.columns(VERSIONS, border=True)]
        while any(t.is_alive() for t in threads):  # a Stop click reruns and ends this loop
            for slot, text in zip(slots, texts, strict=True):
                slot.markdown(md_text(text) if text else "…")
            time.sleep(0.15)
    except Exception as e:  # AppError, or a back end failing: a message, not a traceback
        show_error(e)
        return
    finally:
        for turn in turns:
            turn.cancel.set()  # a Stop click: each ends at its next token
        for t in threads:
            t.join(timeout=15)
        for turn, _ in zip(turns, threads, strict=False):
            turn.done.wait(timeout=15)  # what each said is saved
        done.set()
    errors = [t.error for t in turns if t.error is not None]
    if errors:
        show_error(errors[0])
        return
    st.rerun()
