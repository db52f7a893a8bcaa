"""Getting an RWKV model from the Hub, drawn in pages: Settings' catalog (`catalog_section`),
Home's offer while the embedded model is in use (`home_offer`), the downloads and conversions in
progress with their bars (`jobs_panel`), and `poll`, which a page calls last so that the bars
move. Not a page; everything it does is core/models/'s.

The network is reached only on a click: "Look up", "Get", "List" (a pasted repository). A
listing that reached the Hub is kept (core.models.catalog.save_listing) for every session and
for Home, which otherwise recommends from the catalog's files known offline.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import streamlit as st

from core.errors import AppError
from core.models.catalog import (
    HubFile,
    Listing,
    RepoListing,
    cached_listing,
    group_files,
    list_reference,
    load_catalog,
    lookup,
    offline_files,
    parse_reference,
    save_listing,
)
from core.models.download import DownloadJob, Progress, destination, discard_partial, partial_size
from core.models.fit import Estimate, Recommendation, Run, estimate, fmt_bytes, fmt_speed, recommend
from core.models.hub import host
from core.models.machine import Machine, probe
from core.settings import ModelChoice
from pages.ui_common import (
    PAGE_SETTINGS,
    T,
    choice_label,
    choose_model,
    current_choice,
    load_model,
    md_inline,
    rt,
    show_error,
)

# While a download or a conversion runs, the page that shows it updates its bars (every 0.4 s)
# for up to REFRESH_S seconds after drawing everything else, then runs again: at once when one
# ends, and a click meanwhile reruns it at once too. 0 turns it off (AppTest, whose run() would
# wait; tests run the page again).
REFRESH_S = 30.0
_RUN = threading.local()  # the bars drawn in this script run: (job, placeholder)
ss = st.session_state


def _bars() -> list:
    if not hasattr(_RUN, "bars"):
        _RUN.bars = []
    return _RUN.bars


# --------------------------------------------------------------------------- shared bits
def machine(measure: bool = True) -> Machine:
    """This machine (the memory bandwidth is measured once and kept as a setting)."""
    return probe(rt().settings, measure=measure)


def endpoint() -> str:
    return rt().settings.hub_endpoint()


def _in_models(f: HubFile) -> Path | None:
    try:
        dest = destination(f)
    except AppError:
        return None
    return dest if dest.exists() else None


def _speed_text(run: Run) -> str:
    if run.tok_s is None:
        return ""
    text = T("hub_speed", n=fmt_speed(run.tok_s))
    if run.convert:
        text += " " + T("hub_as_gguf", type=run.convert.upper())
    return text


def _fit_text(run: Run) -> str:
    where = T("hub_gpu") if run.device == "gpu" else T("hub_ram")
    if run.fits:
        return T("hub_fits", need=fmt_bytes(run.memory), free=fmt_bytes(run.free), where=where)
    return T("hub_no_fit", need=fmt_bytes(run.memory), free=fmt_bytes(run.free), where=where)


def why(rec: Recommendation) -> str:
    """Why this file, in the user's language."""
    if rec.estimate is None:
        if rec.fastest is None:
            return T("rec_none_fits")
        run = rec.fastest.best
        return T(
            "rec_none_fast",
            min=f"{rec.min_tok_s:g}",
            title=rec.fastest.info.title,
            n=fmt_speed(run.tok_s),
        )
    run = rec.estimate.best
    text = T(
        "rec_why",
        need=fmt_bytes(run.memory),
        free=fmt_bytes(run.free),
        n=fmt_speed(run.tok_s),
        min=f"{rec.min_tok_s:g}",
    )
    if run.convert:
        text += " " + T("rec_why_convert", type=run.convert.upper(), disk=fmt_bytes(run.disk))
    if rec.bigger is not None:
        b = rec.bigger.best
        if b.fits:
            text += " " + T(
                "rec_why_bigger_slow", size=rec.bigger.info.size_label, n=fmt_speed(b.tok_s)
            )
        else:
            text += " " + T(
                "rec_why_bigger_big", size=rec.bigger.info.size_label, need=fmt_bytes(b.memory)
            )
    return text


