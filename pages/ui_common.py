"""What every page shares: the store, the model, the language, errors, avatars, the password.

Not a page: Home.py registers pages with st.navigation, so files in pages/ become pages only
when listed there.

The store and the model are st.cache_resource objects shared by every browser session. A
session keeps only ids in st.session_state, never ORM objects or engine handles.
"""

from __future__ import annotations

import math
import re
import runpy
import secrets
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from core import runtime
from core.api.hosts import local_request
from core.auth import LoginLimiter, PasswordPolicy, Tries, is_loopback
from core.cli_args import cli_args
from core.config import REPO_ROOT
from core.errors import AppError, ModelUnavailable
from core.i18n import LANGS, t
from core.roleplay.avatars import avatar_path
from core.runtime import ModelChoice, Runtime

if TYPE_CHECKING:  # only named in hints: importing them (SQLAlchemy, numpy) is left to the pages
    from core.engine import Engine
    from core.engine.sampler import SamplingParams
    from core.store import Character, Conversation, Store

PAGE_HOME = "pages/home.py"
PAGE_CHAT = "pages/chat.py"
PAGE_CHARACTERS = "pages/characters.py"
PAGE_SETTINGS = "pages/settings.py"

USER_AVATAR = "user"  # Streamlit's own user icon (served locally)
CHAR_AVATAR = "assistant"  # for characters without a picture
NARRATOR_AVATAR = ":material/auto_stories:"


# --- store and language ----------------------------------------------------------------------


def rt() -> Runtime:
    """The process's store and model for this data directory (core/runtime.py)."""
    return runtime.current()


_PROBLEM_PAGE = threading.local()  # drawing the page about a database that cannot be opened


def store() -> Store:
    """The Store of this data directory (shared by all sessions; every call is thread-safe).
    When the database cannot be opened, the page says which file, what is wrong and what to
    do, and stops."""
    try:
        opened = rt().store
    except AppError as e:
        if getattr(_PROBLEM_PAGE, "on", False):
            raise  # from the problem page's own words (the language setting): they fall back
        _PROBLEM_PAGE.on = True
        try:
            database_problem(e)
        finally:
            _PROBLEM_PAGE.on = False
        st.stop()
    if "db_flash" in st.session_state:  # a restore just reopened it
        st.success(st.session_state.pop("db_flash"), icon=":material/check_circle:")
    return opened


def database_url() -> str:
    return rt().db_url


# --- a database that cannot be opened; backups -------------------------------------------------


def database_problem(err: AppError) -> None:
    """What every page shows when the database cannot be opened: the file, what is wrong, what
    to do, and the backups to restore (from this machine, or after the password)."""
    from core.store.backup import backup_dir, db_file

    st.title(T("db_problem_title"))
    try:
        path = str(db_file(database_url()))
    except AppError:
        path = ""  # another kind of database ($RP_DB_URL): the error names it
    if path:
        st.caption(T("db_problem_file"))
        st.code(path, language=None)
    show_error(err, "db_problem_what")
    if not path:
        return
    st.markdown(T("db_problem_todo", folder=md_inline(str(backup_dir()))))
    if st.session_state.get("authenticated") or listening_locally():
        restore_controls("db_problem")
    else:
        st.info(T("db_problem_no_restore"))


def backup_controls(key: str) -> None:
    """ "Back up now", then the restore controls. A backup made is said where it happens (a
    toast: the page's message at its top is out of sight down here) and is the one the list
    selects to restore."""
    from core.store.backup import backup_now

    if st.button(T("backup_now"), key="backup_now", icon=":material/backup:"):
        try:
            made = backup_now(database_url())
        except AppError as e:
            show_error(e)
        else:
            st.toast(T("backup_made", name=md_inline(made.name)), icon=":material/check_circle:")
            st.session_state[f"{key}_backup"] = made.name  # before the list is drawn
    restore_controls(key)


