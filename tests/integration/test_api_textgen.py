"""The routes of SillyTavern's other Text Completion back-end types, served for real (uvicorn on
a free port, the routes and guard Home.py mounts) on the tiny RWKV-7: llama.cpp's native
`/completion` (streamed and not), `/tokenize`, `/detokenize`, `/props`, `/health`; KoboldCpp's
`/api/v1/generate`, its stream, abort, token count and version checks; TabbyAPI's model list
and token routes. Each request body is the one SillyTavern 1.12.6 sends for that type (read
from its public/scripts/textgen-settings.js and kai-settings.js). The same engine, state cache,
admission count and keys as /v1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest

from core import runtime
from core.api.llamacpp import PATHS as LLAMACPP_PATHS
from core.api.paths import TOP_PATHS, is_api_path
from core.auth import new_api_key
from tests.support.api_server import api_server

WAIT_S = 120  # an upper bound for things that happen "soon" on a loaded machine; never asserted
TINY = "v7-L2-D128.pth"
PROMPT = "Bob: Hello, Alice!\n\nAlice: Hi, Bob. How was the trip?\n\nBob: Long.\n\nAlice:"


@pytest.fixture
def api(tiny_models, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("RP_MODEL", str(tiny_models(7)))
    for name in ("RP_PASSWORD", "RP_DB_URL", "RP_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    with api_server() as base:
        yield base


def post(url: str, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
    return httpx.post(url, json=body, timeout=WAIT_S, **kw)


def events(text: str) -> list[dict[str, Any]]:
    """The JSON of each `data:` event (any `event:` line before it skipped)."""
    assert text.endswith("\n\n"), text[-80:]
    out = []
    for block in text[:-2].split("\n\n"):
        data = [line for line in block.split("\n") if line.startswith("data: ")]
        assert len(data) == 1, block
        out.append(json.loads(data[0][len("data: ") :]))
    return out


def sillytavern_llamacpp(prompt: str, **over: Any) -> dict[str, Any]:
    """What SillyTavern's Text Completion type "llama.cpp" posts to /completion (its fields for
    that type; the values of its default preset)."""
    body = {
        "prompt": prompt,
        "model": None,
        "max_new_tokens": 12,
        "max_tokens": 12,
        "temperature": 0.7,
        "top_p": 0.9,
        "typical_p": 1,
        "typical": 1,
        "sampler_seed": 5,
        "min_p": 0,
        "repetition_penalty": 1.1,
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "top_k": 40,
        "min_tokens": 0,
        "add_bos_token": True,
        "smoothing_factor": 0,
        "smoothing_curve": 1,
        "dry_allowed_length": 2,
        "dry_multiplier": 0,
        "dry_base": 1.75,
        "dry_sequence_breakers": '["\\n", ":", "\\"", "*"]',
        "dry_penalty_last_n": 0,
        "max_tokens_second": 0,
        "samplers": ["top_k", "tfs_z", "typical_p", "top_p", "min_p", "temperature"],
        "stopping_strings": ["\nBob:"],
        "stop": ["\nBob:"],
        "truncation_length": 8192,
        "ban_eos_token": False,
        "skip_special_tokens": True,
        "top_a": 0,
        "tfs": 1,
        "mirostat_mode": 0,
        "mirostat_tau": 5,
        "mirostat_eta": 0.1,
        "custom_token_bans": "",
        "banned_strings": [],
        "api_type": "llamacpp",
        "api_server": "http://127.0.0.1:8501",
        "legacy_api": False,
        "xtc_threshold": 0.1,
        "xtc_probability": 0,
        "rep_pen": 1.1,
        "rep_pen_range": 0,
        "repetition_penalty_range": 0,
        "seed": 5,
        "guidance_scale": 1,
        "negative_prompt": "",
        "grammar_string": "",
        "repeat_penalty": 1.1,
        "tfs_z": 1,
        "repeat_last_n": 0,
        "n_predict": 12,
        "num_predict": 12,
        "num_ctx": 8192,
        "mirostat": 0,
        "ignore_eos": False,
        "rep_pen_slope": 1,
        "logit_bias": [],
        "grammar": "",
        "cache_prompt": True,
        "stream": False,
    }
    return {**body, **over}


# ---------------------------------------------------------------------------- llama.cpp
def test_the_paths_outside_v1_and_api_are_the_apis() -> None:
    assert set(LLAMACPP_PATHS) == TOP_PATHS
    assert all(is_api_path(p) for p in TOP_PATHS)
    assert not is_api_path("/completion/x") and not is_api_path("/chat")


def test_completion_whole_and_streamed_from_the_same_cache_as_v1(api: str) -> None:
    body = sillytavern_llamacpp(PROMPT)
    r = post(api + "/completion", body)
    assert r.status_code == 200, r.text
    whole = r.json()
    assert whole["stop"] is True and whole["model"] == TINY
    assert whole["tokens_predicted"] >= 1 and whole["tokens_evaluated"] > 10
    assert whole["stopped_limit"] == (whole["tokens_predicted"] == 12)
    assert whole["timings"]["predicted_n"] == whole["tokens_predicted"]
    assert whole["generation_settings"]["n_ctx"] >= 1_000_000  # RWKV: the state holds it all
    # the same text from /v1/completions: the same engine and sampling
    openai_body = {k: v for k, v in body.items() if k != "logit_bias"}  # OpenAI's is an object
    v1 = post(api + "/v1/completions", openai_body).json()
    assert v1["choices"][0]["text"] == whole["content"]
    # and the same cache: the prompt was restored, not fed
    assert v1["usage"]["prompt_tokens_details"]["cached_tokens"] == whole["tokens_evaluated"]

    streamed = post(api + "/completion", {**body, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in streamed.text  # llama.cpp's own stream has none
    got = events(streamed.text)
    assert all(e["stop"] is False for e in got[:-1]) and got[-1]["stop"] is True
    assert "".join(e["content"] for e in got) == whole["content"]
    assert got[-1]["tokens_predicted"] == whole["tokens_predicted"]
    assert got[-1]["tokens_cached"] == got[-1]["tokens_evaluated"]  # the same request again


def test_completion_reads_llama_cpps_fields(api: str) -> None:
    tok = httpx.post(api + "/tokenize", json={"content": " Hello"}, timeout=WAIT_S).json()
    hello = tok["tokens"][0]
    # logit_bias as llama.cpp takes it: [token, bias]; +100 all but forces the token
    # n_predict is what counts, whatever the other aliases SillyTavern sends say (12)
    forced = sillytavern_llamacpp(PROMPT, n_predict=3, logit_bias=[[hello, 100]], stop=[])
    r = post(api + "/completion", forced).json()
    assert r["content"] == " Hello Hello Hello" and r["tokens_predicted"] == 3
    # [token, false] bans it; a text's tokens all take the bias
    banned = {**forced, "logit_bias": [[hello, 100], [hello, False]]}
    assert "Hello" not in post(api + "/completion", banned).json()["content"]
    by_text = {**forced, "logit_bias": [[" Hello", 100]]}
    assert post(api + "/completion", by_text).json()["content"].count("Hello") == 3
    # a stop string ends it and says which
    stop = post(api + "/completion", {**forced, "stop": ["Hello Hello"]}).json()
    assert stop["stopped_word"] and stop["stopping_word"] == "Hello Hello"
    assert stop["content"] == ""
    # the prompt as token ids
    ids = httpx.post(api + "/tokenize", json={"content": PROMPT}, timeout=WAIT_S).json()
    as_ids = post(api + "/completion", sillytavern_llamacpp(ids["tokens"])).json()
    assert (
        as_ids["content"]
        == post(api + "/completion", sillytavern_llamacpp(PROMPT)).json()["content"]
    )


def _dry_case(api: str, line: str, start: str) -> dict[str, Any]:
    """A /completion body whose prompt ends with `start`, the beginning of the earlier `line`,
    and makes the line's next token the model's favourite (+20), greedy, one token."""
    prompt = f"Alice:{line}\n\nBob: And then?\n\nAlice:{start}"
    tok = post(api + "/tokenize", {"content": line}).json()["tokens"]
    head = post(api + "/tokenize", {"content": start}).json()["tokens"]
    ids = post(api + "/tokenize", {"content": prompt}).json()["tokens"]
    assert tok[: len(head)] == head == ids[-len(head) :]  # the prompt ends the line's start
    nxt = tok[len(head)]
    return sillytavern_llamacpp(
        prompt, n_predict=1, temperature=0, logit_bias=[[nxt, 20]], stop=[], seed=1
    )


def test_completion_with_dry_turns_a_verbatim_copy_away(api: str) -> None:
    """DRY through /completion, with SillyTavern's breakers (sent as JSON text). The prompt
    ends with an earlier line's first four tokens; its fifth is the favourite. Greedy, the
    model copies on; DRY takes 15 * 1.75 ** (4 - 2) = 46 off that token and it does not."""
    body = _dry_case(api, " old keeper walks along rocky shores", " old keeper walks along")
    assert post(api + "/completion", body).json()["content"] == " rocky"
    on = post(api + "/completion", {**body, "dry_multiplier": 15}).json()
    assert on["content"] != " rocky" and on["tokens_predicted"] == 1
    assert on["generation_settings"]["dry_multiplier"] == 15
    # a breaker (":") ends a repeat: only "walks along" (2 tokens) repeats, 15 < 20
    colon = _dry_case(api, " old keeper: walks along rocky shores", " old keeper: walks along")
    assert post(api + "/completion", {**colon, "dry_multiplier": 15}).json()["content"] == (
        " rocky"
    )
    # without breakers the whole line repeats again
    none = {**colon, "dry_multiplier": 15, "dry_sequence_breakers": []}
    assert post(api + "/completion", none).json()["content"] != " rocky"


def test_tokenize_detokenize_and_pieces(api: str) -> None:
    text = "Hello, 世界!"
    ids = post(api + "/tokenize", {"content": text}).json()["tokens"]
    assert all(isinstance(t, int) for t in ids) and len(ids) >= 3
    assert post(api + "/detokenize", {"tokens": ids}).json() == {"content": text}
    pieces = post(api + "/tokenize", {"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == ids
    joined = b"".join(
        p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces
    )
    assert joined.decode() == text
    # vLLM's and Aphrodite's form (SillyTavern's token counts for those types)
    for path in ("/tokenize", "/v1/tokenize"):
        r = post(api + path, {"model": TINY, "prompt": text}).json()
        assert r["tokens"] == ids and r["count"] == len(ids)
    assert post(api + "/detokenize", {"tokens": [70000]}).status_code == 400
    assert post(api + "/tokenize", {"content": 3}).status_code == 400


def test_props_and_health(api: str) -> None:
    post(api + "/completion", sillytavern_llamacpp("Hi", n_predict=1))  # loads the model
    props = httpx.get(api + "/props", timeout=WAIT_S).json()
    assert props["model_path"] == TINY and props["total_slots"] >= 1
    settings = props["default_generation_settings"]
    assert settings["n_ctx"] >= 1_000_000 and settings["model"] == TINY
    assert "temperature" in settings and "dry_multiplier" in settings
    assert httpx.get(api + "/health", timeout=WAIT_S).json() == {"status": "ok"}


def test_llama_cpp_routes_refuse_what_they_cannot_do(api: str) -> None:
    assert httpx.get(api + "/completion", timeout=WAIT_S).status_code == 405
    assert httpx.post(api + "/props", timeout=WAIT_S).status_code == 405
    r = post(api + "/completion", {"prompt": ["one", "two"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert post(api + "/completion", {"prompt": ""}).status_code == 400
    r = post(api + "/completion", {"prompt": "Hi", "n_probs": 5})  # token probabilities
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_parameter"
    r = post(api + "/completion", {"prompt": "Hi", "logit_bias": [[1, "x"]]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"


def test_the_new_routes_need_a_key_like_the_rest(api: str, monkeypatch) -> None:
    monkeypatch.setenv("RP_PASSWORD", "secret")
    for method, path, body in (
        ("POST", "/completion", {"prompt": "Hi", "n_predict": 1}),
        ("POST", "/tokenize", {"content": "Hi"}),
        ("GET", "/props", None),
        ("POST", "/api/v1/generate", {"prompt": "Hi", "max_length": 1}),
        ("GET", "/api/extra/version", None),
        ("GET", "/v1/model/list", None),
    ):
        r = httpx.request(method, api + path, json=body, timeout=WAIT_S)
        assert r.status_code == 401, (path, r.status_code)
    key, record = new_api_key("SillyTavern")
    runtime.current().store.set_setting("api_keys", [record])
    auth = {"authorization": f"Bearer {key}"}
    r = post(api + "/completion", {"prompt": "Hi", "n_predict": 1}, headers=auth)
    assert r.status_code == 200 and r.json()["tokens_predicted"] == 1


# ---------------------------------------------------------------------------- KoboldCpp
def sillytavern_kobold(prompt: str, **over: Any) -> dict[str, Any]:
    """What SillyTavern's "KoboldAI Classic" API posts for generation (kai-settings.js
    getKoboldGenerationData with KoboldCpp's flags, as its server forwards it)."""
    body = {
        "prompt": prompt,
        "use_story": False,
        "use_memory": False,
        "use_authors_note": False,
        "use_world_info": False,
        "max_context_length": 8192,
        "max_length": 12,
        "rep_pen": 1.1,
        "rep_pen_range": 600,
        "rep_pen_slope": 0.9,
        "temperature": 0.7,
        "tfs": 1,
        "top_a": 0,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0,
        "typical": 1,
        "sampler_order": [6, 0, 1, 3, 4, 2, 5],
        "singleline": False,
        "use_default_badwordsids": False,
        "mirostat": 0,
        "mirostat_tau": 5,
        "mirostat_eta": 0.1,
        "grammar": "",
        "sampler_seed": 5,
        "stop_sequence": ["\nBob:"],
    }
    return {**body, **over}


