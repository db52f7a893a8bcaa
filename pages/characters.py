"""Characters: search, create and edit (st.form), duplicate, delete, import and export cards."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import streamlit as st

from core.chat import card_fields
from core.engine.sampler import PRESETS
from core.errors import AppError
from core.prompt import substitute
from core.roleplay.avatars import encode_avatar
from core.roleplay.characters import CharacterService
from core.roleplay.state_files import MAX_STATE_FILE_BYTES, shape_text
from pages import lore_ui
from pages.ui_common import (
    T,
    avatar_image,
    md_inline,
    new_conversation,
    open_chat,
    page_guard,
    rt,
    show_error,
    store,
)

page_guard()

IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "gif", "bmp"]
_SEPARATOR = re.compile(r"^\s*---\s*$", re.MULTILINE)

s = store()
characters_service = CharacterService(s)  # every change of a character goes through it
ss = st.session_state

st.title(T("nav_characters"))
if ss.get("char_flash"):
    st.success(ss.pop("char_flash"), icon=":material/check_circle:")
if ss.get("char_error"):
    st.error(f"{T('err_prefix')} {md_inline(ss.pop('char_error'))}", icon=":material/error:")
for message in ss.pop("char_import_errors", None) or []:
    st.error(message, icon=":material/error:")
for message in ss.pop("char_notes", None) or []:  # a state file a card names but did not bring
    st.warning(md_inline(message), icon=":material/warning:")


# --- helpers -----------------------------------------------------------------------------------
def split_greetings(first: str, alternates: str) -> list[str]:
    alts = [g.strip() for g in _SEPARATOR.split(alternates or "")]
    return [g for g in [(first or "").strip(), *alts] if g]


def stop_lines(text: str) -> list[str]:
    """One stop string a line; a typed \\n stands for a line break."""
    return [line.replace("\\n", "\n") for line in (text or "").splitlines() if line.strip()]


@st.cache_data(show_spinner=False, max_entries=8)
def _preview(data: bytes) -> bytes | str:
    """The picture as it will be stored (checked and re-encoded), or why it is refused."""
    try:
        return encode_avatar(data)
    except AppError as e:
        return str(e)


def _edit(target: int | Literal["new"] | None) -> None:
    ss.char_edit = target


def _duplicate(char_id: int) -> None:
    try:
        copy = characters_service.duplicate(char_id)
    except AppError as e:
        ss.char_error = str(e)
    else:
        ss.char_flash = T("duplicated", name=md_inline(copy.name))


def _delete(char_id: int, name: str) -> None:
    chats = ss.get(f"del_chats_{char_id}", "keep")
    try:
        characters_service.delete(char_id, chats=chats)
    except AppError as e:
        ss.char_error = str(e)
    else:
        ss.char_flash = T("deleted_character", name=md_inline(name))
        if ss.get("char_edit") == char_id:
            ss.char_edit = None
        if ss.get("char_id") == char_id:
            ss.char_id = None


def _card_extra(ch: Any, **fields: str) -> dict[str, Any]:
    """The card's other fields with these set (an empty one is removed)."""
    extra = dict(ch.card_extra or {}) if ch is not None else {}
    for key, value in fields.items():
        if (value or "").strip():
            extra[key] = value
        else:
            extra.pop(key, None)
    return extra