def postgres_backups() -> None:
    """Settings → Backups when the database is PostgreSQL: the app makes no daily copy of it and
    restores none (several app servers may share it); what its own tools do instead, as commands
    for this database, and "Back up now" with pg_dump where it is installed here."""
    from core.store.backup import backup_dir, backup_now, pg_dump_program, postgres_advice

    advice = postgres_advice(database_url())
    st.caption(T("backups_postgres", url=md_inline(advice["url"])))
    st.code("\n".join((advice["backup"], advice["restore"], advice["check"])), language="bash")
    if pg_dump_program() is None:
        st.caption(T("backups_no_pg_dump"))
        return
    if st.button(T("backup_now"), key="backup_now", icon=":material/backup:"):
        try:
            made = backup_now(database_url())
        except AppError as e:
            show_error(e)
        else:
            where = md_inline(str(backup_dir() / made.name))
            st.toast(T("backup_made", name=where), icon=":material/check_circle:")


def restore_controls(key: str) -> None:
    """Choose a backup and restore it, after a confirmation."""
    from core.store.backup import list_backups

    backups = {b.path.name: b for b in list_backups()}
    if not backups:
        st.caption(T("no_backups"))
        return

    def label(name: str) -> str:
        b = backups[name]
        # the file name too: two backups of one second and size must not look the same
        when, size = f"{b.made:%Y-%m-%d %H:%M:%S}", f"{b.size / 1e6:.1f}"
        text = T("backup_label", when=when, size=size, name=b.path.name)
        return text + (f" · {T('backup_before_restore')}" if b.note.startswith("before") else "")

    name = st.selectbox(T("backup_choose"), list(backups), key=f"{key}_backup", format_func=label)
    when = f"{backups[name].made:%Y-%m-%d %H:%M:%S}"
    with st.popover(T("restore"), icon=":material/settings_backup_restore:"):
        st.write(T("restore_confirm", when=when))
        if st.button(T("restore"), key=f"{key}_restore", type="primary"):
            try:
                kept = restore_database(backups[name].path)
            except AppError as e:
                show_error(e)
            else:
                st.session_state.db_flash = T("restored", when=when, kept=md_inline(kept.name))
                st.rerun()


def restore_database(backup: Path) -> Path:
    """Put `backup` in place of the database and open the shared store again on it; returns
    where the database it replaced was kept."""
    from core.store.backup import restore

    rt().close_store()  # no connection may outlive the file it points to
    return restore(database_url(), backup)


def lang() -> str:
    """This browser session's interface language (see keep_lang)."""
    chosen = st.session_state.get("ui_lang")
    return chosen if chosen in LANGS else _default_lang()


def keep_lang() -> None:
    """Run by the router on every run: a session keeps the language it started with (the
    saved setting, else --lang, else the browser's, else en) until it picks another in
    Settings, so that one session's choice never changes the language of another."""
    if st.session_state.get("ui_lang") not in LANGS:
        st.session_state.ui_lang = _default_lang()


def set_lang(code: str) -> None:
    """This session's language; the caller saves it as the default of new sessions (a widget
    callback). The browser keeps showing a select box's chosen option by the label it had: a
    box whose labels are translated would go on showing the old language's label until the
    page is reloaded. So the values that are options (text: a box's option, a radio's) are set
    again: the next run sends each one anew, with its label in the new language. (Buttons,
    uploaders and the like hold no text and cannot be set.)"""
    ss = st.session_state
    if ss.get("ui_lang") != code:
        for key in list(ss.keys()):
            value = ss[key]
            if isinstance(value, str) and key != "chat_input":
                ss[key] = value
    ss.ui_lang = code


def _default_lang() -> str:
    value = rt().settings.language()
    if value is not None:
        return value
    cli, _ = cli_args()
    if cli.lang in LANGS:
        return cli.lang
    try:
        locale = (st.context.locale or "").lower()
    except Exception:
        locale = ""
    return "zh" if locale.startswith("zh") else "en"


def T(key: str, **fmt: Any) -> str:  # noqa: N802 - the one-letter name of a translation call
    return t(key, lang(), **fmt)


