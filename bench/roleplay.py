"""Role-play quality of what the app does: scripted user turns over the bundled characters.

    python bench/roleplay.py                 # embedded model, 3 seeds, replies capped at 80 tokens
    python bench/roleplay.py --seeds 1 --max-tokens 40

Every reply goes through the chat service (`core.runtime` / `ChatService`) on a fresh temporary
data directory seeded with the bundled characters (data/characters/), so it measures the app's
own prompt, presets, stops and cleaning, not a bare model call. For each bundled character and
each seed: a new chat (its greeting), then 10 scripted user turns (English for the English
characters, Chinese for the Chinese one), each answered by the character, plus one Narrator line
after the fifth turn. The seed is set as the chat's sampling seed (Settings -> the chat's seed),
on top of the sampling the app gives a new chat (or `--preset NAME`'s, to compare presets).

Prints ONE JSON object. Each `*_pct` is a percentage of all replies generated (character and
Narrator replies alike):

- `clean_ending_pct`: the reply ended by itself (stop reason "stop" or "eos", not the token
  limit, not empty) and its text ends with a sentence-ending character: one of
  . ! ? … ~ * " ' ” ’ ) ] 」 』 ） 。 ！ ？ ～ (after trailing whitespace).
- `user_line_attempt_pct`: the model started to write the user's line: the reply ended at the
  stop string of the user's name (`\nName:` or `\nName：`; the reply's start counts as a line
  start). Read from the stop string that ended the reply, before trimming: the stop scanner
  cuts that line, so the text saved never shows it.
- `user_line_pct`: what reached the user after trimming: some line of the saved reply starts
  (after spaces, `*`, `(` or quotes) with the user's name followed by ":" or "：". The stop
  scanner makes this 0 unless the name comes after something else on a line's start (`*`, a
  quote), so read it with `user_line_attempt_pct`.
- `turn_marker_stop_pct`: the reply ended at a prompt-format marker (ChatML's `<|im_start|>`,
  `<|im_end|>` or `<|endoftext|>` written as text): the model opened a new turn, whoever's.
- `stops`: how many replies each stop string ended (the user's name written `{user}`).
- `empty_pct`: nothing was kept (the saved text is empty after stripping).
- `length_cut_pct`: the reply hit `max_tokens` (stop reason "length").
- `repeat_opening_pct`: the reply's first 16 characters (whitespace collapsed, case folded; the
  whole text when shorter, and at least 4 characters) equal the first 16 characters of an earlier
  generated reply of the same chat.
- `template_leak_pct`: the reply contains prompt-format or instruction text: a ChatML marker
  (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`, `im_start`, `im_end`), an unreplaced `{{...}}`
  macro or `<START>`, or one of the opening's instruction phrases ("AI assistant", "You are
  <character>", "Stay in character", "Write only", "Example dialogue:", "Scenario:",
  "'s personality:", "About <user>:", "role play with").

Also: `narrator_template_leak_pct` (the same over Narrator replies only), counts, the model and
the settings.

Then group chats (`group`): for each seed, a group chat of all the bundled characters (natural
order), one user message, then the auto mode ("Let them talk") for `--group-turns` turns, each
member's reply through `ChatService.reply_as` and its guard (`Turn.retry`), as the Chat page
runs them. Over the members' replies as kept:

- `verbatim_repeat_pct`: the reply's text (whitespace collapsed, case folded; at least 4 words)
  equals one of the 10 messages before it: a line posted again word for word (issue 23).
- `near_repeat_pct`: the reply repeats one of them word for word or nearly, by the guard's own
  rule (core.roleplay.group.repeats).
- `regenerated_pct`: replies the guard made again (and `regenerated` how many).
- `longest_speaker_run`: the most turns in a row one member got.

`--group-ablate` also runs the same chats without DRY (multiplier 0) and without the guard
(`group_without_dry_and_guard`), in the same run, for a comparison on the same machine. Runs on
the CPU, slowly on a small one: the group chats alone (`--turns 0 --seeds 2 --group-turns 8
--max-tokens 48 --group-ablate`, 2 x 16 members' replies) took 18 minutes on 2 shared cores at a
load average of 10. In that run no reply repeated a recent message, with DRY and the guard or
without them: the embedded model did not parrot there, so that run could not show the guard's
effect.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EN_TURNS = [
    "Hello! Sorry to barge in like this. Who are you?",
    "What is this place? I have never been here before.",
    "Can you tell me something about yourself?",
    "That sounds lonely. Do you ever get visitors?",
    "I brought some bread and cheese. Would you like to share it?",
    "What is the strangest thing that ever happened to you here?",
    "I don't believe you. Tell me the truth.",
    "Alright, alright. What should we do now?",
    "Listen... did you hear that noise outside?",
    "It's getting late. Thank you for today, I should go.",
]
ZH_TURNS = [
    "你好！外面雨好大，我可以进来躲一会儿吗？",
    "这家店开了很久了吗？",
    "你能给我推荐一本书吗？",
    "这只猫叫什么名字？它好可爱。",
    "你平时一个人看店不会无聊吗？",
    "我小时候也很喜欢读诗，尤其是李白的。",
    "说真的，你为什么要守着这家旧书店？",
    "雨好像小了一点。我们接下来做什么？",
    "你听，外面是不是有人在敲门？",
    "天色不早了，谢谢你的茶，我该走了。",
]
NARRATOR_AFTER = 5  # a Narrator line after this many user turns

TURN_MARKERS = {"<|im_start|>", "<|im_end|>", "<|endoftext|>"}
END_CHARS = set(".!?…~*\"'”’)]」』）。！？～")
OPENING_N = 16


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=80)
    ap.add_argument("--turns", type=int, default=10, help="user turns per chat (at most 10)")
    ap.add_argument("--model", default="", help="a model file (default: the embedded model)")
    ap.add_argument("--samples", type=int, default=0, help="also print N sample replies")
    ap.add_argument(
        "--preset", default="", help="a sampling preset for every chat (default: the app's own)"
    )
    ap.add_argument(
        "--group-turns", type=int, default=12, help="auto-mode turns per group chat (0: none)"
    )
    ap.add_argument(
        "--group-ablate",
        action="store_true",
        help="also run the group chats without DRY and without the repeat guard",
    )
    return ap.parse_args()


def is_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def clean_ending(text: str, stop_reason: str) -> bool:
    text = text.rstrip()
    return bool(text) and stop_reason in ("stop", "eos") and text[-1] in END_CHARS


def user_line(text: str, user: str) -> bool:
    pat = re.compile(r"^[\s*(\"'“「（]*" + re.escape(user) + r"\s*[:：]", re.MULTILINE)
    return bool(user) and bool(pat.search(text))


def opening(text: str) -> str:
    return " ".join(text.split()).casefold()[:OPENING_N]


def template_leak(text: str, char: str, user: str) -> bool:
    low = text.casefold()
    needles = [
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "im_start",
        "im_end",
        "<start>",
        "ai assistant",
        f"you are {char}".casefold(),
        "stay in character",
        "write only",
        "example dialogue:",
        "scenario:",
        "'s personality:",
        f"about {user}:".casefold(),
        "role play with",
    ]
    return any(n in low for n in needles) or bool(re.search(r"\{\{[^}]*\}\}", text))


GROUP_OPENING = "Hello, everyone! I just arrived. What are you all doing here?"
RECENT = 10  # messages before a reply that it is compared with (the guard's REPEAT_RECENT)


def verbatim(text: str) -> str:
    return " ".join(text.split()).casefold()


def group_chats(svc: Any, args: argparse.Namespace, ablate: bool) -> dict[str, Any]:
    """The auto mode of a group of every bundled character, one chat per seed (see the module's
    docstring); with `ablate`, without DRY and without the guard."""
    import random

    from core.roleplay.group import repeats

    store = svc.store
    ids = [c.id for c in store.list_characters()]
    rows: list[dict[str, Any]] = []
    runs: list[int] = []
    for seed in range(1, args.seeds + 1):
        conv = svc.new_group_chat(ids)
        svc.set_group(conv.id, auto_turns=min(args.group_turns, 50))
        base = dict(conv.sampling or {})
        values = {**base, "seed": seed, "max_tokens": args.max_tokens}
        if ablate:
            values["dry_multiplier"] = 0.0
        svc.set_sampling(conv.id, values, "custom" if ablate else str(base.get("preset", "")))
        svc.send(conv.id, GROUP_OPENING)
        rng = random.Random(seed)
        auto = svc.start_auto(conv.id)
        run, last_who = 0, None
        while True:
            auto, who = svc.auto_turn(auto, rng)
            if auto is None or who is None:
                break
            turn = svc.reply_as(conv.id, who, guard=not ablate).consume()
            again = turn.retry()
            if again is not None:
                again.consume()
            messages = store.list_messages(conv.id)
            kept = messages[-1].text if messages and messages[-1].role == "char" else ""
            earlier = [m.text for m in messages[-1 - RECENT : -1]]
            flat = verbatim(kept)
            rows.append(
                {
                    "verbatim": len(flat.split()) >= 4 and flat in {verbatim(e) for e in earlier},
                    "near": repeats(kept, earlier),
                    "regenerated": again is not None,
                }
            )
            run = run + 1 if who == last_who else 1
            last_who = who
            runs.append(run)
            if not kept.strip():  # nothing said: the auto mode ends (the chat did not grow)
                break
    n = len(rows)
    return {
        "verbatim_repeat_pct": pct(sum(r["verbatim"] for r in rows), n),
        "near_repeat_pct": pct(sum(r["near"] for r in rows), n),
        "regenerated_pct": pct(sum(r["regenerated"] for r in rows), n),
        "regenerated": sum(r["regenerated"] for r in rows),
        "longest_speaker_run": max(runs, default=0),
        "replies": n,
        "chats": args.seeds,
        "turns_per_chat": args.group_turns,
        "dry": not ablate,
        "guard": not ablate,
    }


def pct(n: int, total: int) -> float:
    return round(100.0 * n / total, 1) if total else 0.0


def main() -> None:
    args = parse_args()
    tmp = tempfile.mkdtemp(prefix="rp-bench-")
    os.environ["RP_DATA_DIR"] = tmp
    os.environ.pop("RP_DB_URL", None)
    os.environ["HF_HUB_OFFLINE"] = "1"

    from core import runtime
    from core.runtime import ModelChoice

    rt = runtime.current()
    store = rt.store  # opened and seeded with the bundled characters
    t_load = time.perf_counter()
    engine = rt.load(ModelChoice(path=args.model))
    load_s = time.perf_counter() - t_load
    svc = rt.chat
    characters = store.list_characters()
    rows: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for character in characters:
        zh = is_chinese(character.name + " ".join(character.greetings))
        turns = (ZH_TURNS if zh else EN_TURNS)[: args.turns]
        for seed in range(1, args.seeds + 1):
            conv = svc.new_chat(character.id)
            if args.preset:
                svc.set_sampling(conv.id, svc.preset_sampling(args.preset), args.preset)
                conv = svc.conversation(conv.id)
            base = dict(conv.sampling or {})
            values = {**base, "seed": seed, "max_tokens": args.max_tokens}
            svc.set_sampling(conv.id, values, str(base.get("preset", "")))
            conv = svc.conversation(conv.id)
            user = conv.user_name or "User"
            openings: list[str] = []
            plan: list[tuple[str, str]] = []
            for i, text in enumerate(turns):
                plan.append(("char", text))
                if i + 1 == NARRATOR_AFTER:
                    plan.append(("narrator", ""))
            for role, text in plan:
                if role == "char":
                    svc.send(conv.id, text)
                turn = svc.reply(conv.id, "new", role=role).consume()
                res = turn.result
                kept = turn.message.text if turn.message is not None else ""
                stop = res.stop_reason if res is not None else "error"
                # the stop string that ended it: what the model tried to write next
                tried = (res.stop_string or "") if res is not None and stop == "stop" else ""
                op = opening(kept)
                repeat = len(op) >= 4 and any(op == o for o in openings)
                if kept.strip():
                    openings.append(op)
                row = {
                    "role": role,
                    "clean": clean_ending(kept, stop),
                    "user_line": user_line(kept, user),
                    "user_line_attempt": tried in (f"\n{user}:", f"\n{user}："),
                    "turn_marker": tried.strip() in TURN_MARKERS,
                    "stop_string": tried.replace(user, "{user}") if tried else None,
                    "empty": not kept.strip(),
                    "length": stop == "length",
                    "repeat": repeat,
                    "leak": template_leak(kept, character.name, user),
                }
                rows.append(row)
                if len(samples) < args.samples:
                    samples.append(
                        {
                            "char": character.name,
                            "seed": seed,
                            "role": role,
                            "stop": stop,
                            "text": kept,
                        }
                    )
    elapsed = time.perf_counter() - t0
    t_group = time.perf_counter()
    groups = group_chats(svc, args, ablate=False) if args.group_turns > 0 else None
    ablated = group_chats(svc, args, ablate=True) if args.group_ablate and groups else None
    group_s = time.perf_counter() - t_group
    n = len(rows)
    narr = [r for r in rows if r["role"] == "narrator"]
    out: dict[str, Any] = {
        "clean_ending_pct": pct(sum(r["clean"] for r in rows), n),
        "user_line_attempt_pct": pct(sum(r["user_line_attempt"] for r in rows), n),
        "user_line_pct": pct(sum(r["user_line"] for r in rows), n),
        "turn_marker_stop_pct": pct(sum(r["turn_marker"] for r in rows), n),
        "empty_pct": pct(sum(r["empty"] for r in rows), n),
        "length_cut_pct": pct(sum(r["length"] for r in rows), n),
        "repeat_opening_pct": pct(sum(r["repeat"] for r in rows), n),
        "template_leak_pct": pct(sum(r["leak"] for r in rows), n),
        "narrator_template_leak_pct": pct(sum(r["leak"] for r in narr), len(narr)),
        "stops": dict(Counter(r["stop_string"] for r in rows if r["stop_string"]).most_common()),
        "preset": args.preset or "the model's own",
        "replies": n,
        "narrator_replies": len(narr),
        "characters": [c.name for c in characters],
        "seeds": args.seeds,
        "max_tokens": args.max_tokens,
        "model": Path(engine.info.path).name if engine.info.path else "embedded",
        "sampling": {
            k: v for k, v in (svc.conversation(conv.id).sampling or {}).items() if k != "seed"
        },
        "load_s": round(load_s, 2),
        "elapsed_s": round(elapsed, 1),
        "group_elapsed_s": round(group_s, 1),
    }
    if groups is not None:
        out["group"] = groups
    if ablated is not None:
        out["group_without_dry_and_guard"] = ablated
    if samples:
        out["samples"] = samples
    print(json.dumps(out, ensure_ascii=False))
    engine.close()


if __name__ == "__main__":
    main()