def offer_label(e: Estimate) -> str:
    """ "Get RWKV-7 G1a3 1.5B (3.1 GB, about 13 tokens/s here)" """
    return T("get_offer", title=e.info.title, size=fmt_bytes(e.size), n=fmt_speed(e.best.tok_s))


def _start(f: HubFile) -> None:
    """A Get button's callback: start the download (or find the one running)."""
    try:
        DownloadJob.start(f, endpoint())
    except AppError as e:
        ss.hub_error = str(e)


def _show_pending_error() -> None:
    if ss.get("hub_error"):
        show_error(AppError(ss.pop("hub_error")), "err_download")


# --------------------------------------------------------------------------- jobs
def _progress_text(p: Progress) -> str:
    if p.phase == "starting":
        return T("dl_starting")
    if p.phase == "checking":
        return T("dl_checking", done=fmt_bytes(p.done), total=fmt_bytes(p.total))
    if p.phase == "verifying":
        return T("dl_verifying")
    parts = [T("dl_bytes", done=fmt_bytes(p.done), total=fmt_bytes(p.total))]
    if p.speed:
        parts.append(f"{fmt_bytes(p.speed)}/s")
    elif p.speed == 0:
        parts.append(T("dl_waiting"))
    if p.eta is not None:
        parts.append(T("dl_eta", t=_duration(p.eta)))
    return " · ".join(parts)