def show_error(err: BaseException, prefix: str = "err_prefix") -> None:
    """An AppError (or any refusal) as st.error, with a translated prefix; never a traceback."""
    message = str(err) or err.__class__.__name__
    st.error(f"{T(prefix)} {md_inline(message)}", icon=":material/error:")


# --- text shown as text --------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>$~:])")


def md_inline(text: str) -> str:
    """Text (a name, a title) for use inside markdown: every markdown character escaped."""
    return _MD_SPECIAL.sub(r"\\\1", str(text).replace("\n", " "))


def md_text(text: str) -> str:
    """A message's text for st.markdown. Streamlit already shows raw HTML as text; here images
    (which would make the browser fetch a URL), math ($...$) and backslashes are neutralised,
    and single newlines are kept as line breaks. Emphasis like *smiles* still renders."""
    text = str(text).replace("\\", "\\\\").replace("$", "\\$").replace("![", "!\\[")
    return text.replace("\r\n", "\n").replace("\n", "  \n")


class StreamText:
    """md_text applied piece by piece for st.write_stream: a trailing "!" waits for the next
    piece, in case it starts an image link. Pieces that come less than `interval` seconds
    apart are sent together: each send redraws the whole message in the browser, and a
    redraw per token takes CPU from the model on a small machine."""

    INTERVAL = 0.05  # seconds

    def __init__(self, pieces: Iterable[str], interval: float | None = None) -> None:
        self._pieces = pieces
        self._interval = self.INTERVAL if interval is None else interval

    def __iter__(self) -> Iterator[str]:
        held = ""
        last = 0.0
        for piece in self._pieces:
            held += piece
            now = time.monotonic()
            if now - last < self._interval:
                continue
            text, held = (held[:-1], "!") if held.endswith("!") else (held, "")
            if text:
                last = now
                yield md_text(text)
        if held:
            yield md_text(held)


# --- avatars ---------------------------------------------------------------------------------


def char_avatar(character: Character | None) -> str:
    """A chat_message / st.image avatar for a character: its picture file, else the bot icon."""
    path = avatar_path(character.avatar if character is not None else "")
    return str(path) if path is not None else CHAR_AVATAR


def role_avatar(role: str, character: Character | None) -> str:
    if role == "user":
        return USER_AVATAR
    if role == "narrator":
        return NARRATOR_AVATAR
    return char_avatar(character)


def avatar_image(character: Character | None, width: int = 64) -> None:
    """The character's picture, or a neutral icon when it has none."""
    path = avatar_path(character.avatar if character is not None else "")
    if path is not None:
        st.image(str(path), width=width)
    else:
        st.image(
            _placeholder((character.name if character is not None else "") or "?"), width=width
        )


@st.cache_data(show_spinner=False)
def app_icon() -> bytes:
    from core.roleplay.avatars import placeholder_png

    return placeholder_png("RWKV Role Play", size=64)


@st.cache_data(show_spinner=False, max_entries=500)
def _placeholder(name: str) -> bytes:
    from core.roleplay.avatars import placeholder_png

    return placeholder_png(name, size=128)


# --- password --------------------------------------------------------------------------------


def password_policy() -> PasswordPolicy:
    """The password rule for this server (core.auth.password_policy: $RP_PASSWORD wins over the
    saved password). Raises when the setting cannot be read: the gate then stays shut. A
    database that cannot be opened at all gets its own page (and the run stops)."""
    try:
        return rt().password_policy(st.get_option("server.address"))
    except AppError:
        store()  # the database's page, when it is the database that cannot be opened
        raise


def listening_locally() -> bool:
    """The server can be reached from this machine only (the project's config: 127.0.0.1)."""
    return is_loopback(st.get_option("server.address"))


def authenticated() -> bool:
    """This browser session gave the password, or none is needed: none is set and the server
    listens on this machine only."""
    if st.session_state.get("authenticated"):
        return True
    try:
        return password_policy().open
    except Exception:  # the setting cannot be read: locked (password_gate says why)
        return False


