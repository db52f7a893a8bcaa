"""Entry point: `streamlit run Home.py [-- --model models/x.pth --strategy "cpu fp32" ...]`.

`streamlit run` finds the `app` below (an st.App) and serves it: the pages and the HTTP API
(core/api/: /v1/... OpenAI-compatible, /api/... the app's own; mounted by core/api_mount.py) on
one port, in one process, with one model. Each browser session then runs this file as its
script (`__name__ == "__main__"`).

As a script it is the router of the app: page setup, st.navigation over the pages in pages/
(home, chat, characters, settings; pages/ui_common.py is a helper module, not a page), the
password, then the chosen page. st.navigation is called before the password form so that
Streamlit stops running pages/ files directly (its old multipage mode) from the first run on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from core.cli_args import cli_args
from pages.ui_common import (
    PAGE_CHARACTERS,
    PAGE_CHAT,
    PAGE_HOME,
    PAGE_SETTINGS,
    T,
    app_icon,
    authenticated,
    keep_lang,
    md_inline,
    password_gate,
    refresh_while_loading,
    routed,
    start_model,
)

if TYPE_CHECKING:
    from core.api.config import ApiConfig


def main() -> None:
    # the icon is a picture served by this server: an emoji or :material/...: favicon would be
    # fetched from a CDN by the browser
    st.set_page_config(page_title="RWKV Role Play", page_icon=app_icon(), layout="wide")
    keep_lang()
    start_model()  # in the background, if nothing started it (pages say that it loads)

    page = st.navigation(
        [
            st.Page(PAGE_HOME, title=T("nav_home"), icon=":material/home:", default=True),
            st.Page(PAGE_CHAT, title=T("nav_chat"), icon=":material/chat:", url_path="chat"),
            st.Page(
                PAGE_CHARACTERS,
                title=T("nav_characters"),
                icon=":material/group:",
                url_path="characters",
            ),
            st.Page(
                PAGE_SETTINGS,
                title=T("nav_settings"),
                icon=":material/settings:",
                url_path="settings",
            ),
        ],
        position="sidebar" if authenticated() else "hidden",
    )

    password_gate()  # stops here until this browser session gives the password

    _, warnings = cli_args()
    if warnings and not st.session_state.get("cli_warned"):
        st.session_state.cli_warned = True
        st.toast(T("cli_warnings", text=md_inline("; ".join(warnings))), icon=":material/warning:")

    with routed():
        page.run()
    refresh_while_loading()  # the page said the model loads: run it again when it is ready


if __name__ == "__main__":
    main()
else:  # imported by `streamlit run` to serve the UI and the API
    from functools import partial

    import streamlit.delta_generator as _dg

    # Streamlit warns once per process, at the first element a page draws, when it is not run by
    # `streamlit run`. To tell, it calls inspect.stack(), which looks up the source file of every
    # frame among all loaded modules: 0.13-0.15 s of the first page run here (timed in the
    # server), holding the GIL. This branch runs only under `streamlit run`, where there is
    # nothing to warn about.
    _dg._use_warning_has_been_displayed = True

    from starlette.middleware import Middleware

    from core import runtime
    from core.api.hosts import HostGuard
    from core.api_mount import ApiMount
    from core.runtime import preload_lifespan

    def _listen_address() -> str | None:
        return st.get_option("server.address")

    def _password_set() -> bool:
        """A password is in force (core.api.hosts: then any Host may be served); raises when the
        setting cannot be read, and the Host guard then refuses."""
        return bool(runtime.current().password_policy(_listen_address()).password)

    def _api_config() -> ApiConfig:
        from core.api.config import ApiConfig

        return ApiConfig(listen_address=_listen_address)

    # the API is built once the model has loaded (or by its first request): importing it before
    # the server answered made the first page 0.4-0.5 s later (core/api_mount.py)
    _api = ApiMount(_api_config)
    _lifespan = partial(preload_lifespan, after_load=_api.build)  # the model loads at start
    # before everything the server answers (pages, their websocket, the API, static files):
    # without a password, only loopback names and server.address (core/api/hosts.py: DNS rebinding)
    _hosts = Middleware(HostGuard, listen_address=_listen_address, password_set=_password_set)
    app = st.App(__file__, routes=[_api], lifespan=_lifespan, middleware=[_hosts])