# --- the editor --------------------------------------------------------------------------------
def render_editor(target: int | Literal["new"]) -> None:
    ch = s.get_character(target) if target != "new" else None
    if target != "new" and ch is None:
        ss.char_edit = None
        return
    k = f"cf_{target}_"
    with st.container(border=True):
        st.subheader(T("edit_character", name=md_inline(ch.name)) if ch else T("new_character"))
        # the picture is outside the form so that its preview shows as soon as it is chosen
        with st.container(horizontal=True, vertical_alignment="center"):
            upload = st.file_uploader(T("avatar_upload"), type=IMAGE_TYPES, key=k + "avatar")
            if upload is not None:
                preview = _preview(upload.getvalue())
                if isinstance(preview, bytes):
                    st.image(preview, width=96, caption=T("avatar_preview"))
                else:
                    st.error(f"{T('err_prefix')} {md_inline(preview)}", icon=":material/error:")
            elif ch is not None:
                avatar_image(ch, width=96)
        greetings = list(ch.greetings) if ch else []
        with st.form(k + "form", clear_on_submit=False):
            name = st.text_input(
                T("f_name"), value=ch.name if ch else "", key=k + "name", max_chars=100
            )
            description = st.text_area(
                T("f_description"),
                value=ch.description if ch else "",
                key=k + "description",
                height=120,
            )
            personality = st.text_area(
                T("f_personality"),
                value=ch.personality if ch else "",
                key=k + "personality",
                height=68,
            )
            scenario = st.text_area(
                T("f_scenario"), value=ch.scenario if ch else "", key=k + "scenario", height=68
            )
            greeting = st.text_area(
                T("f_greeting"),
                value=greetings[0] if greetings else "",
                key=k + "greeting",
                height=100,
            )
            example = st.text_area(
                T("f_example_dialogue"),
                value=ch.example_dialogue if ch else "",
                key=k + "example",
                height=100,
                help=T("f_example_help"),
            )
            with st.expander(T("more_fields")):
                alternates = st.text_area(
                    T("f_alt_greetings"),
                    value="\n---\n".join(greetings[1:]),
                    key=k + "alts",
                    help=T("f_alt_help"),
                )
                user_name = st.text_input(
                    T("f_user_name"),
                    value=ch.user_name if ch else "",
                    key=k + "user_name",
                    help=T("f_user_name_help"),
                )
                system = st.text_area(
                    T("f_system_prompt"),
                    value=card_fields.system_prompt(ch) if ch else "",
                    key=k + "system",
                    height=68,
                    help=T("f_system_help"),
                )
                post = st.text_area(
                    T("f_post_history"),
                    value=card_fields.post_history(ch) if ch else "",
                    key=k + "post",
                    height=68,
                    help=T("f_post_help"),
                )
                stops = st.text_area(
                    T("f_stop_strings"),
                    value="\n".join(
                        x.replace("\n", "\\n") for x in (ch.stop_strings if ch else [])
                    ),
                    key=k + "stops",
                    help=T("f_stop_help"),
                )
                tags = st.text_input(
                    T("f_tags"),
                    value=", ".join(ch.tags) if ch else "",
                    key=k + "tags",
                    help=T("f_tags_help"),
                )
                presets = ["", *PRESETS]
                current = ch.sampling_preset if ch and ch.sampling_preset in presets else ""
                preset = st.selectbox(
                    T("f_preset"),
                    presets,
                    index=presets.index(current),
                    key=k + "preset",
                    format_func=lambda n: T(f"preset_{n}") if n else T("preset_none"),
                )
                creator = st.text_input(
                    T("f_creator"), value=ch.creator if ch else "", key=k + "creator"
                )
                creator_notes = st.text_area(
                    T("f_creator_notes"),
                    value=ch.creator_notes if ch else "",
                    key=k + "creator_notes",
                    height=68,
                )
            state_upload, remove_state = _state_file_fields(ch, k)
            remove_avatar = False
            if ch is not None and ch.avatar:
                remove_avatar = st.checkbox(T("remove_avatar"), key=k + "remove_avatar")
            with st.container(horizontal=True):
                saved = st.form_submit_button(T("save"), type="primary", icon=":material/save:")
                cancelled = st.form_submit_button(T("cancel"), icon=":material/close:")
        if cancelled:
            ss.char_edit = None
            st.rerun()
        if not saved:
            return
        values: dict[str, Any] = {
            "name": name,
            "description": description,
            "personality": personality,
            "scenario": scenario,
            "greetings": split_greetings(greeting, alternates),
            "example_dialogue": example,
            "user_name": user_name,
            "stop_strings": stop_lines(stops),
            "tags": [x.strip() for x in (tags or "").split(",") if x.strip()],
            "sampling_preset": preset,
            "creator": creator,
            "creator_notes": creator_notes,
            "card_extra": _card_extra(ch, system_prompt=system, post_history_instructions=post),
        }
        try:  # the picture and the row together; a refused row leaves no new picture behind
            result = characters_service.save(
                ch.id if ch is not None else None,
                values,
                avatar=upload.getvalue() if upload is not None else None,
                remove_avatar=remove_avatar,
                state_file=(
                    (state_upload.getvalue(), state_upload.name)
                    if state_upload is not None
                    else None
                ),
                remove_state_file=remove_state,
            )
        except AppError as e:
            show_error(e)  # the form keeps what was typed
            return
        ss.char_edit = None
        ss.char_flash = T("saved_character", name=md_inline(result.name))
        st.rerun()


def _state_file_fields(ch: Any, k: str) -> tuple[Any, bool]:
    """The character's RWKV state file in the form: what it has, a new one, or none."""
    with st.expander(T("state_file"), icon=":material/memory:"):
        ref, problem = characters_service.state_file(ch) if ch is not None else (None, "")
        if ref is not None:
            shape = shape_text(ref.layers, ref.heads, ref.head_size)
            st.caption(
                T("state_file_current", name=md_inline(ref.name), shape=shape, sha=ref.sha256[:12])
            )
            engine = rt().engine()  # the loaded model, if any: does the file fit it?
            if engine is not None and not problem:
                problem = engine.state_file_fit(ref.name, (ref.layers, ref.heads, ref.head_size))
        elif not problem:
            st.caption(T("state_file_none"))
        if problem:
            st.warning(md_inline(problem), icon=":material/warning:")
        mb = MAX_STATE_FILE_BYTES // 2**20
        state_upload = st.file_uploader(
            T("state_file_upload", mb=mb),
            type=["pth"],
            key=k + "state_file",
            help=T("state_file_help"),
            max_upload_size=mb,
        )
        remove = False
        if ref is not None or problem:
            remove = st.checkbox(T("remove_state_file"), key=k + "remove_state_file")
    return state_upload, remove