def password_gate() -> None:
    """Before anything else, once per browser session: the password. Nothing else is shown
    when the password setting cannot be read, nor, while the server listens beyond this
    machine, until a password is set."""
    if st.session_state.get("authenticated"):
        return
    try:
        policy = password_policy()
    except Exception as e:  # whatever broke the database, an unreadable gate stays shut
        st.title(T("app_title"))
        show_error(e, "err_password_unreadable")
        st.stop()
    if policy.open:
        return
    st.title(T("app_title"))
    if policy.password:
        with st.form("login"):
            entered = st.text_input(T("password"), type="password", key="login_password")
            ok = st.form_submit_button(T("login"), type="primary")
        if ok and _limited_check(entered or "", policy.password, "wrong_password"):
            st.session_state.authenticated = True
            st.rerun()
    else:
        _first_password_form()
    st.stop()


def local_session() -> bool:
    """This browser session is on this machine, by a loopback name (core.api.hosts.local_request):
    its password tries skip the limit of all sessions, which a guesser could use up. A page of
    another site reaching the server through the browser (DNS rebinding) has its own name in
    Host, so it is not one. st.context.ip_address is None for a loopback client (and for a
    session without a browser, which has no Host either)."""
    host = st.context.headers.get("host")
    if not host:
        return False
    return local_request(host, st.context.ip_address or "127.0.0.1")


@st.cache_resource(show_spinner=False)
def login_limiter() -> LoginLimiter:
    """One for the process: its limit of tries a minute counts every session."""
    return LoginLimiter()


def _limited_check(entered: str, secret: str, wrong: str) -> bool:
    """One try through the limiter; when it fails, says why and how long to wait."""
    tries = st.session_state.setdefault("login_tries", Tries())
    verdict = login_limiter().attempt(tries, entered, secret, local=local_session())
    wait = math.ceil(verdict.wait)
    if verdict.ok:
        return True
    if not verdict.checked:
        st.warning(T("too_many_tries", s=wait), icon=":material/hourglass_top:")
    else:
        st.error(T(wrong) + (f" {T('next_try_in', s=wait)}" if wait else ""))
    return False


@st.cache_resource(show_spinner=False)
def setup_code() -> str:
    """The code the first-password form asks for, printed where the server runs: from another
    machine, only someone who can see that terminal may set the first password."""
    code = secrets.token_urlsafe(9)
    print(f"RWKV Role Play: setup code for the first password: {code}", file=sys.stderr)
    return code


def _first_password_form() -> None:
    address = st.get_option("server.address") or T("every_address")
    st.warning(T("open_network", address=md_inline(address)), icon=":material/lock:")
    secret = setup_code()  # printed now, so it is in the terminal when the page says so
    with st.form("first_password"):
        code = st.text_input(T("setup_code"), type="password", key="setup_code")
        pw1 = st.text_input(T("new_password"), type="password", key="first_password_1")
        pw2 = st.text_input(T("repeat_password"), type="password", key="first_password_2")
        ok = st.form_submit_button(T("set_password"), type="primary", icon=":material/lock:")
    if not ok:
        return
    if not pw1:
        st.error(T("err_empty_password"))
    elif pw1 != pw2:
        st.error(T("err_password_mismatch"))
    elif _limited_check(code or "", secret, "wrong_setup_code"):
        try:
            rt().settings.set_password(pw1)
        except AppError as e:
            show_error(e)
        else:
            st.session_state.authenticated = True
            st.rerun()


# --- routing -----------------------------------------------------------------------------------
# Streamlit (1.67) runs the files of a folder named pages/ the old way ("MPA v1": the requested
# file directly, Home.py not run) until the first st.navigation call of the process, and
# AppTest does so at the start of every run. A page must never run that way: it would skip the
# password. Home.py marks the runs it routes; a page run without the mark runs Home.py in its
# place (which calls st.navigation, asks for the password, then runs the requested page) and
# stops.
_ROUTE = threading.local()
HOME_SCRIPT = REPO_ROOT / "Home.py"


@contextmanager
def routed() -> Iterator[None]:
    _ROUTE.on = True
    try:
        yield
    finally:
        _ROUTE.on = False