def test_kobold_version_checks_and_model(api: str) -> None:
    assert httpx.get(api + "/api/v1/info/version").json()["result"] >= "1.2.2"  # stop sequences
    extra = httpx.get(api + "/api/extra/version").json()
    assert extra["result"] == "KoboldCpp" and extra["version"] >= "1.48"  # streaming, min-p
    post(api + "/api/v1/generate", sillytavern_kobold("Hi", max_length=1))  # loads the model
    assert httpx.get(api + "/api/v1/model").json() == {"result": f"koboldcpp/{TINY}"}
    assert httpx.get(api + "/api/v1/config/max_context_length").json()["value"] >= 1_000_000
    assert httpx.get(api + "/api/v1/config/max_length").json()["value"] >= 1
    # the app's own /api routes are still there, beside them
    assert httpx.get(api + "/api/characters").status_code == 200


def test_kobold_generate_whole_and_streamed(api: str) -> None:
    body = sillytavern_kobold(PROMPT)
    r = post(api + "/api/v1/generate", body)
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert result["finish_reason"] in ("stop", "length") and 1 <= result["completion_tokens"] <= 12
    v1 = post(api + "/v1/completions", {"prompt": PROMPT, **{k: body[k] for k in SAMPLING}})
    assert v1.json()["choices"][0]["text"] == result["text"]  # the same engine and sampling
    s = post(api + "/api/extra/generate/stream", body)
    assert s.headers["content-type"].startswith("text/event-stream")
    assert all(block.startswith("event: message\n") for block in s.text.strip().split("\n\n"))
    got = events(s.text)
    assert "".join(e["token"] for e in got) == result["text"]
    assert got[-1]["finish_reason"] == result["finish_reason"]
    assert all(e["finish_reason"] is None for e in got[:-1])
    count = post(api + "/api/extra/tokencount", {"prompt": PROMPT}).json()
    ids = post(api + "/tokenize", {"content": PROMPT}).json()["tokens"]
    assert count == {"value": len(ids), "ids": ids}