# --- top: search, new, import -----------------------------------------------------------------
with st.container(horizontal=True, vertical_alignment="bottom"):
    search = st.text_input(
        T("search"),
        key="char_search",
        placeholder=T("search_placeholder"),
        icon=":material/search:",
    )
    st.button(
        T("new_character"),
        key="new_character",
        type="primary",
        icon=":material/person_add:",
        on_click=_edit,
        args=("new",),
    )

with st.expander(T("import_cards"), icon=":material/upload_file:"):
    gen = ss.get("card_upload_gen", 0)
    files = st.file_uploader(
        T("import_cards_help"),
        type=["png", "json"],
        accept_multiple_files=True,
        key=f"card_upload_{gen}",
    )
    if files and st.button(T("import"), key="import_cards_btn", icon=":material/download_done:"):
        ok: list[str] = []
        failed: list[str] = []
        notes: list[str] = []
        for f in files:
            try:
                ch = characters_service.import_card(f.getvalue(), f.name)
            except AppError as e:
                failed.append(f"{T('err_import', file=md_inline(f.name))} {md_inline(str(e))}")
            else:
                ok.append(md_inline(ch.name))
                _ref, problem = characters_service.state_file(ch)
                if problem:  # imported all the same: the card names a file it cannot bring
                    notes.append(problem)
        if ok:
            ss.char_flash = T("imported", names=", ".join(ok))
        ss.char_import_errors = failed
        ss.char_notes = notes
        ss.card_upload_gen = gen + 1  # a fresh, empty uploader
        st.rerun()

# lorebooks (World Info): the books, and the character's own and attached ones (pages/lore_ui.py)
with st.expander(T("lorebooks"), icon=":material/menu_book:"):
    lore_ui.lorebooks_panel(s)

if ss.get("char_edit") is not None:
    render_editor(ss.char_edit)
    if isinstance(ss.get("char_edit"), int) and (lore_ch := s.get_character(ss.char_edit)):
        with st.container(border=True, key="char_lore"):
            lore_ui.character_lore(s, lore_ch)

# --- the list ------------------------------------------------------------------------------------
try:
    characters = s.list_characters(search or "")
except AppError as e:
    show_error(e)
    characters = []
if not characters:
    st.info(T("no_match") if search else T("no_characters"))


def _card_bytes(char_id: int, fmt: str) -> Callable[[], bytes]:
    from core.roleplay.cards import export_card

    return lambda: export_card(s, char_id, fmt)


for ch in characters:
    with st.container(border=True, key=f"char_row_{ch.id}"):
        with st.container(horizontal=True, vertical_alignment="center"):
            avatar_image(ch, width=64)
            with st.container():
                st.markdown(f"**{md_inline(ch.name)}**")
                snippet = substitute(ch.description or "", ch.name, ch.user_name or "{{user}}")
                snippet = snippet.strip().replace("\n", " ")
                if snippet:
                    st.caption(md_inline(snippet[:160] + ("…" if len(snippet) > 160 else "")))
        with st.container(horizontal=True, gap="small"):
            if st.button(
                T("start_chat"), key=f"chat_{ch.id}", type="primary", icon=":material/chat:"
            ):
                try:
                    conv = new_conversation(ch.id)
                except AppError as e:
                    show_error(e)
                else:
                    open_chat(conv.id)
            st.button(
                T("edit"),
                key=f"edit_{ch.id}",
                icon=":material/edit:",
                on_click=_edit,
                args=(ch.id,),
            )
            st.button(
                T("duplicate"),
                key=f"dup_{ch.id}",
                icon=":material/content_copy:",
                on_click=_duplicate,
                args=(ch.id,),
            )
            with st.popover(T("export"), icon=":material/download:"):
                from core.roleplay.cards import export_filename

                for fmt in ("png", "json"):
                    st.download_button(
                        T(f"export_{fmt}"),
                        data=_card_bytes(ch.id, fmt),
                        file_name=export_filename(ch.name, fmt),
                        mime="image/png" if fmt == "png" else "application/json",
                        key=f"export_{fmt}_{ch.id}",
                        on_click="ignore",
                    )
            with st.popover(T("delete"), icon=":material/delete:"):
                st.radio(
                    T("delete_chats_question"),
                    ["keep", "delete"],
                    format_func=lambda o: T(f"chats_{o}"),
                    key=f"del_chats_{ch.id}",
                )
                st.button(
                    T("delete_character_confirm", name=md_inline(ch.name)),
                    key=f"del_{ch.id}",
                    type="primary",
                    on_click=_delete,
                    args=(ch.id, ch.name),
                )