def _duration(s: float) -> str:
    s = int(s)
    if s >= 3600:
        return T("dur_h", h=s // 3600, m=s % 3600 // 60)
    if s >= 60:
        return T("dur_m", m=s // 60, s=s % 60)
    return T("dur_s", s=s)


def _load_choice(path: Path) -> ModelChoice:
    """How to load a downloaded file: a .pth on the GPU where it fits there (cuda fp16), else
    on the CPU (cpu fp32); a GGUF through llama.cpp."""
    strategy = "cpu fp32"
    if path.suffix.lower() == ".pth":
        m = machine(measure=False)
        if m.has_gpu:
            e = estimate(HubFile("local/file", path.name, size=path.stat().st_size), m)
            if e.direct.how == "rwkv-gpu":
                strategy = "cuda fp16"
    return ModelChoice(path=str(path), strategy=strategy)


def _ask_load(path: str) -> None:
    """A Load button's callback: the load itself runs in the page (it shows its progress)."""
    ss.hub_load = path
    ss.pop("set_model_src", None)  # Settings' file choice follows the new model


def _convert(src: str, gtype: str) -> None:
    from core.models.convert import ConvertJob

    dst = Path(src).with_name(f"{Path(src).stem}-{gtype}.gguf")
    if dst.exists():  # converted before: load it
        _ask_load(str(dst))
        return
    try:
        ss.hub_convert = ConvertJob.start(src, dst, gtype)
    except AppError as e:
        ss.hub_error = str(e)


def _run_pending_load(where: str) -> None:
    path = ss.pop("hub_load", None)
    if not path:
        return
    choice = _load_choice(Path(path))
    try:
        choose_model(choice)
    except AppError as e:
        show_error(e, "err_load")
        return
    if load_model(choice, ui="status") is not None:
        ss[f"{where}_flash"] = T("model_ready", name=md_inline(choice_label(choice)))
        ss.pop("set_model_src", None)  # Settings' file choice shows the new model
        st.rerun()


def _converted_offers(path: Path, key: str) -> None:
    """For a .pth on a CPU: convert to Q8_0 or F16 GGUF and load, with what each costs."""
    m = machine(measure=False)
    e = estimate(HubFile("local/file", path.name, size=path.stat().st_size), m)
    if e.direct.how != "rwkv-cpu" or not e.conversions:
        return
    st.caption(T("convert_offer_help", n=fmt_speed(e.direct.tok_s)))
    with st.container(horizontal=True):
        for run in e.conversions:
            gtype = run.convert or "q8_0"
            st.button(
                T(
                    "convert_offer",
                    type=gtype.upper(),
                    disk=fmt_bytes(run.disk),
                    n=fmt_speed(run.tok_s),
                ),
                key=f"{key}_conv_{gtype}",
                icon=":material/transform:",
                type="primary" if gtype == "q8_0" else "secondary",
                on_click=_convert,
                args=(str(path), gtype),
            )


def jobs_panel(where: str) -> None:
    """The downloads of this process and this session's conversion: bars while they run, and
    when they end, Load (and, for a .pth on a CPU, convert) or what went wrong."""
    _show_pending_error()
    _run_pending_load(where)
    for job in DownloadJob.jobs():
        key = f"{where}_job_{job.key}"
        name = md_inline(job.file.name)
        p = job.progress()
        with st.container(border=True):
            if not job.done:
                st.markdown(T("dl_running", name=name, host=md_inline(host(job.endpoint))))
                bar = st.empty()
                bar.progress(p.fraction, text=_progress_text(p))
                _bars().append((job, bar))
                st.button(
                    T("cancel"),
                    key=f"{key}_cancel",
                    icon=":material/close:",
                    on_click=job.cancel,
                    kwargs={"timeout": 5},
                )
            elif job.result is not None:
                st.success(T("dl_done", name=name), icon=":material/download_done:")
                with st.container(horizontal=True):
                    st.button(
                        T("load_named", name=name),
                        key=f"{key}_load",
                        type="primary",
                        icon=":material/play_arrow:",
                        on_click=_ask_load,
                        args=(str(job.result),),
                    )
                    st.button(T("dismiss"), key=f"{key}_dismiss", on_click=job.dismiss)
                if job.result.suffix.lower() == ".pth":
                    _converted_offers(job.result, key)
            else:
                kept = partial_size(job.file)
                if p.phase == "cancelled":
                    st.info(
                        T("dl_cancelled", name=name, kept=fmt_bytes(kept)), icon=":material/pause:"
                    )
                else:
                    show_error(job.error or AppError("?"), "err_download")
                with st.container(horizontal=True):
                    st.button(
                        T("dl_resume") if kept else T("dl_retry"),
                        key=f"{key}_again",
                        icon=":material/refresh:",
                        on_click=_start,
                        args=(job.file,),
                    )
                    if kept:
                        st.button(
                            T("dl_discard", kept=fmt_bytes(kept)),
                            key=f"{key}_discard",
                            icon=":material/delete:",
                            on_click=_discard,
                            args=(job,),
                        )
                    st.button(T("dismiss"), key=f"{key}_dismiss", on_click=job.dismiss)
    conv = ss.get("hub_convert")
    if conv is not None:
        with st.container(border=True):
            if not conv.done:
                frac, _msg = conv.progress()
                bar = st.empty()
                bar.progress(frac, text=T("converting_named", name=md_inline(conv.dst.name)))
                _bars().append((conv, bar))
            else:
                ss.pop("hub_convert", None)
                if conv.error is not None:
                    show_error(conv.error, "err_convert")
                elif conv.result is not None:
                    ss.hub_load = str(conv.result)
                    _run_pending_load(where)


def _discard(job: DownloadJob) -> None:
    try:
        discard_partial(job.file)
    except AppError as e:
        ss.hub_error = str(e)
    job.dismiss()


def poll() -> None:
    """Last in a page: while what it showed runs, move its bars; run the page again when one
    ends, or after REFRESH_S seconds."""
    bars = getattr(_RUN, "bars", [])
    _RUN.bars = []
    if not bars or REFRESH_S <= 0:
        return
    deadline = time.monotonic() + REFRESH_S
    while time.monotonic() < deadline:
        time.sleep(0.4)
        for job, bar in bars:
            if job.done:
                st.rerun()
            if isinstance(job, DownloadJob):
                p = job.progress()
                bar.progress(p.fraction, text=_progress_text(p))
            else:
                frac, _msg = job.progress()
                bar.progress(frac, text=T("converting_named", name=md_inline(job.dst.name)))
    st.rerun()


# --------------------------------------------------------------------------- file rows
def _file_row(f: HubFile, m: Machine, rec: Recommendation, key: str) -> None:
    e = estimate(f, m)
    run = e.best
    star = " :material/star: " + T("hub_recommended") if rec.file == f else ""
    with st.container(horizontal=True, vertical_alignment="center", gap="small"):
        st.markdown(
            f"**{md_inline(f.name)}**{star}  \n"
            f":gray[{md_inline(f.repo)} · {fmt_bytes(e.size)} · {_fit_text(run)}"
            + (f" · {_speed_text(run)}" if run.tok_s else "")
            + "]",
            width="stretch",
        )
        job = DownloadJob.for_file(f)
        if _in_models(f) is not None:
            st.button(
                T("load"),
                key=f"{key}_{f.key}_load",
                icon=":material/play_arrow:",
                on_click=_ask_load,
                args=(str(_in_models(f)),),
                width="content",
            )
        else:  # the same button while it downloads: it keeps its place, nothing is left over
            running = job is not None and not job.done
            st.button(
                T("hub_downloading") if running else T("get"),  # its bar is above
                key=f"{key}_{f.key}_get",
                icon=":material/downloading:" if running else ":material/download:",
                type="primary" if rec.file == f else "secondary",
                on_click=_start,
                args=(f,),
                disabled=running,
                width="content",
            )


# --------------------------------------------------------------------------- Settings
def _look_up() -> None:
    listing = lookup(load_catalog(), endpoint())
    ss.hub_listing = listing
    if listing.files:
        save_listing(listing)


def _list_pasted() -> None:
    text = ss.get("hub_paste_text", "")
    try:
        ref = parse_reference(text)
    except AppError as e:
        ss.hub_paste = RepoListing(text, error=str(e))
        return
    ss.hub_paste = list_reference(ref, endpoint())


def _save_endpoint() -> None:
    try:
        rt().settings.set_hub_endpoint(ss.get("hub_endpoint_text", ""))
    except AppError as e:
        ss.hub_error = str(e)
    else:
        ss.pop("hub_listing", None)  # another place: its own listing


def _measure_again() -> None:
    from core.models.machine import measure_bandwidth

    try:
        rt().settings.set_memory_bandwidth(measure_bandwidth())
    except AppError as e:
        ss.hub_error = str(e)


def _machine_line(m: Machine) -> str:
    parts = [T("hub_machine_ram", free=fmt_bytes(m.ram_free))]
    if m.has_gpu:
        parts.append(T("hub_machine_gpu", name=md_inline(m.gpu_name), free=fmt_bytes(m.gpu_free)))
    if m.bandwidth:
        parts.append(T("hub_machine_bw", bw=fmt_bytes(m.bandwidth)))
    return T("hub_machine", what=", ".join(parts))


def catalog_section() -> None:
    """Settings → Get an RWKV model."""
    _RUN.bars = []
    st.subheader(T("get_model"), anchor=False)
    st.caption(T("get_model_help"))
    # one container whether or not anything runs: what follows keeps its place when a download
    # starts, so no element is left over, faded, while the page polls
    with st.container():
        jobs_panel("settings")
    cfg = rt().settings
    where = endpoint()
    with st.expander(T("hub_from", host=md_inline(host(where))), icon=":material/public:"):
        st.text_input(
            T("hub_endpoint"),
            value=cfg.hub_endpoint_setting(),
            key="hub_endpoint_text",
            placeholder=where,
            help=T("hub_endpoint_help"),
        )
        st.button(
            T("save"), key="hub_endpoint_save", icon=":material/save:", on_click=_save_endpoint
        )
    m = machine()
    with st.container(horizontal=True, vertical_alignment="center"):
        st.caption(_machine_line(m))
        st.button(T("hub_measure"), key="hub_measure", on_click=_measure_again, width="content")
    catalog = load_catalog()
    for problem in catalog.problems:
        st.caption(f":orange[{md_inline(problem)}]")
    listing: Listing | None = ss.get("hub_listing")
    if listing is not None and listing.endpoint != where:
        listing = None
    if listing is None:
        cached = cached_listing()
        listing = cached if cached is not None and cached.endpoint == where else None
    with st.container(horizontal=True, vertical_alignment="center"):
        st.button(
            T("hub_refresh") if listing is not None else T("hub_look_up", host=host(where)),
            key="hub_look_up",
            icon=":material/travel_explore:",
            on_click=_look_up,
        )
        if listing is not None and listing.files:
            age = _duration(max(0.0, time.time() - listing.fetched_at))
            st.caption(T("hub_listed_ago", host=md_inline(host(listing.endpoint)), t=age))
    if listing is not None and listing.offline:
        st.warning(listing.errors[0], icon=":material/cloud_off:")  # one line; the rest works
    elif listing is not None:
        for error in listing.errors:
            st.caption(f":orange[{md_inline(error)}]")
    files = listing.files if listing is not None and listing.files else offline_files(catalog)
    if listing is None or not listing.files:
        st.caption(T("hub_known_only"))
    rec = recommend(files, m)
    if rec.file is not None and rec.estimate is not None:
        with st.container(border=True):
            st.markdown(
                f":material/star: **{T('hub_recommended_here', title=rec.estimate.info.title)}**"
            )
            st.caption(why(rec))
            _file_row(rec.file, m, rec, "hub_rec")
    else:
        st.info(why(rec), icon=":material/info:")
    for label, group in group_files(files):
        count = T("hub_one_file") if len(group) == 1 else T("hub_n_files", n=len(group))
        title = f"{label or T('hub_size_unknown')} · {count}"
        with st.expander(title, expanded=rec.file in group):
            for f in group:
                _file_row(f, m, rec, f"hub_{label.replace('.', '_')}")
    st.text_input(
        T("hub_paste"),
        key="hub_paste_text",
        placeholder="BlinkDL/rwkv7-g1 · https://huggingface.co/…/file.pth",
        help=T("hub_paste_help"),
    )
    st.button(
        T("hub_paste_list"), key="hub_paste_go", icon=":material/search:", on_click=_list_pasted
    )
    pasted: RepoListing | None = ss.get("hub_paste")
    if pasted is not None:
        if pasted.error:
            show_error(AppError(pasted.error), "err_download")
        elif not pasted.files:
            st.caption(T("hub_no_model_files", repo=md_inline(pasted.repo)))
        for f in pasted.files:
            _file_row(f, m, rec, "hub_paste")


# --------------------------------------------------------------------------- Home
def home_offer() -> None:
    """While the embedded model is in use: say so, and offer the recommended RWKV model (from
    what is known offline: the last listing, else the catalog's known files)."""
    _RUN.bars = []
    choice = current_choice()
    if choice.path or choice.remote:  # a model file, or a model server: not the embedded one
        if DownloadJob.jobs() or ss.get("hub_convert") is not None:
            jobs_panel("home")
        return
    with st.container(border=True):
        st.markdown(f":material/info: {T('home_embedded')}")
        with st.container():  # always there: the offer below keeps its place (see above)
            jobs_panel("home")
        offer, caption = st.empty(), st.empty()
        m = machine()
        rec = recommend(offline_files(load_catalog()), m)
        f, e = rec.file, rec.estimate
        if f is not None and e is not None and DownloadJob.for_file(f) is None:  # else: above
            here = _in_models(f)
            if here is not None:
                offer.button(
                    T("load_named", name=md_inline(here.name)),
                    key="home_load_rwkv",
                    type="primary",
                    icon=":material/play_arrow:",
                    on_click=_ask_load,
                    args=(str(here),),
                )
            else:
                offer.button(
                    offer_label(e),
                    key="home_get_rwkv",
                    type="primary",
                    icon=":material/download:",
                    on_click=_start,
                    args=(f,),
                )
                caption.caption(why(rec) + " " + T("home_from", host=md_inline(host(endpoint()))))
        st.page_link(PAGE_SETTINGS, label=T("home_more_models"), icon=":material/settings:")


def flash(where: str) -> None:
    """The message a load after a download left for the next run of the page."""
    msg = ss.pop(f"{where}_flash", None)
    if msg:
        st.success(msg, icon=":material/check_circle:")
