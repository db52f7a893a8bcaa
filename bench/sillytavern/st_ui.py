"""SillyTavern itself, driven through its web UI in headless Chromium, against the app's server
(or any other): a role play of N turns with a regenerate at the end, for each connection asked
for, streaming (`NAME-stream`) or not (`NAME`):

- `chat`: Chat Completion, source "Custom (OpenAI-compatible)" (/v1/chat/completions);
- `text`: Text Completion, type "Default [OpenAI /completions compatible: oobabooga, LM Studio,
  etc.]", i.e. ooba (/v1/completions);
- `llamacpp`: Text Completion, type "llama.cpp" (llama.cpp's own /completion, /tokenize);
- `koboldcpp`: Text Completion, type "KoboldCpp" (/v1/completions, /api/extra/tokencount and
  /api/extra/abort);
- `tabby`: Text Completion, type "TabbyAPI" (its status check reads /v1/model/list);
- `kobold`: the "KoboldAI Classic" API (/api/v1/generate, /api/extra/generate/stream and its
  version checks).

Not part of CI: a reproducible record of what SillyTavern does with the app.

Set up (once; node and npm on the machine, SillyTavern 1.12.6 was used):

    # the source: a clone, or `git archive` of https://github.com/SillyTavern/SillyTavern
    cd /tmp/st && npm install          # writes config.yaml from default/config.yaml
    sed -i 's/^autorun: true/autorun: false/' config.yaml   # no browser launch
    node server.js --port 8123 --listen false --autorun false &
    # config.yaml as shipped: listen false, whitelist 127.0.0.1, basicAuthMode false

Our app (the embedded model; any data directory):

    RP_DATA_DIR=/tmp/st-data streamlit run Home.py --server.port 8501 --server.headless true

Then:

    python bench/sillytavern/st_ui.py --st http://127.0.0.1:8123 --api http://127.0.0.1:8501/v1
    python bench/sillytavern/st_ui.py --modes llamacpp-stream,llamacpp,kobold-stream,kobold

What it does, as a user would in SillyTavern's UI (the controls are set with jQuery and their
change/input events triggered, because they sit in closed drawers; the Connect and Send buttons
are clicked the same way): pick the API (and the source or type), enter the URL, set streaming
and the response length, click Connect and wait for SillyTavern's status line (for Chat
Completion, the model the server listed); open the bundled character (Seraphina), start a new
chat, send N user messages one by one (each waits for the reply to finish), then "Regenerate"
from the options menu. It records every generate
request SillyTavern's front end posts to its own server (the bodies), SillyTavern's status line,
each reply as shown, toasts (SillyTavern's error pop-ups), and a screenshot per connection under
artifacts/sillytavern/; the whole record is printed as ONE JSON object and written to
artifacts/sillytavern/st_ui.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.server import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

OUT = REPO / "artifacts" / "sillytavern"
USER_TURNS = [
    "*I push the door open, shaking the rain from my cloak.* Hello? Is anyone here? I saw the "
    "light between the trees.",
    "Thank you. I think I got lost on the forest road. What is this place, and who are you?",
    "*I sit down by the fire and warm my hands.* The wolves were following me for an hour. Are "
    "we safe here tonight?",
    "I have some bread and dried apples in my bag. Would you like to share them with me?",
    "How long have you lived in this forest? It seems very quiet, almost enchanted.",
    "*I notice the glowing runes on the wall.* Did you carve those yourself? What do they mean?",
    "I am looking for the old road to the mountain village. Do you know the way?",
    "*I yawn despite myself.* Sorry, it has been a long day. Is there somewhere I could rest?",
    "Before I sleep, tell me one thing: why do you help strangers like me?",
    "*I smile and close my eyes.* Good night, and thank you for everything.",
]
GEN_PATHS = (
    "/api/backends/chat-completions/generate",
    "/api/backends/text-completions/generate",
    "/api/backends/kobold/generate",
)
# Text Completion's types: the mode's name -> (SillyTavern's type, its URL field)
TEXT_TYPES = {
    "text": ("ooba", "#textgenerationwebui_api_url_text"),
    "llamacpp": ("llamacpp", "#llamacpp_api_url_text"),
    "koboldcpp": ("koboldcpp", "#koboldcpp_api_url_text"),
    "tabby": ("tabby", "#tabby_api_url_text"),
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--st", default="http://127.0.0.1:8123", help="SillyTavern's URL")
    ap.add_argument("--api", default="http://127.0.0.1:8501/v1", help="the server's /v1 URL")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument(
        "--modes",
        default="chat-stream,chat,text-stream,text",
        help="comma-separated: chat, text, llamacpp, koboldcpp, tabby, kobold, each also -stream",
    )
    ap.add_argument("--timeout", type=float, default=300, help="seconds per reply at most")
    return ap.parse_args()


class Tavern:
    """One SillyTavern tab, with a record of what happened in it."""

    def __init__(self, page: Any, args: argparse.Namespace) -> None:
        self.page = page
        self.args = args
        self.requests: list[dict[str, Any]] = []
        self.toasts: list[str] = []
        page.on("request", self._on_request)
        page.on("response", self._on_response)

    def _on_request(self, req: Any) -> None:
        if any(req.url.endswith(p) for p in GEN_PATHS):
            try:
                body = json.loads(req.post_data or "{}")
            except ValueError:
                body = {"unparsed": (req.post_data or "")[:500]}
            self.requests.append({"url": req.url, "body": body})

    def _on_response(self, resp: Any) -> None:
        for r in reversed(self.requests):
            if r["url"] == resp.url and "status" not in r:
                r["status"] = resp.status
                break

    def js(self, code: str, arg: Any = None) -> Any:
        return self.page.evaluate(code, arg)

    def open(self) -> None:
        self.page.goto(self.args.st, wait_until="domcontentloaded", timeout=120_000)
        # SillyTavern is ready when its loader is gone (after settings, characters, tokenizers)
        self.page.wait_for_function(
            "() => window.jQuery && jQuery('.character_select').length > 0"
            " && !document.getElementById('loader') && !document.getElementById('preloader')",
            timeout=120_000,
        )
        time.sleep(1)
        # toasts (toastr) are SillyTavern's way to say errors: keep their text; and the usage
        # of whole (not streamed) replies, which SillyTavern's server passes on unchanged
        self.js(
            """() => {
                window.__usages = [];
                const fetch0 = window.fetch;
                window.fetch = async (url, opts) => {
                    const res = await fetch0(url, opts);
                    if (String(url).endsWith('/generate') && opts && opts.body
                        && !JSON.parse(opts.body).stream) {
                        // OpenAI's usage; llama.cpp's counts (type "llama.cpp")
                        const llama = j => j.tokens_evaluated === undefined ? null : {
                            prompt_tokens: j.tokens_evaluated,
                            prompt_tokens_details: {cached_tokens: j.tokens_cached}};
                        res.clone().json().then(j => window.__usages.push(j.usage || llama(j)),
                                                () => window.__usages.push(null));
                    }
                    return res;
                };
                window.__toasts = [];
                new MutationObserver(() => {
                    document.querySelectorAll('#toast-container .toast').forEach(t => {
                        if (!t.dataset.seen) { t.dataset.seen = 1;
                            window.__toasts.push(t.innerText); }
                    });
                }).observe(document.body, {childList: true, subtree: true});
            }"""
        )

    def take_toasts(self) -> list[str]:
        new = self.js("() => { const t = window.__toasts; window.__toasts = []; return t; }")
        self.toasts += new
        return new

    def connect(self, mode: str) -> str:
        """Choose the API for `mode`, click Connect, return SillyTavern's status line."""
        api, stream = mode.split("-")[0], mode.endswith("-stream")
        url, n = self.args.api.rstrip("/"), self.args.max_tokens
        if api == "chat":
            self.js(
                """([url, stream, n]) => {
                    $('#main_api').val('openai').trigger('change');
                    $('#chat_completion_source').val('custom').trigger('change');
                    $('#custom_api_url_text').val(url).trigger('input');
                    $('#stream_toggle').prop('checked', stream).trigger('input');
                    $('#openai_max_tokens').val(n).trigger('input');
                    $('#api_button_openai').trigger('click');
                }""",
                [url, stream, n],
            )
            button = "#api_button_openai"
        elif api == "kobold":  # KoboldAI Classic: SillyTavern makes the URL end in /api
            base = url.removesuffix("/v1")
            self.js(
                """([base, stream, n]) => {
                    $('#main_api').val('kobold').trigger('change');
                    $('#api_url_text').val(base + '/api').trigger('input');
                    $('#streaming_kobold').prop('checked', stream).trigger('input');
                    $('#amount_gen').val(Math.max(16, n)).trigger('input');
                    $('#api_button').trigger('click');
                }""",
                [base, stream, n],
            )
            button = "#api_button"
        else:
            base = url.removesuffix("/v1")
            kind, field = TEXT_TYPES[api]
            self.js(
                """([base, stream, n, kind, field]) => {
                    $('#main_api').val('textgenerationwebui').trigger('change');
                    $('#textgen_type').val(kind).trigger('change');
                    $(field).val(base).trigger('input');
                    $('#streaming_textgenerationwebui').prop('checked', stream).trigger('input');
                    $('#amount_gen').val(Math.max(16, n)).trigger('input');
                    $('#api_button_textgenerationwebui').trigger('click');
                }""",
                [base, stream, n, kind, field],
            )
            button = "#api_button_textgenerationwebui"
        # connected: SillyTavern's status line says "Valid" (chat) or the model's name (text);
        # "Status check bypassed" shows while the Custom source is being checked
        deadline = time.monotonic() + 60
        status = ""
        while time.monotonic() < deadline:
            time.sleep(0.5)
            status = self.js("() => $('.online_status_text').first().text().trim()")
            busy = self.js(f"() => $('{button}').hasClass('disabled')")
            waiting = ("bypassed", "connect", "no connection")
            if status and not busy and not any(w in status.lower() for w in waiting):
                break
        if api == "chat":
            # the model the server listed (SillyTavern fills the datalist after Connect)
            model = self.js("() => $('#model_custom_select').val() || ''")
            status += f" (model {model!r})" if model else " (no model listed)"
        return status

    def new_chat(self) -> None:
        """Open the bundled character and start a new chat with it (its greeting first)."""
        # by name: the first card in the list was once SillyTavern's own "Assistant"
        self.js(
            """() => { const all = $('.character_select');
                const sera = all.filter((i, e) => $(e).text().includes('Seraphina'));
                (sera.length ? sera : all).first().trigger('click'); }"""
        )
        self.page.wait_for_function("() => $('#chat .mes').length >= 1", timeout=60_000)
        self.js("() => $('#option_start_new_chat').trigger('click')")
        time.sleep(1)
        # "Start new chat?" asks for confirmation in a popup
        self.js("() => $('.popup-button-ok:visible').first().trigger('click')")
        self.page.wait_for_function("() => $('#chat .mes').length === 1", timeout=60_000)
        while not self.idle():
            time.sleep(0.3)
        time.sleep(1.5)  # the new chat settles (saved, the input cleared) before the first send

    def idle(self) -> bool:
        return self.js(
            "() => !$('#send_but').hasClass('displayNone') && !$('#mes_stop').is(':visible')"
        )

    def mes_count(self) -> int:
        return int(self.js("() => $('#chat .mes').length"))

    def wait_reply(self, before: int, want: int) -> dict[str, Any]:
        """Wait until the chat has `want` more messages than `before` and SillyTavern is idle
        again (the reply finished), or an error toast came, or the timeout."""
        t0 = time.monotonic()
        time.sleep(0.5)
        while time.monotonic() - t0 < self.args.timeout:
            if self.mes_count() >= before + want and self.idle():
                break
            if self.idle() and self.js("() => window.__toasts.length > 0"):
                break
            time.sleep(0.3)
        else:
            return {"error": f"no reply within {self.args.timeout} s"}
        last = self.js(
            """() => { const m = $('#chat .mes').last();
                return {count: $('#chat .mes').length, is_user: m.attr('is_user'),
                        name: m.find('.name_text').first().text(),
                        text: m.find('.mes_text').text().trim()}; }"""
        )
        last["seconds"] = round(time.monotonic() - t0, 2)
        usage = self.js("() => window.__usages.splice(0).pop() || null")
        if usage:
            details = usage.get("prompt_tokens_details") or {}
            last["prompt_tokens"] = usage.get("prompt_tokens")
            last["cached_tokens"] = details.get("cached_tokens")
        toasts = self.take_toasts()
        if toasts:
            last["toasts"] = toasts
        return last

    def send(self, text: str) -> dict[str, Any]:
        before = self.mes_count()
        self.js(
            "(t) => { $('#send_textarea').val(t).trigger('input'); "
            "$('#send_but').trigger('click'); }",
            text,
        )
        return self.wait_reply(before, 2)  # the user's message and the reply

    def regenerate(self) -> dict[str, Any]:
        before = self.mes_count()
        old = self.js("() => $('#chat .mes').last().find('.mes_text').text().trim()")
        asked = len(self.requests)
        self.js("() => $('#option_regenerate').trigger('click')")
        # the last reply is replaced: wait for its text to change, or for SillyTavern to be idle
        # after it posted the generate request (a new version may say the same: a small model
        # at its loops does), or the timeout
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.args.timeout:
            time.sleep(0.3)
            now = self.js("() => $('#chat .mes').last().find('.mes_text').text().trim()")
            if (now != old or len(self.requests) > asked) and self.idle():
                break
        res = self.wait_reply(before, 0)
        res["replaced_previous"] = res.get("text") != old
        return res


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def run_mode(tavern: Tavern, mode: str) -> dict[str, Any]:
    start = len(tavern.requests)
    rec: dict[str, Any] = {"mode": mode, "status": tavern.connect(mode)}
    log(mode, "status:", rec["status"], tavern.take_toasts())
    tavern.new_chat()
    log(mode, "new chat")
    rec["turns"] = []
    for u in USER_TURNS[: tavern.args.turns]:
        rec["turns"].append(tavern.send(u))
        log(mode, "turn", len(rec["turns"]), json.dumps(rec["turns"][-1], ensure_ascii=False)[:300])
    rec["regenerate"] = tavern.regenerate()
    log(mode, "regenerate", json.dumps(rec["regenerate"], ensure_ascii=False)[:300])
    reqs = tavern.requests[start:]
    rec["generate_requests"] = len(reqs)
    rec["generate_statuses"] = sorted({r.get("status", 0) for r in reqs})
    if reqs:
        rec["cache_check"] = cache_check(tavern.args.api, reqs[-1])
        # the last body, messages or prompt shortened, to show its shape
        body = dict(reqs[-1]["body"])
        if isinstance(body.get("messages"), list):
            body["messages"] = [
                {**m, "content": str(m.get("content", ""))[:80]} for m in body["messages"]
            ]
        if isinstance(body.get("prompt"), str):
            body["prompt"] = body["prompt"][:200] + " ..." + body["prompt"][-200:]
        rec["last_body"] = body
    shot = OUT / f"{mode}.png"
    tavern.page.screenshot(path=str(shot), full_page=False)
    rec["screenshot"] = str(shot.relative_to(REPO))
    return rec


