"""Stop detection and safe streaming on crafted outputs, token bytes of the real vocabulary."""

from __future__ import annotations

from core.backends.tokenizer import world_tokenizer
from core.engine.stops import StopScanner

STOPS = ["\n\n", "\nUser:", "\nUser：", "\nNarrator:"]


def _run(pieces: list[bytes], stops: list[str] = STOPS) -> tuple[list[str], StopScanner]:
    sc = StopScanner(stops)
    shown = []
    for p in pieces:
        shown.append(sc.push(p))
        if sc.stopped:
            break
    return shown, sc


def _tokens(text: str) -> list[bytes]:
    tok = world_tokenizer()
    return [tok.token_bytes(i) for i in tok.encode(text)]


def test_chinese_full_stop_newline_then_newline_stops() -> None:
    pieces = _tokens(" 你好。\n\n后面不该出现")
    assert b"\n\n" not in pieces  # the blank line comes as "。\n" + "\n", not token 261
    shown, sc = _run(pieces)
    assert sc.stopped and sc.final_text() == "你好。"
    assert "".join(shown) == "你好。"


def test_a_line_in_the_users_name_stops_the_reply() -> None:
    shown, sc = _run(_tokens(" Sure, I can help.\nUser: now I speak for the user"))
    assert sc.final_text() == "Sure, I can help."
    assert "User" not in "".join(shown)


def test_stop_string_split_across_tokens_is_never_shown() -> None:
    pieces = [b" Hi", b" there", b"\n", b"Us", b"er", b": hack"]
    shown, sc = _run(pieces)
    assert sc.stopped and sc.stop_string == "\nUser:"
    assert "".join(shown) == "Hi there" and sc.final_text() == "Hi there"


def test_a_prefix_that_turns_out_not_to_be_a_stop_is_shown_later() -> None:
    shown, sc = _run([b" one", b"\n", b"Use", b" it well", b"\n\n"])
    assert "".join(shown) == "one\nUse it well" == sc.final_text()


def test_half_utf8_character_is_held_back_and_dropped_at_the_end() -> None:
    emoji = "🎉".encode()
    shown, sc = _run([b" ok ", emoji[:2]])
    assert "".join(shown) == "ok" and "\ufffd" not in "".join(shown)
    assert sc.final_text() == "ok"
    shown2, sc2 = _run([b" ok ", emoji[:2], emoji[2:], b"!"])
    assert "".join(shown2) == "ok 🎉!" == sc2.final_text()


def test_custom_stop_and_whitespace_trimming() -> None:
    shown, sc = _run([b"  Well", b"  ", b"###", b"more"], STOPS + ["###"])
    assert sc.final_text() == "Well" and "".join(shown) == "Well"


def test_streamed_pieces_always_add_up_to_the_kept_text() -> None:
    text = " 小雪看着你。\n她笑了：“好呀！”🎉\n\nUser: x"
    shown, sc = _run(_tokens(text))
    assert "".join(shown) == sc.final_text() == "小雪看着你。\n她笑了：“好呀！”🎉"


def test_a_reply_that_opens_with_another_speakers_name_ends_there() -> None:
    shown, sc = _run([b" Us", b"er", b": I speak for you"])
    assert sc.stopped and sc.final_text() == "" and "".join(shown) == ""


def test_a_reply_that_repeats_its_own_name_loses_it() -> None:
    sc = StopScanner(STOPS, strip_prefixes=["Mia:", "Mia："])
    shown = [sc.push(p) for p in (b" Mi", b"a", b":", b" Hello", b" there", b"\n\n")]
    assert "".join(shown) == "Hello there" == sc.final_text()
    other = StopScanner(STOPS, strip_prefixes=["Mia:"])
    assert other.push(b" Mi") == "" and other.push(b"ke waves") == "Mike waves"
