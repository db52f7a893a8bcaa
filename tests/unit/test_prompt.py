"""The role-play prompt text: order, substitution, newlines, names."""

from __future__ import annotations

from core.prompt import CharacterContext, Message, RoleplayFormat, normalize, substitute


def _ctx(**kw) -> CharacterContext:
    base = dict(
        name="小雪",
        user_name="阿明",
        persona="{{char}} is a cat who lives with {{user}}.\n\n\nShe likes fish.",
        example_dialogue="<START>\n{{user}}: Hi\n{{char}}: Meow!\nShe purrs.\n{{user}}: Good cat",
    )
    base.update(kw)
    return CharacterContext(**base)


def test_opening_is_examples_then_persona_with_names_substituted() -> None:
    fmt = RoleplayFormat()
    ctx = _ctx()
    assert fmt.opening(ctx) == (
        "阿明: Hi\n\n小雪: Meow!\nShe purrs.\n\n阿明: Good cat\n\n"
        "小雪 is a cat who lives with 阿明.\nShe likes fish.\n\n"
    )


def test_messages_and_final_header_have_no_space_after_the_name() -> None:
    fmt = RoleplayFormat()
    ctx = _ctx(example_dialogue="", persona="")
    msgs = [Message("char", "Hello {{user}}!"), Message("user", "hi\n\n\nthere")]
    text = "".join(fmt.header(m, ctx) + fmt.body(m.text, m, ctx) for m in msgs)
    text += fmt.header(Message("char"), ctx)
    assert text == "小雪: Hello 阿明!\n\n阿明: hi\nthere\n\n小雪:"
    assert fmt.opening(ctx) == ""


def test_messages_never_contain_a_blank_line() -> None:
    assert normalize("a\r\n\r\nb\n \n\nc\n") == "a\nb\nc"
    assert "\n\n" not in RoleplayFormat().body("x\n\n\ny", Message("user"), _ctx())[:-2]


def test_default_names_and_narrator() -> None:
    fmt = RoleplayFormat()
    ctx = CharacterContext()
    assert fmt.header(Message("user"), ctx) == "User:"
    assert fmt.header(Message("char"), ctx) == "Assistant:"
    assert fmt.header(Message("narrator"), ctx) == "Narrator:"
    assert fmt.header(Message("user", name="Bob"), ctx) == "Bob:"


def test_stop_strings_cover_other_speakers_and_custom_stops() -> None:
    fmt = RoleplayFormat()
    ctx = _ctx(stop_strings=["###"])
    stops = fmt.stop_strings(Message("char"), ctx, ["Guard"])
    assert "\n\n" in stops and "\n阿明:" in stops and "\n阿明：" in stops
    assert "\nNarrator:" in stops and "\nGuard:" in stops and "###" in stops
    assert "\n小雪:" not in stops  # a character may mention its own name on a new line


def test_substitute_is_case_insensitive_and_literal() -> None:
    assert substitute("{{Char}} & {{USER}} <BOT>", "A\\1", "B") == "A\\1 & B A\\1"
