"""The first minute, as a newcomer sees it: `streamlit run Home.py` on an empty data directory,
headless Chromium opens the app, clicks the first character's Chat button and sends a message.

    python -m bench.first_reply                     # this checkout, median of 3 launches
    python -m bench.first_reply --runs 1
    python -m bench.first_reply --baseline /tmp/base  # and another checkout, launches alternating
    python -m bench.first_reply --repo /tmp/snap      # another checkout only

Times from launch (the `streamlit run` process started) to: the page's HTML served (`html_s`),
Home with its characters (`home_s`, the first character's Chat button on screen), the chat input
(`input_s`) and the first streamed token of the reply (`first_token_s`, the streaming message
shows text). The browser is started before the server, as a newcomer's browser is already open.
Prints ONE JSON object: the median of each time over the runs, and every run's times; with
--baseline, the same for that checkout (launched in turn with this one, so both meet the same
load) and the ratios; `load_avg` is the machine's 1-minute load average before and after (other
work on the machine slows every step: label figures taken above 1 "under load"). The default
model (the embedded SmolLM2 GGUF) is used; $RP_* variables of the caller are dropped. Run it on
checkouts nobody edits meanwhile: Streamlit reloads a module whose file changes, which can break
a run (a copy of the working tree will do).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.server import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_MS = 180_000
# the first token: the streaming message shows text, or the reply already ended and the page
# shows it under the greeting and the message sent
FIRST_TOKEN_JS = """() => {
    const s = document.querySelector('.st-key-streaming');
    if (s && s.innerText.trim().length > 0) return true;
    return document.querySelectorAll('[data-testid=stChatMessage]').length >= 3;
}"""


def _wait_html(url: str, proc: subprocess.Popen[bytes], t0: float) -> float:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200 and b"<html" in r.read(4096).lower():
                    return time.monotonic() - t0
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        if time.monotonic() - t0 > TIMEOUT_MS / 1000:
            raise RuntimeError("the server did not answer")
        time.sleep(0.05)


def one_run(browser: Any, repo: Path, log: Path) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="first-reply-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RP_")}
        env["RP_DATA_DIR"] = tmp
        cmd = [sys.executable, "-m", "streamlit", "run", str(repo / "Home.py")]
        cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
        cmd += ["--server.runOnSave", "false", "--server.port", str(port)]
        cmd += ["--server.address", "127.0.0.1"]
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        with open(log, "a") as out:
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            times: dict[str, float] = {"html_s": _wait_html(url, proc, t0)}
            page.goto(url)
            chat = page.locator("[class*='st-key-home_chat_'] button").first
            chat.wait_for(timeout=TIMEOUT_MS)
            times["home_s"] = time.monotonic() - t0
            chat.click()
            box = page.locator("[data-testid=stChatInputTextArea]")
            box.wait_for(timeout=TIMEOUT_MS)
            times["input_s"] = time.monotonic() - t0
            box.fill("Hello! Who are you?")
            box.press("Enter")
            page.wait_for_function(FIRST_TOKEN_JS, timeout=TIMEOUT_MS, polling="raf")
            times["first_token_s"] = time.monotonic() - t0
            times["send_to_token_s"] = times["first_token_s"] - times["input_s"]
            return {k: round(v, 2) for k, v in times.items()}
        finally:
            ctx.close()
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


KEYS = ("html_s", "home_s", "input_s", "first_token_s", "send_to_token_s")


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout whose Home.py runs")
    ap.add_argument("--baseline", type=Path, help="another checkout, measured in turn with it")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    log = Path(tempfile.gettempdir()) / f"first-reply-{os.getpid()}.log"
    repos = {"this": args.repo.resolve()}
    if args.baseline:
        repos["baseline"] = args.baseline.resolve()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in repos}
    load_before = os.getloadavg()[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for i in range(args.runs):
                order = list(repos) if i % 2 == 0 else list(reversed(repos))
                for name in order:
                    runs[name].append(one_run(browser, repos[name], log))
        finally:
            browser.close()
    result: dict[str, Any] = {"repo": str(repos["this"]), "runs": args.runs}
    result.update(medians(runs["this"]))
    result.update({"goal_home_s": 3.0, "goal_first_token_s": 6.0, "each": runs["this"]})
    if "baseline" in runs:
        base = medians(runs["baseline"])
        result["baseline"] = {"repo": str(repos["baseline"]), **base, "each": runs["baseline"]}
        result["home_vs_baseline"] = round(result["home_s"] / base["home_s"], 3)
        result["first_token_vs_baseline"] = round(
            result["first_token_s"] / base["first_token_s"], 3
        )
    result["cpus"] = os.cpu_count()
    result["load_avg"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["note"] = "medians over launches on an empty data directory; the machine is shared"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
