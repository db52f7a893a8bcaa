"""Not a page: the lorebook (World Info) parts of the Characters and Chat pages. The editor of
the books (entries as a table with search, an add-an-entry form, book settings, import and
export of World Info JSON), the books attached to a character and its card's own book, the books
of a chat, and the entries that fired for a reply. The rules live in core/roleplay/lore/, and
every change to a book goes through its LoreService; the store is only read here."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import streamlit as st

from core.errors import AppError
from core.roleplay.lore import (
    DEFAULT_BUDGET,
    LOGIC_NAMES,
    ROW_COLUMNS,
    LoreService,
    add_entry,
    apply_rows,
    entry_row,
    filter_entries,
    from_character_book,
    normalize_settings,
    world_info_bytes,
    world_info_filename,
)
from core.store import Character, ChatMessage, Conversation, Store
from pages.ui_common import T, md_inline, show_error

ss = st.session_state


def _flash(text: str, area: str = "books") -> None:
    ss[f"lore_flash_{area}"] = text


def _notices(area: str) -> None:
    """What the last action in this area did (a success, or why it was refused)."""
    if ss.get(f"lore_flash_{area}"):
        st.success(ss.pop(f"lore_flash_{area}"), icon=":material/check_circle:")
    if ss.get(f"lore_error_{area}"):
        msg = md_inline(ss.pop(f"lore_error_{area}"))
        st.error(f"{T('err_prefix')} {msg}", icon=":material/error:")


def _gen(key: str) -> int:
    return ss.get(f"lore_gen_{key}", 0)


def _bump(key: str) -> None:
    ss[f"lore_gen_{key}"] = _gen(key) + 1


def _columns() -> dict[str, Any]:
    cc = st.column_config
    return {
        "uid": cc.NumberColumn("uid", disabled=True, width="small"),
        "enabled": cc.CheckboxColumn(T("lore_col_enabled"), default=True, width="small"),
        "constant": cc.CheckboxColumn(T("lore_col_constant"), default=False, width="small"),
        "key": cc.TextColumn(T("lore_col_key")),
        "secondary": cc.TextColumn(T("lore_col_secondary")),
        "logic": cc.SelectboxColumn(
            T("lore_col_logic"), options=list(LOGIC_NAMES.values()), default="AND ANY"
        ),
        "content": cc.TextColumn(T("lore_col_content"), width="large"),
        "order": cc.NumberColumn(T("lore_col_order"), default=100, step=1),
        "probability": cc.NumberColumn(
            T("lore_col_probability"), default=100, min_value=0, max_value=100, step=1
        ),
        "comment": cc.TextColumn(T("lore_col_comment")),
    }


def entries_editor(
    key: str, entries: list[dict[str, Any]], save: Callable[[list[dict[str, Any]]], None]
) -> None:
    """Entries as a table with a search box, and a form that adds one entry. `save` gets the
    whole list of entries (the ones the search hid included)."""
    query = st.text_input(
        T("lore_search"),
        key=f"lore_q_{key}",
        placeholder=T("lore_search_ph"),
        icon=":material/search:",
    )
    shown = filter_entries(entries, query)
    st.caption(T("lore_shown", n=len(shown), total=len(entries)))
    # pandas is imported here, not at the top: the Chat page imports this module, and pandas
    # took 0.5 to 0.9 s of a first chat's opening (bench/first_reply.py)
    import pandas as pd

    frame = pd.DataFrame([entry_row(e) for e in shown], columns=list(ROW_COLUMNS))
    # a new key whenever what the table shows changes (search, save): edits apply to its rows
    digest = hashlib.sha1(f"{query}\0{_gen(key)}".encode()).hexdigest()[:10]
    edited = st.data_editor(
        frame,
        key=f"lore_table_{key}_{digest}",
        num_rows="dynamic",
        hide_index=True,
        column_config=_columns(),
        width="stretch",
    )
    st.caption(T("lore_table_help"))
    if st.button(T("lore_save"), key=f"lore_save_{key}", type="primary", icon=":material/save:"):
        rows = edited.to_dict("records") if isinstance(edited, pd.DataFrame) else list(edited)
        try:
            save(apply_rows(entries, [int(e["uid"]) for e in shown], rows))
        except AppError as e:
            show_error(e)
        else:
            _bump(key)
            st.rerun()
    with st.expander(T("lore_add_entry"), icon=":material/add:"):
        with st.form(f"lore_add_{key}", clear_on_submit=True, border=False):
            keys = st.text_input(T("lore_add_keys"), key=f"lore_add_keys_{key}")
            content = st.text_area(T("lore_add_content"), key=f"lore_add_content_{key}")
            comment = st.text_input(T("lore_add_comment"), key=f"lore_add_comment_{key}")
            constant = st.checkbox(T("lore_add_constant"), key=f"lore_add_const_{key}")
            if st.form_submit_button(T("lore_add_entry"), icon=":material/add:"):
                try:
                    save(add_entry(entries, keys, content, comment, constant))
                except AppError as e:
                    show_error(e)
                else:
                    _bump(key)
                    st.rerun()


def _settings_fields(key: str, settings: dict[str, Any]) -> dict[str, Any]:
    s = normalize_settings(settings)
    with st.container(horizontal=True):
        depth = st.number_input(
            T("lore_scan_depth"), 0, 1000, int(s["scan_depth"]), key=f"lore_depth_{key}"
        )
        budget = st.number_input(
            T("lore_budget", n=DEFAULT_BUDGET),
            0,
            1_000_000,
            int(s["token_budget"] or 0),
            key=f"lore_budget_{key}",
        )
    recursive = st.checkbox(T("lore_recursive"), s["recursive"], key=f"lore_rec_{key}")
    case = st.checkbox(T("lore_case"), s["case_sensitive"], key=f"lore_case_{key}")
    whole = st.checkbox(T("lore_whole"), s["match_whole_words"], key=f"lore_whole_{key}")
    return {
        **settings,
        "scan_depth": int(depth),
        "token_budget": int(budget) or None,
        "recursive": recursive,
        "case_sensitive": case,
        "match_whole_words": whole,
    }


# --- the books (Characters page) ------------------------------------------------------------


def _import_book(s: Store) -> None:
    up = ss.get(f"lore_upload_{ss.get('lore_upload_gen', 0)}")
    if up is None:
        return
    try:
        book = LoreService(s).import_file(up.getvalue(), up.name)
    except AppError as e:
        ss.lore_error_books = f"{T('err_import', file=up.name)} {e}"
    else:
        ss.lore_book_id = book.id
        _flash(T("lore_imported", name=md_inline(book.name), n=len(book.entries)))
    ss.lore_upload_gen = ss.get("lore_upload_gen", 0) + 1


def _create_book(s: Store) -> None:
    try:
        book = LoreService(s).create(ss.get("lore_new_name", ""))
    except AppError as e:
        ss.lore_error_books = str(e)
    else:
        ss.lore_book_id = book.id
        ss.lore_new_name = ""
        _flash(T("lore_created", name=md_inline(book.name)))


def _delete_book(s: Store, book_id: int, name: str) -> None:
    try:
        LoreService(s).delete(book_id)
    except AppError as e:
        ss.lore_error_books = str(e)
    else:
        ss.lore_book_id = None
        _flash(T("lore_deleted", name=md_inline(name)))


def lorebooks_panel(s: Store) -> None:
    """The lorebooks: pick, create, import; edit the one picked."""
    lore = LoreService(s)
    _notices("books")
    books = s.list_lorebooks()
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.text_input(T("lore_new_name"), key="lore_new_name", max_chars=100)
        st.button(T("lore_create"), key="lore_create", on_click=_create_book, args=(s,))
    gen = ss.get("lore_upload_gen", 0)
    st.file_uploader(T("lore_import"), type=["json"], key=f"lore_upload_{gen}")
    if ss.get(f"lore_upload_{gen}") is not None:
        st.button(T("lore_import_btn"), key="lore_import_btn", on_click=_import_book, args=(s,))
    if not books:
        st.info(T("lore_none"))
        return
    ids = [b.id for b in books]
    if ss.get("lore_book_id") not in ids:
        ss.lore_book_id = ids[0]
    names = {b.id: b.name for b in books}
    book_id = st.selectbox(
        T("lore_book"), ids, format_func=lambda i: names.get(i, "?"), key="lore_book_id"
    )
    book = s.get_lorebook(book_id)
    if book is None:
        return
    k = f"book{book.id}_{_gen(f'book{book.id}')}"
    with st.form(f"lore_meta_{k}", border=False):
        name = st.text_input(T("lore_name"), book.name, key=f"lore_name_{k}", max_chars=100)
        description = st.text_area(
            T("lore_description"), book.description, key=f"lore_desc_{k}", height=68
        )
        is_global = st.checkbox(T("lore_global"), book.is_global, key=f"lore_global_{k}")
        settings = _settings_fields(k, book.settings or {})
        if st.form_submit_button(T("save"), icon=":material/save:"):
            try:
                lore.update(
                    book.id,
                    name=name,
                    description=description,
                    is_global=is_global,
                    settings=settings,
                )
            except AppError as e:
                show_error(e)
            else:
                _flash(T("lore_saved", name=md_inline(name)))
                st.rerun()

    def save(entries: list[dict[str, Any]]) -> None:
        lore.save_entries(book.id, entries)
        _flash(T("lore_saved", name=md_inline(book.name)))

    entries_editor(f"book{book.id}", list(book.entries or []), save)
    with st.container(horizontal=True):
        st.download_button(
            T("lore_export"),
            data=world_info_bytes(book),
            file_name=world_info_filename(book.name),
            mime="application/json",
            key=f"lore_export_{book.id}",
            icon=":material/download:",
            on_click="ignore",
        )
        with st.popover(T("lore_delete"), icon=":material/delete:"):
            st.button(
                T("lore_delete_confirm", name=md_inline(book.name)),
                key=f"lore_del_{book.id}",
                type="primary",
                on_click=_delete_book,
                args=(s, book.id, book.name),
            )


# --- a character's books (Characters page, in the character's editor) ------------------------


def character_lore(s: Store, ch: Character) -> None:
    """The books attached to a character, and its card's own book as a table."""
    lore = LoreService(s)
    _notices(f"char{ch.id}")
    _attach_picker(
        s.list_lorebooks(),
        ch.lorebook_ids,
        lambda ids: lore.attach_to_character(ch.id, ids),
        "char",
        ch.id,
        T("lore_attached"),
    )
    own = ch.character_book if isinstance(ch.character_book, dict) else None
    entries = from_character_book(own)[0]
    with st.expander(T("lore_own_book", n=len(entries)), icon=":material/menu_book:"):

        def save(new: list[dict[str, Any]]) -> None:
            lore.save_character_book(ch.id, new)  # the card book's settings kept
            _flash(T("lore_saved", name=md_inline(ch.name)), f"char{ch.id}")

        entries_editor(f"char{ch.id}", entries, save)
        if entries:
            st.button(
                T("lore_copy_own"),
                key=f"lore_copy_{ch.id}",
                icon=":material/content_copy:",
                on_click=_copy_own_book,
                args=(s, ch),
            )


