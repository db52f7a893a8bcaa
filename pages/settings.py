"""Settings: language, model (load/unload), .pth -> GGUF conversion, getting an RWKV model from
the Hub (pages/models_ui.py), default sampling preset, the user's name and persona, password,
data location, state cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from core import access as api_access
from core.backends.threads import default_threads, usable_cpus
from core.config import MODELS_DIR, data_dir
from core.engine.sampler import PRESETS
from core.errors import AppError
from core.i18n import LANG_NAMES, LANGS
from core.settings import (
    API_NOTES_CHOICES,
    LOCAL_BACKENDS,
    MAX_CACHE_DISK_MB,
    MAX_CACHE_MEM_MB,
    STRATEGIES,
    ModelChoice,
)
from core.store.backup import KEEP, backup_dir, is_postgres
from pages import models_ui
from pages.ui_common import (
    T,
    backup_controls,
    choice_label,
    choose_model,
    current_choice,
    database_url,
    lang,
    load_model,
    md_inline,
    model_notice,
    model_summary,
    page_guard,
    password_policy,
    postgres_backups,
    rt,
    rwkv_options_apply,
    set_lang,
    show_error,
    store,
    unload_model,
)

page_guard()

store()  # a database that cannot be opened: its own page
cfg = rt().settings  # every setting is read and written through it (core/settings.py)
ss = st.session_state
EMBEDDED = "__embedded__"
OTHER = "__other__"
SERVER = "__server__"  # a model server (OpenAI-compatible): core/engine/remote.py

st.title(T("nav_settings"))
if ss.get("settings_flash"):
    st.success(ss.pop("settings_flash"), icon=":material/check_circle:")


def _save(change: Callable[..., object], *args: Any, flash: bool = True) -> None:
    """A setting changed by a widget's callback: what went wrong, or the flash, is shown by
    the run that follows."""
    try:
        change(*args)
    except AppError as e:
        ss.settings_error = str(e)
    else:
        if flash:
            ss.settings_flash = T("saved")


if ss.get("settings_error"):
    show_error(AppError(ss.pop("settings_error")))


# --- language ------------------------------------------------------------------------------------
def _switch_language() -> None:
    set_lang(ss.set_language)  # this browser session only
    _save(cfg.set_language, ss.set_language, flash=False)  # the default of new sessions


st.subheader(T("language"), anchor=False)
current_lang = lang()
if ss.get("set_language") not in LANGS:
    ss.set_language = current_lang
st.radio(
    T("language"),
    LANGS,
    format_func=lambda code: LANG_NAMES[code],
    key="set_language",
    horizontal=True,
    label_visibility="collapsed",
    on_change=_switch_language,
)

# --- model ---------------------------------------------------------------------------------
st.subheader(T("model"), anchor=False)
engine = model_notice("settings", buttons=False)  # loading, failed or unloaded: said here
if engine is not None:
    st.success(md_inline(model_summary(engine)), icon=":material/memory:")

try:
    from core.backends.loader import list_model_files

    files = [str(p) for p in list_model_files(MODELS_DIR)]
except Exception:  # the models folder cannot be read: still offer the other choices
    files = []
choice = current_choice()


def _embedded_label() -> str:
    try:
        from core.backends.embedded import embedded_model_path

        found = embedded_model_path() is not None
    except Exception:
        found = False
    return T("embedded_model") + ("" if found else f" ({T('not_installed')})")


def _file_label(opt: str) -> str:
    if opt == EMBEDDED:
        return _embedded_label()
    if opt == OTHER:
        return T("other_path")
    if opt == SERVER:
        return T("model_server")
    try:
        return str(Path(opt).relative_to(MODELS_DIR))
    except ValueError:
        return opt


options = [EMBEDDED, *files, OTHER, SERVER]
if "set_model_src" not in ss:
    ss.set_model_src = (
        SERVER
        if choice.remote
        else EMBEDDED
        if not choice.path
        else choice.path
        if choice.path in files
        else OTHER
    )
st.selectbox(
    T("model_file"),
    options,
    key="set_model_src",
    format_func=_file_label,
    help=T("model_file_help", folder=str(MODELS_DIR)),
)
other_path = ""
if ss.set_model_src == OTHER:
    other_path = st.text_input(
        T("model_path"),
        value=choice.path if choice.path and choice.path not in files else "",
        key="set_model_path",
        placeholder="/path/to/model.pth",
    )
chosen_path = (
    ""
    if ss.set_model_src in (EMBEDDED, SERVER)
    else other_path.strip()
    if ss.set_model_src == OTHER
    else ss.set_model_src
)
server = ss.set_model_src == SERVER
if server:  # its address, key, model name and time-out; nothing that runs a model here
    st.caption(T("model_server_help"))
    with st.container(horizontal=True):
        st.text_input(
            T("server_url"),
            value=choice.url,
            key="set_server_url",
            placeholder="http://127.0.0.1:8080/v1",
        )
        st.text_input(T("server_model"), value=choice.remote_model, key="set_server_model")
    with st.container(horizontal=True):
        st.text_input(T("server_key"), value=choice.api_key, key="set_server_key", type="password")
        st.number_input(
            T("server_timeout"),
            min_value=1,
            max_value=86400,
            value=int(choice.timeout_s),
            key="set_server_timeout",
        )
backend = choice.backend if choice.backend in LOCAL_BACKENDS else "auto"
rwkv_options = False
strategy = choice.strategy
with st.container(horizontal=True):
    if not server:
        backend = st.selectbox(
            T("backend"),
            LOCAL_BACKENDS,
            index=LOCAL_BACKENDS.index(backend),
            format_func=lambda b: T(f"backend_{b}"),
            key="set_backend",
        )
        # the rwkv package's options, only where it runs the model (not for llama.cpp)
        rwkv_options = rwkv_options_apply(ModelChoice(path=chosen_path, backend=backend))
    if rwkv_options:
        strategy = st.selectbox(
            T("strategy"),
            list(dict.fromkeys([choice.strategy, *STRATEGIES])),
            key="set_strategy",
            accept_new_options=True,
            help=T("strategy_help"),
        )
cuda_on, jit_on = choice.cuda_on, choice.jit_on
if rwkv_options:
    with st.container(horizontal=True):
        cuda_on = st.checkbox(
            "cuda_on", value=choice.cuda_on, key="set_cuda_on", help=T("cuda_on_help")
        )
        jit_on = st.checkbox("jit_on", value=choice.jit_on, key="set_jit_on", help=T("jit_on_help"))

with st.container(horizontal=True):
    load_clicked = st.button(
        T("load"), key="load_model", type="primary", icon=":material/play_arrow:"
    )
    unload_clicked = st.button(
        T("unload"), key="unload_model", icon=":material/eject:", disabled=engine is None
    )
if load_clicked:
    path = (
        ""
        if ss.set_model_src == EMBEDDED
        else (other_path.strip() if ss.set_model_src == OTHER else ss.set_model_src)
    )
    if ss.set_model_src == OTHER and not path:
        st.error(T("err_no_path"))
    else:
        try:
            if server:
                new = ModelChoice.server(
                    ss.set_server_url,
                    ss.set_server_key,
                    ss.set_server_model,
                    float(ss.set_server_timeout),
                )
            else:
                new = ModelChoice(
                    path=path,
                    backend=backend,
                    strategy=(strategy or "").strip() or "cpu fp32",
                    cuda_on=cuda_on,
                    jit_on=jit_on,
                )
            choose_model(new)
        except AppError as e:
            show_error(e)
        else:
            if load_model(new, ui="status") is not None:
                ss.settings_flash = T("model_ready", name=md_inline(choice_label(new)))
                st.rerun()
if unload_clicked:
    unload_model()
    ss.settings_flash = T("model_unloaded")
    st.rerun()

# --- convert .pth -> GGUF ------------------------------------------------------------------------
with st.expander(T("convert"), icon=":material/transform:"):
    st.caption(T("convert_help"))
    pth = [f for f in files if f.lower().endswith(".pth")]
    src_opts = [*pth, OTHER]
    src = st.selectbox(T("convert_source"), src_opts, key="conv_src", format_func=_file_label)
    src_path = st.text_input(T("model_path"), key="conv_path") if src == OTHER else src
    try:
        from core.models.convert import TYPES
    except Exception:
        TYPES = ("f16", "q8_0", "f32")  # noqa: N806
    gtype = st.selectbox(
        T("convert_type"),
        TYPES,
        index=TYPES.index("f16") if "f16" in TYPES else 0,
        key="conv_type",
        help=T("convert_type_help"),
    )
    default_dst = f"{Path(src_path).stem}-{gtype}.gguf" if src_path else ""
    dst_name = st.text_input(
        T("convert_dest"),
        value=default_dst,
        key=f"conv_dst_{default_dst}",
        help=T("convert_dest_help", folder=str(MODELS_DIR)),
    )
    dst: Path | None = None
    if dst_name:
        from core.models.convert import check_destination

        try:
            dst = check_destination(MODELS_DIR / dst_name)
        except AppError as e:
            show_error(e, "err_convert")
    replace = False
    if dst is not None and dst.exists():  # never over a user's file without a yes
        st.warning(T("convert_exists", name=md_inline(dst.name)), icon=":material/warning:")
        replace = st.checkbox(T("convert_replace", name=md_inline(dst.name)), key=f"conv_rep_{dst}")
    if st.button(
        T("convert_start"),
        key="convert_start",
        icon=":material/transform:",
        disabled=not (src_path and dst and (replace or not dst.exists())),
    ):
        from core.models.convert import ConvertJob

        try:
            job = ConvertJob.start(src_path, dst, gtype, overwrite=replace)
        except AppError as e:  # another session writes that file now
            show_error(e, "err_convert")
        else:
            bar = st.progress(0.0, text=T("converting"))
            st.button(T("cancel"), key="convert_cancel", icon=":material/close:")  # = a rerun
            try:
                while not job.wait(0.25):
                    frac, msg = job.progress()
                    bar.progress(frac, text=f"{T('converting')} {frac:.0%} · {msg}")
            finally:  # the page went away or Cancel was clicked: stop and leave no file
                if not job.done:
                    job.cancel(timeout=60)
            if job.error is not None:
                show_error(job.error, "err_convert")
            else:
                bar.progress(1.0, text=T("converted", path=md_inline(str(job.result))))
                st.success(T("converted", path=md_inline(str(job.result))))

# --- get an RWKV model: the catalog, downloads (pages/models_ui.py) ----------------------------
models_ui.catalog_section()

# --- sampling default -----------------------------------------------------------------------
st.subheader(T("sampling"), anchor=False)
presets = list(PRESETS)
if ss.get("set_preset") not in presets:
    ss.set_preset = cfg.default_preset()
st.selectbox(
    T("default_preset"),
    presets,
    key="set_preset",
    format_func=lambda n: T(f"preset_{n}"),
    help=T("default_preset_help"),
    on_change=lambda: _save(cfg.set_default_preset, ss.set_preset),
)
st.checkbox(
    T("continue_new_version"),
    value=cfg.continue_new_version(),
    key="set_continue_new_version",
    help=T("continue_new_version_help"),
    on_change=lambda: _save(cfg.set_continue_new_version, bool(ss.set_continue_new_version)),
)

# --- you -------------------------------------------------------------------------------------
st.subheader(T("about_you"), anchor=False)
with st.form("user_form"):
    user_name = st.text_input(
        T("f_your_name"), value=cfg.user_name(), max_chars=100, help=T("f_your_name_help")
    )
    user_persona = st.text_area(
        T("f_your_persona"), value=cfg.user_persona(), help=T("f_your_persona_help")
    )
    if st.form_submit_button(T("save"), icon=":material/save:"):
        try:
            cfg.set_user(user_name, user_persona)
        except AppError as e:
            show_error(e)
        else:
            st.success(T("saved"))

# --- password --------------------------------------------------------------------------------
st.subheader(T("password"), anchor=False)
try:
    policy, policy_error = password_policy(), None
except AppError as e:  # the password setting cannot be read: said in the API's part
    policy, policy_error = None, e
if policy is not None and policy.source == "env":
    st.info(T("password_env"))
has_pw = cfg.has_password()
st.caption(T("password_is_set") if has_pw else T("password_not_set"))
with st.form("password_form", clear_on_submit=True):
    pw1 = st.text_input(T("new_password"), type="password")
    pw2 = st.text_input(T("repeat_password"), type="password")
    if st.form_submit_button(T("set_password"), icon=":material/lock:"):
        if not pw1:
            st.error(T("err_empty_password"))
        elif pw1 != pw2:
            st.error(T("err_password_mismatch"))
        else:
            _save(cfg.set_password, pw1, flash=False)
            ss.authenticated = True
            ss.settings_flash = T("password_saved")
            st.rerun()
if has_pw and st.button(T("remove_password"), key="remove_password", icon=":material/lock_open:"):
    _save(cfg.remove_password, flash=False)
    ss.settings_flash = T("password_removed")
    st.rerun()


# --- API: keys and allowed origins (core/access.py; the guard is core/api/app.py) --------------
def _api_base_url() -> str:
    url = st.context.url or ""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('/', 1)[0]}"
    return f"http://{st.get_option('server.address') or 'localhost'}:{st.get_option('server.port')}"


def _api_problem(e: Exception) -> None:
    if isinstance(e, api_access.AccessError):
        messages = {
            "empty_name": T("api_err_key_name"),
            "too_many": T("api_err_too_many_keys", n=api_access.MAX_KEYS),
            "bad_origin": T("api_err_origin", value=md_inline(repr(e.value))),
        }
        st.error(messages.get(e.code, str(e)))
    else:
        show_error(e)


st.subheader(T("api"), anchor=False)
st.caption(T("api_base", url=md_inline(_api_base_url())))
if policy_error is not None:
    show_error(policy_error)
_why = policy.key_reasons if policy is not None else ("password",)  # unreadable: locked too
if _why:
    _reasons = {
        "env_password": T("api_why_env_password"),
        "password": T("api_why_password"),
        "listen": T("api_why_listen"),
    }
    st.info(T("api_key_required", why=T("api_why_and").join(_reasons[w] for w in _why)))
else:
    st.caption(T("api_key_not_required"))

st.markdown(f"**{T('api_keys')}**")
with st.form("api_key_form", clear_on_submit=True):
    _key_name = st.text_input(T("api_key_name"), key="api_key_name", help=T("api_key_name_help"))
    if st.form_submit_button(T("api_create_key"), icon=":material/key:"):
        try:
            _new_key, _record = cfg.create_api_key(_key_name)
        except (api_access.AccessError, AppError) as e:
            _api_problem(e)
        else:  # drawn in this run only: the next run no longer has it
            st.success(T("api_key_created", name=md_inline(_record["name"])))
            st.code(_new_key, language=None)
if ss.get("api_flash"):
    st.success(ss.pop("api_flash"), icon=":material/check_circle:")


def _revoke_key(key_id: str, name: str) -> None:
    try:
        cfg.revoke_api_key(key_id)
    except AppError as e:
        ss.settings_error = str(e)
    else:
        ss.api_flash = T("api_key_revoked", name=md_inline(name))


_keys = cfg.api_keys()
if not _keys:
    st.caption(T("api_no_keys"))
for _rec in _keys:
    _rid, _rname = str(_rec.get("id", "")), str(_rec.get("name", ""))
    with st.container(horizontal=True, vertical_alignment="center", gap="small"):
        st.markdown(
            T(
                "api_key_row",
                name=md_inline(_rname),
                shown=md_inline(_rec.get("shown", "")),
                created=md_inline(_rec.get("created", "")),
            ),
            width="content",
        )
        with st.popover(T("api_revoke"), icon=":material/key_off:"):
            st.caption(T("api_revoke_confirm", name=md_inline(_rname)))
            st.button(
                T("api_revoke_yes"),
                key=f"api_revoke_{_rid}",
                type="primary",
                on_click=_revoke_key,
                args=(_rid, _rname),
            )

st.markdown(f"**{T('api_origins')}**")
with st.form("api_origins_form"):
    _origins_text = st.text_area(
        T("api_origins"),
        value="\n".join(cfg.api_origins()),
        key="api_origins",
        placeholder="http://localhost:8000",
        label_visibility="collapsed",
    )
    if st.form_submit_button(T("api_save_origins"), icon=":material/public:"):
        try:
            _saved = cfg.set_api_origins(_origins_text)
        except (api_access.AccessError, AppError) as e:
            _api_problem(e)
        else:
            st.success(T("api_origins_saved", n=len(_saved)))
st.caption(T("api_origins_help"))
if "*" in cfg.api_origins():
    st.warning(T("api_origins_star"), icon=":material/warning:")
if ss.get("set_api_notes") not in API_NOTES_CHOICES:
    ss.set_api_notes = cfg.api_notes()
st.radio(
    T("api_notes"),
    API_NOTES_CHOICES,
    format_func=lambda c: T(f"api_notes_{c}"),
    key="set_api_notes",
    horizontal=True,
    on_change=lambda: _save(cfg.set_api_notes, ss.set_api_notes),
    help=T("api_notes_help"),
)

# --- data and state cache --------------------------------------------------------------
st.subheader(T("data"), anchor=False)
st.caption(T("data_dir"))
st.code(str(data_dir()), language=None)
st.caption(T("models_dir"))
st.code(str(MODELS_DIR), language=None)

st.subheader(T("state_cache"), anchor=False)
st.caption(T("state_cache_help"))
if engine is not None and engine.info.backend == "remote":
    st.caption(T("state_cache_remote"))
if engine is not None:
    try:
        stats = engine.cache_stats()
    except Exception:
        stats = {}
    if stats:
        st.text(
            T(
                "cache_stats",
                mem_n=stats.get("mem_entries", 0),
                mem_mb=f"{stats.get('mem_bytes', 0) / 2**20:.1f}",
                disk_n=stats.get("disk_entries", 0),
                disk_mb=f"{stats.get('disk_bytes', 0) / 2**20:.1f}",
                hits=stats.get("hits_mem", 0) + stats.get("hits_disk", 0),
                misses=stats.get("misses", 0),
            )
        )
    try:
        cap = engine.cache_capacity()
    except Exception:
        cap = None
    if cap is not None:
        kind = "cache_capacity_grows" if cap["grows"] else "cache_capacity"
        st.caption(
            T(
                kind,
                mb=f"{cap['checkpoint_bytes'] / 2**20:.1f}",
                kb=f"{cap['per_token'] / 1024:.0f}",
                tokens=f"{engine.CAPACITY_TOKENS:,}",
                chats=cap["chats"],
                regen=cap["chats_with_regen"],
                kept=cap["kept"],
            )
        )
mem_now, disk_now = cfg.cache_budget()
with st.form("cache_form"):
    with st.container(horizontal=True):
        mem_mb = st.number_input(
            T("cache_mem_mb"),
            min_value=0,
            max_value=MAX_CACHE_MEM_MB,
            step=64,
            value=int(mem_now),
        )
        disk_mb = st.number_input(
            T("cache_disk_mb"),
            min_value=0,
            max_value=MAX_CACHE_DISK_MB,
            step=256,
            value=int(disk_now),
        )
    if st.form_submit_button(T("save"), icon=":material/save:"):
        try:
            cfg.set_cache_budget(int(mem_mb), int(disk_mb))  # and to the loaded model's cache
        except AppError as e:
            show_error(e)
        else:
            ss.settings_flash = T("saved")
            st.rerun()
if st.button(
    T("clear_cache"), key="clear_cache", icon=":material/delete_sweep:", disabled=engine is None
):
    try:
        engine.clear_cache()
    except AppError as e:
        show_error(e)
    else:
        ss.settings_flash = T("cache_cleared")
        st.rerun()

# --- backups ---------------------------------------------------------------------------------
st.subheader(T("backups"), anchor=False)
if is_postgres(database_url()):
    postgres_backups()  # what PostgreSQL's own tools do instead, and pg_dump now
else:
    st.caption(T("backups_help", folder=md_inline(str(backup_dir())), n=KEEP))
    backup_controls("settings")  # "Back up now" (said, and selected below) and the restore

# --- threads ---------------------------------------------------------------------------------
st.subheader(T("threads"), anchor=False)
st.number_input(
    T("threads_count", n=default_threads()),
    min_value=0,
    max_value=usable_cpus(),
    value=min(cfg.threads() or 0, usable_cpus()),
    step=1,
    key="set_threads",
    help=T("threads_help"),
    on_change=lambda: _save(cfg.set_threads, int(ss.set_threads)),  # and to the loaded model
)
if engine is not None and "threads" in engine.info.extra:
    st.caption(T("threads_in_use", n=engine.info.extra["threads"]))
advice = cfg.threads_advice()
if advice.speed is not None:  # beside the count: what the last reply made of it
    speed = advice.speed
    shown = f"{speed.tok_s:.1f}"
    if speed.threads is not None:
        st.caption(T("threads_speed", n=speed.threads, tok_s=shown))
    else:
        st.caption(T("threads_speed_unknown", tok_s=shown))
if advice.crowded:
    st.warning(
        T("threads_crowded", n=advice.count, cpus=advice.cpus),
        icon=":material/warning:",
    )

models_ui.poll()  # last: while a download or conversion shown above runs, its bar moves