def cache_check(api: str, req: dict[str, Any]) -> dict[str, Any]:
    """The last request SillyTavern forwarded, sent again straight to the server without
    streaming (max_tokens 1): how many of its prompt tokens came from the state cache."""
    import urllib.request

    body = dict(req["body"])
    chat = "messages" in body
    keep = ("messages", "model") if chat else ("prompt", "model", "stop", "stop_sequence")
    upstream = {k: body[k] for k in keep if k in body}
    upstream.update({"max_tokens": 1, "stream": False})
    path = "/chat/completions" if chat else "/completions"
    request = urllib.request.Request(
        api.rstrip("/") + path,
        data=json.dumps(upstream).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as r:
            usage = json.load(r).get("usage") or {}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    details = usage.get("prompt_tokens_details") or {}
    return {
        "prompt_tokens": usage.get("prompt_tokens"),
        "cached_tokens": details.get("cached_tokens"),
    }


def main() -> int:
    args = parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    result: dict[str, Any] = {"sillytavern": args.st, "api": args.api, "modes": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            tavern = Tavern(page, args)
            tavern.open()
            result["version"] = tavern.js(
                "() => fetch('/version').then(r => r.json()).catch(() => null)"
            )
            for mode in args.modes.split(","):
                try:
                    result["modes"].append(run_mode(tavern, mode.strip()))
                except Exception as e:  # recorded, and the next mode still runs
                    result["modes"].append({"mode": mode, "failed": f"{type(e).__name__}: {e}"})
            result["toasts"] = tavern.toasts
        finally:
            browser.close()
    text = json.dumps(result, ensure_ascii=False)
    (OUT / "st_ui.json").write_text(text)
    # every generate request SillyTavern's page posted, whole: to see what changed between turns
    (OUT / "requests.json").write_text(json.dumps(tavern.requests, ensure_ascii=False, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