SAMPLING = ("max_length", "rep_pen", "temperature", "top_k", "top_p", "min_p", "sampler_seed")


def test_kobold_abort_stops_a_running_generation(api: str) -> None:
    post(api + "/api/v1/generate", sillytavern_kobold("Hi", max_length=1))  # loads the model
    eng = runtime.current().engine()
    eos = eng.backend.eos_token()
    no_end = {
        str(t): -100 for t in range(eng.info.n_vocab) if b"\n" in eng.raw_backend.token_bytes(t)
    }
    if eos is not None:
        no_end[str(eos)] = -100
    body = sillytavern_kobold(PROMPT, max_length=8000, stop_sequence=[], logit_bias=no_end)
    out: dict[str, httpx.Response] = {}
    worker = threading.Thread(
        target=lambda: out.setdefault("r", post(api + "/api/v1/generate", body))
    )
    worker.start()
    deadline = time.monotonic() + WAIT_S
    aborted = False
    while not aborted and time.monotonic() < deadline:  # until it has started and is stopped
        aborted = post(api + "/api/extra/abort").json()["done"] == "true"
        time.sleep(0.05)
    worker.join(WAIT_S)
    assert aborted
    result = out["r"].json()["results"][0]
    assert result["finish_reason"] == "stop" and result["completion_tokens"] < 8000
    assert post(api + "/api/extra/abort").json() == {"success": "true", "done": "false"}


# ---------------------------------------------------------------------------- TabbyAPI
def test_tabby_status_check_and_tokens(api: str) -> None:
    """SillyTavern's "TabbyAPI" type checks /v1/model/list, then /v1/model; before these were
    served its check got a 404 and hung until it timed out (issue 23)."""
    listed = httpx.get(api + "/v1/model/list", timeout=WAIT_S).json()
    assert [m["id"] for m in listed["data"]] == [TINY]  # the file chosen, loading meanwhile
    post(api + "/completion", sillytavern_llamacpp("Hi", n_predict=1))  # loads the model
    assert httpx.get(api + "/v1/model/list").json()["data"][0]["id"] == TINY
    card = httpx.get(api + "/v1/model").json()
    assert card["id"] == TINY and card["parameters"]["max_seq_len"] >= 1_000_000
    enc = post(api + "/v1/token/encode", {"text": "Hello there"}).json()
    assert enc["length"] == len(enc["tokens"]) >= 2
    assert post(api + "/v1/token/decode", {"tokens": enc["tokens"]}).json() == {
        "text": "Hello there"
    }
    # the OpenAI model routes are unchanged beside them
    assert httpx.get(api + f"/v1/models/{TINY}").json()["id"] == TINY