def _copy_own_book(s: Store, ch: Character) -> None:
    """The card's book as a lorebook of its own, to attach to other characters and chats."""
    try:
        book = LoreService(s).copy_character_book(ch.id)
    except AppError as e:
        ss[f"lore_error_char{ch.id}"] = str(e)
    else:
        ss.lore_book_id = book.id
        _flash(T("lore_copied", name=md_inline(book.name)), f"char{ch.id}")


# --- the chat page ----------------------------------------------------------------------------


def chat_lorebooks(s: Store, conv: Conversation) -> None:
    """Attach lorebooks to the open chat (in the chat's sidebar menu)."""
    _notices(f"chat{conv.id}")
    books = s.list_lorebooks()
    if not books:
        return
    _attach_picker(
        books,
        conv.lorebook_ids,
        lambda ids: LoreService(s).attach_to_chat(conv.id, ids),
        "chat",
        conv.id,
        T("lore_chat_books"),
    )


def _attach_picker(
    books: list[Any],
    attached: list[int],
    save: Callable[[list[int]], Any],
    kind: str,
    owner_id: int,
    label: str,
) -> None:
    """A multiselect of the lorebooks attached to a character or a chat (`kind` "char" or
    "chat"), saved on every change; a refusal is shown by _notices."""
    names = {b.id: b.name for b in books}
    key = f"lore_{kind}_books_{owner_id}"
    if key not in ss:
        ss[key] = [i for i in attached if i in names]

    def attach() -> None:
        try:
            save(list(ss.get(key) or []))
        except AppError as e:
            ss[f"lore_error_{kind}{owner_id}"] = str(e)

    st.multiselect(
        label,
        list(names),
        format_func=lambda i: names.get(i, "?"),
        key=key,
        on_change=attach,
        help=T("lore_attach_help"),
    )


def fired_entries(msg: ChatMessage) -> None:
    """Under a reply: the lorebook entries that fired for it (from its meta)."""
    meta = msg.meta or {}
    fired = [f for f in meta.get("lore") or [] if isinstance(f, dict)]
    errors = [e for e in meta.get("lore_errors") or [] if isinstance(e, str)]
    if not fired and not errors:
        return
    with st.expander(T("lore_fired", n=len(fired)), icon=":material/menu_book:"):
        for f in fired:
            title = md_inline(str(f.get("title", "")))
            st.markdown(
                "- " + T("lore_fired_entry", title=title, book=md_inline(str(f.get("book", ""))))
            )
        if errors:
            st.caption(T("lore_errors", text=md_inline("; ".join(errors))))