def page_guard() -> None:
    """First line of every page: run only through Home.py's router."""
    if getattr(_ROUTE, "on", False):
        return
    runpy.run_path(str(HOME_SCRIPT), run_name="__main__")
    st.stop()


# --- the model -------------------------------------------------------------------------------
# The model lives in core/runtime.py (shared with the API); these wrap its calls in messages.


def current_choice() -> ModelChoice:
    return rt().choice()


def choice_label(choice: ModelChoice) -> str:
    return choice.label(T("embedded_model"))


def loaded_engine() -> Engine | None:
    """The engine if the current choice is loaded, else None. Never loads."""
    return rt().engine()


def load_model(choice: ModelChoice | None = None, ui: str = "spinner") -> Engine | None:
    """Load `choice` (default: the current one) showing progress; None and an error shown when
    it cannot. ui: "status" (st.status), "spinner" or "none"."""
    runtime_ = rt()
    choice = choice or runtime_.choice()
    name = md_inline(choice_label(choice))  # a file name: shown as text, never markdown
    label = T("loading_model", name=name)
    try:
        if ui == "status":
            with st.status(label, expanded=False) as status:
                engine = runtime_.load(choice)
                status.update(
                    label=T("model_loaded_in", name=name, s=f"{engine.info.load_s:.1f}"),
                    state="complete",
                )
        elif ui == "spinner":
            with st.spinner(label):
                engine = runtime_.load(choice)
        else:
            engine = runtime_.load(choice)
    except AppError as e:
        show_error(e, "err_load")
        return None
    return engine


def start_model() -> None:
    """Start loading the current choice in the background unless it is loaded, loading,
    unloaded on purpose or failed (the server already started it; this covers the rest)."""
    _NOTED.loading = False  # a page run starts (the router calls this first)
    try:
        rt().start_loading()
    except AppError:
        pass  # the store cannot be read: the page says so


def model_loading() -> bool:
    return rt().loading


def model_notice(key: str, buttons: bool = True) -> Engine | None:
    """The loaded engine, or None with what the model is doing drawn in the page: loading (the
    model's name; the page reruns when it is ready), the reason it failed, or that it is not
    loaded, with a Load/retry button (`<key>_load`) unless `buttons` is False."""
    runtime_ = rt()
    start_model()
    engine = runtime_.engine()
    if engine is not None or key == "none":
        return engine
    name = md_inline(choice_label(runtime_.choice()))
    if runtime_.loading:
        st.info(T("model_loading_bg", name=name), icon=":material/hourglass_top:")
        _NOTED.loading = True  # the router runs the page again until the load ends
        return None
    failed = runtime_.failure()
    if failed:
        st.error(f"{T('err_load')} {md_inline(failed)}", icon=":material/error:")
        label = T("retry_load", name=name)
    else:
        st.info(T("no_model_loaded"), icon=":material/memory:")
        label = T("load_named", name=name)
    if buttons:
        st.button(
            label, key=f"{key}_load", type="primary", icon=":material/play_arrow:", on_click=retry
        )
    return None


# While the model loads, a page that said so is run again every LOADING_REFRESH_S (by the router,
# after the page: refresh_while_loading), until the load has ended. Not an st.fragment with
# run_every: its timer, left in the browser by a page the user had just left, blanked the next
# page now and then (Home's note, then a click on a character's Chat button). 0 turns it off
# (AppTest, whose run() would wait for the load; tests run the page again themselves).
LOADING_REFRESH_S = 1.0
_NOTED = threading.local()


def refresh_while_loading() -> None:
    """After the page: when it said that the model loads, wait until the load ends (at most
    LOADING_REFRESH_S) and run the page again. A click or an input meanwhile reruns it at once,
    with that input (Streamlit checks for one at every element sent)."""
    noted, _NOTED.loading = getattr(_NOTED, "loading", False), False
    if not noted or LOADING_REFRESH_S <= 0:
        return
    runtime_ = rt()
    slot = st.empty()
    deadline = time.monotonic() + LOADING_REFRESH_S
    while runtime_.loading and time.monotonic() < deadline:
        time.sleep(0.1)
        slot.empty()  # an element sent: a rerun asked for meanwhile happens here
    st.rerun()


