"""Chat: pick a character and one of its chats, talk, regenerate, page through versions, edit,
delete, rewind, continue, choose who speaks next, per-chat sampling.

Flow of one run: decide the conversation (query parameter `chat`, else session state), take the
chat input (it adds the user's message and asks for a reply), draw the history (the last N
messages only), then run a pending generation at the bottom and rerun when it is done.

A generation streams with st.write_stream; core.chat.ReplySaver saves the reply every couple of
seconds while it streams (a crash leaves it saved, marked interrupted) and, through
engine.reply(on_finish=...), however it ends: finished, stopped by the Stop button (the click
reruns the script, which interrupts the stream; the finally below closes the reply so on_finish
runs at once), or cut by max_tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import streamlit as st

from core import chat
from core.engine.sampler import PRESETS
from core.errors import AppError
from core.prompt import NARRATOR_NAME
from core.store import ChatMessage, Conversation

if TYPE_CHECKING:
    from streamlit.delta_generator import DeltaGenerator

from pages import group_ui, lore_ui, prompt_ui, versions_ui
from pages.ui_common import (
    PAGE_CHARACTERS,
    StreamText,
    T,
    avatar_image,
    conversation_params,
    md_inline,
    md_text,
    model_loading,
    model_notice,
    new_conversation,
    page_guard,
    rt,
    show_error,
    store,
    wait_for_model,
)

page_guard()

DEFAULT_VISIBLE = 30  # messages drawn when a chat opens
MORE_STEP = 50  # messages added by "show earlier"
ROLES = ("char", "narrator", "user")

s = store()
svc = rt().chat
ss = st.session_state

# A click during a reply (Stop, a new message...) makes Streamlit start this script again in a
# new thread while the old run is still ending (runner.fastReruns). The old run saves the
# interrupted reply in its `finally`; wait for that, so this run reads the chat with the reply
# in it and puts a new message after it, not before.
_previous = ss.get("gen_done")
if _previous is not None and not _previous.is_set():
    _previous.wait(timeout=15)


# --- which conversation ----------------------------------------------------------------------
def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# the URL (?chat=ID) names the open chat, so a reload or a link reopens it; it wins only when it
# differs from what this page last put there (callbacks change ss.conv_id, not the URL)
qp_conv = _int(st.query_params.get("chat"))
if qp_conv is not None and qp_conv != ss.get("qp_chat"):
    ss.conv_id = qp_conv
conv = s.get_conversation(ss.get("conv_id")) if ss.get("conv_id") else None
if conv is None and ss.get("conv_id"):
    ss.conv_id = None
if conv is not None:
    ss.char_id = conv.character_id
    if st.query_params.get("chat") != str(conv.id):
        st.query_params["chat"] = str(conv.id)
    ss.qp_chat = conv.id
else:
    if "chat" in st.query_params:
        del st.query_params["chat"]
    ss.qp_chat = None

try:
    characters = s.list_characters()
except AppError as e:
    show_error(e)
    characters = []
chars_by_id = {c.id: c for c in characters}
if ss.get("char_id") is None and conv is None and characters:
    ss.char_id = characters[0].id
character = chars_by_id.get(ss.get("char_id"))


# The browser sends a select box's choice back as its label; when a label changes (a chat was
# renamed) the choice arrives as None. Such a None is not a choice: ignore it.
def _select_character() -> None:
    if ss.chat_char_sel is None:
        return
    ss.char_id = ss.chat_char_sel
    latest = s.list_conversations(ss.char_id, limit=1) if ss.char_id is not None else []
    ss.conv_id = latest[0].id if latest else None
    ss.editing = None


def _select_chat() -> None:
    if ss.chat_conv_sel is None:
        return
    ss.conv_id = ss.chat_conv_sel
    ss.editing = None


def _new_chat(char_id: int) -> None:
    try:
        c = new_conversation(char_id)
    except AppError as e:
        ss.flash_error = str(e)
        return
    ss.conv_id = c.id
    ss.editing = None


# --- sidebar: character, chat, chat actions, sampling ----------------------------------------
with st.sidebar:
    st.subheader(T("nav_chat"))
    if characters:
        wanted = ss.get("char_id") if ss.get("char_id") in chars_by_id else None
        if ss.get("chat_char_sel", -1) != wanted:
            ss.chat_char_sel = wanted
        st.selectbox(
            T("character"),
            options=list(chars_by_id),
            format_func=lambda i: chars_by_id[i].name,
            key="chat_char_sel",
            index=None,
            placeholder=T("choose_character"),
            on_change=_select_character,
        )
    if character is not None:
        chats = s.list_conversations(character.id, limit=200)
        chat_ids = [c.id for c in chats]
        if conv is not None and conv.id in chat_ids:
            if ss.get("chat_conv_sel") != conv.id:
                ss.chat_conv_sel = conv.id
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
            on_click=_new_chat,
            args=(character.id,),
            use_container_width=True,
        )
    elif conv is not None:
        st.caption(T("character_deleted", name=md_inline(conv.character_name)))

    if conv is not None:
        with st.expander(T("this_chat"), icon=":material/edit_note:"):
            with st.form(f"rename_{conv.id}", border=False):
                new_title = st.text_input(T("title"), value=conv.title, key=f"title_{conv.id}")
                if st.form_submit_button(T("rename"), icon=":material/edit:"):
                    try:
                        s.rename_conversation(conv.id, new_title)
                    except AppError as e:
                        show_error(e)
                    else:
                        st.rerun()
            from core.roleplay.chat_io import export_jsonl, export_markdown

            cid = conv.id
            st.download_button(
                T("export_markdown"),
                data=lambda: export_markdown(s, cid),
                file_name=f"chat-{cid}.md",
                mime="text/markdown",
                key=f"dl_md_{cid}",
                icon=":material/download:",
                on_click="ignore",
            )
            st.download_button(
                T("export_jsonl"),
                data=lambda: export_jsonl(s, cid),
                file_name=f"chat-{cid}.jsonl",
                mime="application/jsonl",
                key=f"dl_jsonl_{cid}",
                icon=":material/download:",
                on_click="ignore",
            )
            lore_ui.chat_lorebooks(s, conv)  # lorebooks attached to this chat
            with st.popover(T("delete_chat"), icon=":material/delete:"):
                st.write(T("delete_chat_confirm"))
                if st.button(T("delete"), key=f"del_chat_{conv.id}", type="primary"):
                    try:
                        s.delete_conversation(conv.id)
                    except AppError as e:
                        show_error(e)
                    else:
                        ss.conv_id = None
                        st.rerun()
    if character is not None:
        with st.expander(T("import_chat"), icon=":material/upload:"):
            up = st.file_uploader(T("import_chat_file"), type=["jsonl"], key="import_chat_up")
            if up is not None and st.button(T("import"), key="import_chat_btn"):
                from core.roleplay.chat_io import import_jsonl

                try:
                    imported = import_jsonl(s, up.getvalue(), character.id)
                except AppError as e:
                    show_error(e)
                else:
                    ss.conv_id = imported.id
                    st.rerun()


def _sampling_controls(conv: Conversation) -> None:
    """Per-chat sampling with presets, saved in conversation.sampling on every change."""
    prefix = f"samp_{conv.id}_"
    params = conversation_params(conv)
    preset = (conv.sampling or {}).get("preset")
    preset_options = [*PRESETS, "custom"]
    fields: list[tuple[str, str, dict[str, Any]]] = [
        ("temperature", "slider", {"min_value": 0.0, "max_value": 5.0, "step": 0.05}),
        ("top_p", "slider", {"min_value": 0.0, "max_value": 1.0, "step": 0.01}),
        ("top_k", "number", {"min_value": 0, "max_value": 1000, "step": 1}),
        ("min_p", "slider", {"min_value": 0.0, "max_value": 1.0, "step": 0.01}),
        ("presence_penalty", "slider", {"min_value": 0.0, "max_value": 2.0, "step": 0.05}),
        ("frequency_penalty", "slider", {"min_value": 0.0, "max_value": 2.0, "step": 0.05}),
        ("penalty_decay", "slider", {"min_value": 0.9, "max_value": 1.0, "step": 0.001}),
        ("max_tokens", "number", {"min_value": 1, "max_value": 8192, "step": 10}),
        ("seed", "seed", {}),
    ]
    if prefix + "preset" not in ss:
        ss[prefix + "preset"] = preset if preset in preset_options else "custom"
    for name, _kind, _kw in fields:
        if prefix + name not in ss:
            ss[prefix + name] = getattr(params, name)

    def save(preset_name: str) -> None:
        values = {name: ss[prefix + name] for name, _k, _w in fields}
        try:
            svc.set_sampling(conv.id, values, preset_name)
        except (AppError, TypeError, ValueError) as e:
            ss.flash_error = str(e)

    def on_preset() -> None:
        name = ss[prefix + "preset"]
        if name in PRESETS:
            values = svc.preset_sampling(name)  # "auto": the loaded model's own values
            for fname, _k, _w in fields:
                ss[prefix + fname] = values.get(fname, getattr(PRESETS[name], fname))
        save(name)

    def on_field() -> None:
        ss[prefix + "preset"] = "custom"
        save("custom")

    st.selectbox(
        T("preset"),
        preset_options,
        key=prefix + "preset",
        format_func=lambda n: T(f"preset_{n}"),
        on_change=on_preset,
    )
    for name, kind, kw in fields:
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


if conv is not None:
    with st.sidebar.expander(T("sampling"), icon=":material/tune:"):
        _sampling_controls(conv)
    group_ui.sidebar(s, conv, chars_by_id)  # group chats: who speaks, members; add a character

if ss.get("flash_error"):
    st.error(f"{T('err_prefix')} {md_inline(ss.pop('flash_error'))}", icon=":material/error:")
group_ui.show_flash()

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
            on_click=_new_chat,
            args=(character.id,),
        )
    else:
        st.info(T("choose_character"))
    st.stop()

# --- the open chat -------------------------------------------------------------------------------
ctx = chat.conversation_context(s, conv.id)
user_label = ctx.user_name
names = {"char": ctx.name, "narrator": NARRATOR_NAME, "user": user_label}

if conv.members:  # a group chat: each member with its avatar
    group_ui.header(conv, chars_by_id)
else:
    with st.container(horizontal=True, vertical_alignment="center"):
        avatar_image(character, width=48)
        with st.container():
            st.markdown(f"**{md_inline(ctx.name)}**")
            st.caption(md_inline(conv.title))

# the model: never waited for here (the page says it loads); a reply waits for it (generate)
engine = model_notice("chat")
can_reply = engine is not None or model_loading()


def _warm(conversation_id: int) -> None:
    try:
        svc.warm(conversation_id)
    except Exception:  # only a head start: the reply prefills whatever is missing
        pass


# prefill the opened chat's state in the background, so the first reply starts at once
if engine is not None and ss.get("warmed") != (conv.id, id(engine)) and not ss.get("pending"):
    ss.warmed = (conv.id, id(engine))
    # not a daemon: a prefill cut off by interpreter exit inside torch aborts the process
    threading.Thread(target=_warm, args=(conv.id,), daemon=False, name=f"warm-{conv.id}").start()

# the user's message: added now, the reply is generated after the history is drawn
prompt = st.chat_input(T("chat_placeholder", name=user_label), key="chat_input")
if prompt:
    try:
        svc.send(conv.id, prompt)
    except AppError as e:
        show_error(e)
    else:
        nxt = ss.get("next_speaker", "char")
        if conv.members:  # a group chat: the member its setting chooses (or the user picks)
            ss.pending = group_ui.after_send(conv)
        elif nxt != "user":
            ss.pending = {"op": "new", "role": nxt, "conv": conv.id}
        ss.editing = None

messages = s.list_messages(conv.id)
pending = ss.pop("pending", None)
if pending and pending.get("conv") != conv.id:
    pending = None
if pending and pending["op"] in ("regen", "continue", "regen3"):
    if not messages or messages[-1].id != pending.get("msg"):
        pending = None  # the chat changed since the click
if pending is None and conv.members:
    pending = group_ui.auto_next(conv, len(messages))  # the auto mode's next turn, if it runs

shown = messages[:-1] if pending and pending["op"] in ("regen", "continue", "regen3") else messages


def _display_name(role: str, name: str) -> str:
    return name or (T("narrator") if role == "narrator" else names.get(role, role))


def _meta_line(meta: dict[str, Any]) -> str:
    parts: list[str] = []
    if isinstance(meta.get("tokens"), int):
        parts.append(T("meta_tokens", n=meta["tokens"]))
        if meta.get("tok_s"):
            parts.append(T("meta_speed", v=f"{float(meta['tok_s']):.1f}"))
    stop = meta.get("stop")
    if stop in ("cancel", "closed"):
        parts.append(T("meta_stopped"))
    elif stop == "interrupted":
        parts.append(T("meta_interrupted"))
    elif stop == "length":
        parts.append(T("meta_length"))
    if meta.get("edited"):
        parts.append(T("meta_edited"))
    return " · ".join(parts)


# --- message actions (callbacks run before the next script run) -------------------------------
def _act(fn: Callable[..., object], *args: Any) -> None:
    try:
        fn(*args)
    except AppError as e:
        ss.flash_error = str(e)


def _select_alt(msg_id: int, index: int) -> None:
    _act(svc.choose_version, msg_id, index)


def _delete_msg(msg_id: int) -> None:
    _act(svc.delete, msg_id)
    ss.editing = None


def _rewind(position: int) -> None:
    _act(svc.rewind, conv.id, position)
    ss.editing = None


def _start_edit(msg_id: int) -> None:
    ss.editing = msg_id


def _queue(op: str, **kw: Any) -> None:
    ss.pending = {"op": op, "conv": conv.id, **kw}
    ss.editing = None


def _more() -> None:
    ss[f"visible_{conv.id}"] = ss.get(f"visible_{conv.id}", DEFAULT_VISIBLE) + MORE_STEP


def render_message(msg: ChatMessage, is_last: bool) -> None:
    name = _display_name(msg.role, msg.name)
    with st.chat_message(
        name if msg.role != "user" else "user",
        avatar=group_ui.avatar(msg.role, group_ui.speaker(msg, conv, chars_by_id, character), conv),
    ):
        st.caption(md_inline(name))
        if ss.get("editing") == msg.id:
            with st.form(f"editform_{msg.id}"):
                text = st.text_area(
                    T("edit_message"), value=msg.text, key=f"edit_text_{msg.id}", height=150
                )
                with st.container(horizontal=True):
                    save = st.form_submit_button(T("save"), type="primary", icon=":material/check:")
                    cancel = st.form_submit_button(T("cancel"), icon=":material/close:")
            if save:
                try:
                    svc.edit(msg.id, text)
                except AppError as e:
                    show_error(e)
                else:
                    ss.editing = None
                    st.rerun()
            if cancel:
                ss.editing = None
                st.rerun()
            return
        st.markdown(md_text(msg.text))
        meta_line = _meta_line(msg.meta or {})
        if meta_line:
            st.caption(meta_line)
        lore_ui.fired_entries(msg)  # the lorebook entries that fired for this reply
        prompt_ui.view(msg)  # "what the model saw", when opened from the more menu
        n_alts = len(msg.alternatives or [])
        with st.container(horizontal=True, gap="small", vertical_alignment="center"):
            if n_alts > 1:
                st.button(
                    ":material/chevron_left:",
                    key=f"prev_{msg.id}",
                    help=T("prev_version"),
                    disabled=msg.chosen <= 0,
                    on_click=_select_alt,
                    args=(msg.id, msg.chosen - 1),
                    type="tertiary",
                )
                st.caption(f"{msg.chosen + 1}/{n_alts}", width="content")
                st.button(
                    ":material/chevron_right:",
                    key=f"next_{msg.id}",
                    help=T("next_version"),
                    disabled=msg.chosen >= n_alts - 1,
                    on_click=_select_alt,
                    args=(msg.id, msg.chosen + 1),
                    type="tertiary",
                )
            if is_last and can_reply:
                meta = msg.meta or {}
                generated = isinstance(meta.get("tokens"), int) or meta.get("stop") == "interrupted"
                if msg.role != "user" or generated:
                    st.button(
                        ":material/refresh:",
                        key=f"regen_{msg.id}",
                        help=T("regenerate"),
                        on_click=_queue,
                        type="tertiary",
                        kwargs={"op": "regen", "msg": msg.id},
                    )
                    st.button(  # three versions at once, decoded as one batch
                        "×3",
                        key=f"regen3_{msg.id}",
                        help=T("regenerate_3"),
                        on_click=_queue,
                        type="tertiary",
                        kwargs={"op": "regen3", "msg": msg.id},
                    )
                st.button(
                    ":material/fast_forward:",
                    key=f"cont_{msg.id}",
                    help=T("continue"),
                    on_click=_queue,
                    type="tertiary",
                    kwargs={"op": "continue", "msg": msg.id},
                )
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
                st.button(
                    T("delete_message"),
                    key=f"del_{msg.id}",
                    icon=":material/delete:",
                    on_click=_delete_msg,
                    args=(msg.id,),
                )
                st.button(
                    T("rewind_here"),
                    key=f"rewind_{msg.id}",
                    icon=":material/undo:",
                    disabled=is_last,
                    on_click=_rewind,
                    args=(msg.position + 1,),
                )


visible = ss.get(f"visible_{conv.id}", DEFAULT_VISIBLE)
hidden = max(0, len(shown) - visible)
if hidden:
    st.button(
        T("show_earlier", n=hidden),
        key="show_earlier",
        icon=":material/expand_less:",
        on_click=_more,
    )
for i, m in enumerate(shown[hidden:], start=hidden):
    render_message(m, is_last=(i == len(shown) - 1) and not pending)
if not messages:
    st.caption(T("empty_chat"))


# --- generation --------------------------------------------------------------------------------
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
    op: str, role: str = "char", target: ChatMessage | None = None, member: int | None = None
) -> None:
    """Stream one reply (by a group chat's `member` when given); the service saves it however
    it ends (also when stopped)."""
    reply_engine = engine if engine is not None else wait_for_model()  # a load in progress
    if reply_engine is None:
        st.warning(T("no_model_loaded"))
        return
    done = threading.Event()
    ss.gen_done = done  # the next run of this session waits for it (see the top)
    shown_role, shown_name = (role, "") if target is None else (target.role, target.name)
    speaking = chars_by_id.get(member) if member is not None else None
    if speaking is not None:
        shown_name = speaking.name
    elif target is not None:
        speaking = group_ui.speaker(target, conv, chars_by_id, None)
    name = _display_name(shown_role, shown_name)
    turn: chat.Turn | None = None
    error: BaseException | None = None
    with st.chat_message(
        name if shown_role != "user" else "user",
        avatar=group_ui.avatar(shown_role, speaking or character, conv),
    ):
        st.caption(md_inline(name))
        waiting = st.empty()
        if reply_engine.busy:
            waiting.info(T("waiting_model"), icon=":material/hourglass_top:")
        body = st.container(key="streaming")
        stop_slot = st.empty()  # a click reruns the script, which interrupts the stream
        stop_slot.button(T("stop"), key="stop_gen", icon=":material/stop_circle:")
        try:
            if member is not None:  # a group chat's member
                turn = svc.reply_as(conv.id, member)
            else:
                turn = svc.reply(
                    conv.id, op, role=role, target_id=target.id if target is not None else None
                )
            source = _until_first(iter(turn), waiting)
            if op == "continue":  # show the old text, then what the model adds to it
                source = _chain([turn.base_text], source)
            with body:
                st.write_stream(StreamText(source))
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


if pending:
    if pending["op"] == "new":
        generate("new", role=pending.get("role", "char"), member=pending.get("member"))
    elif pending["op"] == "regen3":
        versions_ui.generate_versions(conv.id, messages[-1])
    else:
        generate(pending["op"], target=messages[-1])


# --- who speaks next -----------------------------------------------------------------------------
def _speaker_label(role: str) -> str:  # radio options render markdown: names go escaped
    if role == "user":
        return T("you_named", name=md_inline(user_label))
    return md_inline(names["char"]) if role == "char" else T("narrator")


if conv.members:  # a group chat: a member, the narrator or nobody; the auto mode
    group_ui.next_controls(conv, chars_by_id, user_label, len(messages), _queue, can_reply)
else:
    with st.container(horizontal=True, vertical_alignment="bottom", gap="small"):
        st.radio(
            T("next_speaker"),
            ROLES,
            key="next_speaker",
            horizontal=True,
            format_func=_speaker_label,
        )
        st.button(
            T("generate"),
            key="generate_next",
            icon=":material/play_arrow:",
            disabled=not can_reply,
            on_click=lambda: _queue("new", role=ss.get("next_speaker", "char")),
        )
