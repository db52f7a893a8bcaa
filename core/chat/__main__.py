"""Chats from the command line.

    python -m core.chat prompt CHAT_ID [--message ID] [--json]

`prompt` prints what the model saw for a reply (the chat's last reply by default; `--message`
picks another, `--next` the prompt of the chat's next reply): the exact prompt text, then how many
of its tokens came from the state cache. It works on the data directory of $RP_DATA_DIR (and
$RP_DB_URL), like the app.

The prompt's text depends on the model (its prompt format, its tokenizer for the counts), so the
model the app would use is loaded first (the Settings choice, else $RP_MODEL, else the embedded
model: a few seconds for the embedded one). Nothing is generated and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys

from core.errors import AppError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.chat", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prompt", help="what the model saw for a reply")
    p.add_argument("chat_id", type=int, help="the chat's id (the number in ?chat=ID)")
    p.add_argument("--message", type=int, default=None, help="the reply's message id")
    p.add_argument("--next", action="store_true", help="the prompt of the next reply")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = ap.parse_args(argv)

    from core import runtime

    rt = runtime.current()
    try:
        svc = rt.chat
        svc.conversation(args.chat_id)  # a clear message for a chat that does not exist
        message_id = args.message
        if message_id is None and not args.next:
            replies = [m for m in rt.store.list_messages(args.chat_id) if m.role != "user"]
            if not replies:
                print("This chat has no reply yet; showing the prompt of its next reply.")
            message_id = replies[-1].id if replies else None
        rt.load()
        view = svc.prompt_view(args.chat_id, message_id)
    except AppError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(view.to_dict(), ensure_ascii=False))
        return 0
    print(view.text)
    print("-" * 40)
    if view.fed_tokens is None:
        print(f"{view.prompt_tokens} prompt tokens (cache use not recorded for this message)")
    else:
        print(
            f"{view.prompt_tokens} prompt tokens: {view.cached_tokens} from the cache, "
            f"{view.fed_tokens} fed for this reply"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
