"""Entry point: `streamlit run Home.py [-- --model models/x.pth --strategy "cpu fp32" ...]`.

`streamlit run` finds the `app` below (an st.App) and serves it: the pages and the HTTP API
(core/api/: /v1/... OpenAI-compatible, /api/... the app's own) on one port, in one process, with
one model. Each browser session then runs this file as its script (`__name__ == "__main__"`).

As a script it is the router of the app: page setup, st.navigation over the pages in pages/
(home, chat, characters, settings; pages/ui_common.py is a helper module, not a page), the
password, then the chosen page. st.navigation is called before the password form so that
Streamlit stops running pages/ files directly (its old multipage mode) from the first run on.
"""

from __future__ import annotations

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
    from core.api import ApiConfig, api_middleware, api_routes

    _api = ApiConfig(listen_address=lambda: st.get_option("server.address"))
    from core.runtime import preload_lifespan  # the model loads from the server's start

    app = st.App(
        __file__,
        routes=api_routes(_api),
        middleware=api_middleware(_api),
        lifespan=preload_lifespan,
    )