def wait_for_model() -> Engine | None:
    """For a reply: the engine (Runtime.require_engine), waiting with a note while it loads;
    None, with the reason shown, when it is unloaded or failed."""
    runtime_ = rt()
    engine = runtime_.engine()
    if engine is not None:
        return engine
    note = st.empty()
    if runtime_.state() in ("loading", "idle"):
        name = md_inline(choice_label(runtime_.choice()))
        note.info(T("reply_waits_load", name=name), icon=":material/hourglass_top:")
    try:
        engine = runtime_.require_engine()
    except ModelUnavailable:
        engine = None
    note.empty()
    failed = runtime_.failure()
    if engine is None and failed:
        st.error(f"{T('err_load')} {md_inline(failed)}", icon=":material/error:")
    return engine


def retry() -> None:
    """A Load/retry button's callback: forget an unload or a failure of the current choice and
    load it in the background (the page says that it loads)."""
    try:
        rt().retry()
    except AppError:
        pass  # the store cannot be read: the page says so


def unload_model() -> None:
    rt().unload()


def choose_model(choice: ModelChoice) -> None:
    """Make `choice` the model of this process and save it as the setting."""
    rt().choose(choice)


def model_summary(engine: Engine) -> str:
    """One line about the loaded model (plain text): its file, architecture, size, and what
    runs it, in the page's language (each back end says its own: the rwkv package its strategy,
    llama.cpp the file's type; never the other one's settings)."""
    info = engine.info
    if info.backend == "remote":  # a model server (core/engine/remote.py)
        return " · ".join((str(info.extra.get("label", "")), T("runs_remote", url=info.strategy)))
    name = Path(info.path).name if info.path else T("embedded_model")
    parts = [name, info.arch]
    if info.n_layer:
        parts.append(T("n_layers", n=info.n_layer))
    if info.n_params:
        parts.append(T("n_params", n=_human(info.n_params)))
    parts.append(runs_on(info))
    return " · ".join(str(p) for p in parts if p)


def rwkv_options_apply(choice: ModelChoice) -> bool:
    """Whether the rwkv package's options (strategy, cuda_on, jit_on) apply to a model choice:
    they do only when the rwkv package runs it (a .gguf file and the embedded model run on
    llama.cpp), so Settings shows them only then."""
    from core.backends.loader import resolve_backend

    try:
        return resolve_backend(Path(choice.path) if choice.path else None, choice.backend) == "rwkv"
    except AppError:
        return True  # an unknown back end: show everything, the load says what is wrong


def runs_on(info: Any) -> str:
    """What computes the model: "llama.cpp, GGUF Q4_1, 1 thread" / "rwkv package (PyTorch),
    cpu fp32, 2 threads"."""
    threads = info.extra.get("threads")
    if info.backend == "llama":
        kind = str(info.extra.get("file_type") or "").upper()
        text = T("runs_llama", kind=kind or "?")
    else:
        text = T("runs_rwkv", strategy=info.strategy)
    return text + (T("runs_threads", n=threads) if threads else "")


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


# --- sampling ---------------------------------------------------------------------------------


def conversation_params(conv: Conversation | None) -> SamplingParams:
    return rt().chat.params(conv)


def new_conversation(character_id: int) -> Conversation:
    """A new chat with the character; with no name given for the user, the page's word for
    "User" (in Chinese, 用户: what the chat then shows is what the model reads)."""
    return rt().chat.new_chat(character_id, default_user=T("default_user"))


def open_chat(conv_id: int) -> None:
    """Go to the Chat page showing conversation `conv_id`."""
    st.session_state.conv_id = conv_id
    st.switch_page(PAGE_CHAT, query_params={"chat": str(conv_id)})


def fmt_time(dt: datetime | None) -> str:
    """A stored time (UTC, read back naive from SQLite) in the server's local time."""
    try:
        return dt.replace(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M")
    except (AttributeError, ValueError, OverflowError):
        return ""


if __name__ == "__main__":  # run as a page by the old pages/ mechanism: it is not one
    page_guard()
