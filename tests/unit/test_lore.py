"""Lorebook activation as SillyTavern does it (core/lore.py), on a table of cases, and the World
Info / V2 character_book formats both ways."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.roleplay.lore import (
    AND_ALL,
    AND_ANY,
    DEFAULT_BUDGET,
    MAX_ENTRIES,
    NOT_ALL,
    NOT_ANY,
    Book,
    LoreError,
    activate,
    add_entry,
    apply_rows,
    entry_row,
    export_world_info,
    filter_entries,
    from_character_book,
    new_entry,
    parse_world_info,
    split_keys,
    to_character_book,
)


def fired(entries: list[dict[str, Any]], messages: list[str], settings=None, **kw) -> list[str]:
    """The comments of the entries that fire, in the order they are fed."""
    book = Book("book", [new_entry(i, **e) for i, e in enumerate(entries)], settings or {})
    return [f.title for f in activate([book], messages, **kw).fired]


E = dict  # an entry's fields, for the table

CASES: list[tuple[str, list[dict], list[str], dict, list[str]]] = [
    # (case, entries, messages, book settings, what fires)
    ("plain key", [E(comment="a", key=["dragon"])], ["A Dragon appears"], {}, ["a"]),
    ("no key found", [E(comment="a", key=["dragon"])], ["a cat"], {}, []),
    ("any primary key", [E(comment="a", key=["x1", "cat"])], ["a cat"], {}, ["a"]),
    ("no keys never fires", [E(comment="a", key=[])], ["anything"], {}, []),
    (
        "case sensitive entry",
        [E(comment="a", key=["Dragon"], caseSensitive=True)],
        ["a dragon"],
        {},
        [],
    ),
    (
        "case sensitive book",
        [E(comment="a", key=["Dragon"])],
        ["dragon"],
        {"case_sensitive": True},
        [],
    ),
    (
        "entry overrides book case",
        [E(comment="a", key=["Dragon"], caseSensitive=False)],
        ["dragon"],
        {"case_sensitive": True},
        ["a"],
    ),
    ("substring without whole words", [E(comment="a", key=["cat"])], ["concatenate"], {}, ["a"]),
    (
        "whole words",
        [E(comment="a", key=["cat"], matchWholeWords=True)],
        ["concatenate"],
        {},
        [],
    ),
    (
        "whole words match a word",
        [E(comment="a", key=["cat"], matchWholeWords=True)],
        ["the cat."],
        {},
        ["a"],
    ),
    (
        "whole words inherited",
        [E(comment="a", key=["cat"])],
        ["concatenate"],
        {"match_whole_words": True},
        [],
    ),
    (
        "several words searched as is",
        [E(comment="a", key=["big cat"], matchWholeWords=True)],
        ["a big catalogue"],
        {},
        ["a"],
    ),
    ("regex key", [E(comment="a", key=[r"/dra+gon/"])], ["draaagon"], {}, ["a"]),
    ("regex is case sensitive", [E(comment="a", key=[r"/dragon/"])], ["DRAGON"], {}, []),
    ("regex flag i", [E(comment="a", key=[r"/dragon/i"])], ["DRAGON"], {}, ["a"]),
    ("js named group", [E(comment="a", key=[r"/(?<w>ab)c/"])], ["xabc"], {}, ["a"]),
    ("bad regex skipped", [E(comment="a", key=["/(/", "cat"])], ["cat"], {}, ["a"]),
    # secondary keys
    *[
        (
            f"logic {name} {msg!r}",
            [E(comment="a", key=["king"], keysecondary=["crown", "sword"], selectiveLogic=logic)],
            [msg],
            {},
            want,
        )
        for name, logic, msg, want in [
            ("AND_ANY", AND_ANY, "king crown", ["a"]),
            ("AND_ANY", AND_ANY, "king", []),
            ("NOT_ALL", NOT_ALL, "king crown", ["a"]),
            ("NOT_ALL", NOT_ALL, "king crown sword", []),
            ("NOT_ANY", NOT_ANY, "king", ["a"]),
            ("NOT_ANY", NOT_ANY, "king sword", []),
            ("AND_ALL", AND_ALL, "king crown sword", ["a"]),
            ("AND_ALL", AND_ALL, "king crown", []),
        ]
    ],
    (
        "secondary keys ignored when not selective",
        [E(comment="a", key=["king"], keysecondary=["crown"], selective=False)],
        ["king"],
        {},
        ["a"],
    ),
    # depth
    ("depth 2 sees two messages", [E(comment="a", key=["old"])], ["old", "x", "y"], {}, []),
    ("depth 2: second last", [E(comment="a", key=["old"])], ["old", "x"], {}, ["a"]),
    ("book depth", [E(comment="a", key=["old"])], ["old", "x", "y"], {"scan_depth": 3}, ["a"]),
    ("entry depth", [E(comment="a", key=["old"], scanDepth=3)], ["old", "x", "y"], {}, ["a"]),
    ("depth 0 sees nothing", [E(comment="a", key=["x"])], ["x"], {"scan_depth": 0}, []),
    # constant, disabled, order
    ("constant", [E(comment="a", constant=True)], ["nothing"], {}, ["a"]),
    ("disabled", [E(comment="a", key=["x"], disable=True)], ["x"], {}, []),
    ("disabled constant", [E(comment="a", constant=True, disable=True)], ["x"], {}, []),
    (
        "larger order goes later",
        [E(comment="late", key=["x"], order=200), E(comment="early", key=["x"], order=10)],
        ["x"],
        {},
        ["early", "late"],
    ),
    # recursion
    (
        "no recursion by default",
        [E(comment="a", key=["x"], content="see moon"), E(comment="b", key=["moon"])],
        ["x"],
        {},
        ["a"],
    ),
    (
        "recursion",
        [E(comment="a", key=["x"], content="see moon"), E(comment="b", key=["moon"])],
        ["x"],
        {"recursive": True},
        ["a", "b"],
    ),
    (
        "recursion chain",
        [
            E(comment="a", key=["x"], content="see moon", order=1),
            E(comment="b", key=["moon"], content="see sun", order=2),
            E(comment="c", key=["sun"], order=3),
        ],
        ["x"],
        {"recursive": True},
        ["a", "b", "c"],
    ),
    (
        "exclude recursion",
        [
            E(comment="a", key=["x"], content="see moon"),
            E(comment="b", key=["moon"], excludeRecursion=True),
        ],
        ["x"],
        {"recursive": True},
        ["a"],
    ),
    (
        "prevent recursion",
        [
            E(comment="a", key=["x"], content="see moon", preventRecursion=True),
            E(comment="b", key=["moon"]),
        ],
        ["x"],
        {"recursive": True},
        ["a"],
    ),
    (
        "delay until recursion",
        [
            E(comment="a", key=["x"], content="see moon", order=1),
            E(comment="b", key=["moon"], delayUntilRecursion=True, order=2),
        ],
        ["x"],
        {"recursive": True},
        ["a", "b"],
    ),
    (
        "delayed entry without recursion to wake it",
        [
            E(comment="a", key=["x"], content="see", preventRecursion=True),
            E(comment="b", key=["moon"], delayUntilRecursion=True),
        ],
        ["x moon"],
        {"recursive": True},
        ["a"],
    ),
    # probability
    ("probability 0", [E(comment="a", key=["x"], probability=0)], ["x"], {}, []),
    (
        "probability off",
        [E(comment="a", key=["x"], probability=0, useProbability=False)],
        ["x"],
        {},
        ["a"],
    ),
]


@pytest.mark.parametrize(
    ("entries", "messages", "settings", "want"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_activation(entries, messages, settings, want) -> None:
    assert fired(entries, messages, settings) == want


def test_a_bad_regex_is_noted_not_raised() -> None:
    book = Book("b", [new_entry(0, key=["/[unclosed/"], comment="a")])
    res = activate([book], ["[unclosed"])
    assert res.fired == []
    assert len(res.errors) == 1 and "[unclosed" in res.errors[0]


def test_macros_in_keys_and_content() -> None:
    book = Book("b", [new_entry(0, key=["{{char}}'s sword"], content="{{user}} knows it")])
    res = activate([book], ["Ada's sword glows"], char="Ada", user="Bob")
    assert res.text() == "Bob knows it"


def test_probability_is_reproducible_with_a_seed() -> None:
    entries = [new_entry(i, key=["x"], comment=str(i), probability=50) for i in range(40)]

    def run(seed: int) -> list[str]:
        return [f.title for f in activate([Book("b", entries)], ["x"], seed=seed).fired]

    first = run(7)
    assert run(7) == first
    assert 5 < len(first) < 35  # about half fire
    assert any(run(s) != first for s in range(8, 12))


def test_token_budget_keeps_the_strongest_entries() -> None:
    # each entry costs 10 tokens by this counter; the budget holds two
    entries = [new_entry(i, key=["x"], comment=f"o{i}", order=i, content="c") for i in range(4)]
    res = activate([Book("b", entries)], ["x"], budget=20, count_tokens=lambda t: 10)
    assert [f.title for f in res.fired] == ["o2", "o3"]  # the two largest orders, fed in order
    assert sorted(f.title for f in res.left_out) == ["o0", "o1"]


def test_budget_from_book_settings_and_estimate() -> None:
    entries = [new_entry(i, key=["x"], order=i, content="y" * 30) for i in range(5)]  # 10 each
    res = activate([Book("b", entries, {"token_budget": 25})], ["x"])
    assert len(res.fired) == 2
    assert len(activate([Book("b", entries)], ["x"]).fired) == 5  # default
    assert DEFAULT_BUDGET >= 50


def test_ignore_budget() -> None:
    entries = [
        new_entry(0, key=["x"], order=5, content="a", ignoreBudget=True),
        new_entry(1, key=["x"], order=1, content="b"),
    ]
    res = activate([Book("b", entries)], ["x"], budget=1, count_tokens=lambda t: 5)
    assert [f.uid for f in res.fired] == [0]


# --- files ----------------------------------------------------------------------------------

# a World Info file as SillyTavern writes it (every field it knows, one unknown)
ST_ENTRY = {
    "uid": 0,
    "key": ["castle", "/tow(er|n)/i"],
    "keysecondary": ["night"],
    "comment": "The castle",
    "content": "The castle stands on a hill.",
    "constant": False,
    "vectorized": False,
    "selective": True,
    "selectiveLogic": 3,
    "addMemo": True,
    "order": 150,
    "position": 1,
    "disable": False,
    "excludeRecursion": False,
    "preventRecursion": True,
    "delayUntilRecursion": False,
    "probability": 80,
    "useProbability": True,
    "depth": 4,
    "group": "places",
    "groupOverride": False,
    "groupWeight": 100,
    "scanDepth": 5,
    "caseSensitive": True,
    "matchWholeWords": None,
    "useGroupScoring": None,
    "automationId": "",
    "role": None,
    "sticky": 0,
    "cooldown": 0,
    "delay": 0,
    "ignoreBudget": False,
    "displayIndex": 0,
    "futureField": {"kept": [1, 2]},
}
ST_FILE = {
    "entries": {"0": ST_ENTRY, "7": {**ST_ENTRY, "uid": 7, "key": ["moat"], "constant": True}},
    "originalData": {"name": "from a card"},
}


def test_world_info_round_trip_is_exact() -> None:
    book = parse_world_info(json.dumps(ST_FILE).encode(), "Castle")
    assert [e["uid"] for e in book.entries] == [0, 7]
    assert book.name == "Castle"
    assert export_world_info(book) == ST_FILE


def test_world_info_minimal_file_round_trips_to_an_equivalent_one() -> None:
    data = {"entries": {"3": {"uid": 3, "key": "a, b", "content": "x"}}}
    book = parse_world_info(data)
    out = export_world_info(book)
    assert out["entries"]["3"]["key"] == ["a", "b"]
    assert out["entries"]["3"]["content"] == "x"
    assert out["entries"]["3"]["order"] == 100  # SillyTavern's default, filled in
    assert export_world_info(parse_world_info(json.dumps(out))) == out


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\xff\xfe garbage", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", 'no "entries"'),
        (b'{"entries": 5}', "must be an object"),
        (b'{"entries": {"0": "text"}}', "Entry 0 is not a JSON object"),
        (b'{"name": "x"}', 'no "entries"'),
    ],
)
def test_malformed_files_get_a_sentence(data: bytes, says: str) -> None:
    with pytest.raises(LoreError, match=says):
        parse_world_info(data)


def test_character_book_both_ways() -> None:
    v2 = {
        "name": "Book",
        "scan_depth": 4,
        "token_budget": 300,
        "recursive_scanning": True,
        "extensions": {"x": 1},
        "entries": [
            {
                "id": 1,
                "keys": ["glade"],
                "secondary_keys": ["moon"],
                "content": "A glade.",
                "enabled": True,
                "insertion_order": 5,
                "case_sensitive": True,
                "constant": False,
                "selective": True,
                "position": "before_char",
                "name": "Glade",
                "priority": 10,
                "extensions": {"selectiveLogic": 2, "probability": 90, "custom": "kept"},
            },
            {"id": 2, "keys": ["x"], "content": "off", "enabled": False, "insertion_order": 1},
            "not an entry",
        ],
    }
    entries, settings = from_character_book(v2)
    assert [e["uid"] for e in entries] == [1, 2]
    e = entries[0]
    assert (e["key"], e["keysecondary"], e["order"], e["caseSensitive"]) == (
        ["glade"],
        ["moon"],
        5,
        True,
    )
    assert (e["selectiveLogic"], e["probability"], e["position"], e["comment"]) == (
        2,
        90,
        0,
        "Glade",
    )
    assert entries[1]["disable"] is True
    assert settings["scan_depth"] == 4 and settings["token_budget"] == 300 and settings["recursive"]
    back = to_character_book(entries, settings, v2)
    assert back["name"] == "Book" and back["extensions"] == {"x": 1}
    b0 = back["entries"][0]
    assert b0["priority"] == 10 and b0["name"] == "Glade"  # unknown fields kept
    assert b0["extensions"]["custom"] == "kept"
    assert (b0["keys"], b0["secondary_keys"], b0["insertion_order"], b0["enabled"]) == (
        ["glade"],
        ["moon"],
        5,
        True,
    )
    assert back["entries"][1]["enabled"] is False
    # and read again, the same entries
    assert from_character_book(back) == (entries, settings)


# --- the editor's table ---------------------------------------------------------------------


def test_split_keys_keeps_commas_inside_a_regex() -> None:
    assert split_keys("a, b , /c,d/i, e") == ["a", "b", "/c,d/i", "e"]
    assert split_keys(" ,, ") == []


def test_table_edits_under_a_search_keep_the_hidden_entries() -> None:
    entries = [
        new_entry(0, key=["dragon"], content="Dragons.", comment="D"),
        new_entry(1, key=["moon"], content="Moon.", custom_field="kept"),
        new_entry(2, key=["sun"], content="Sun."),
    ]
    shown = filter_entries(entries, "MOON")
    assert [e["uid"] for e in shown] == [1]
    rows = [entry_row(e) for e in shown]
    rows[0].update(content="The moon is red.", key="moon, /lun(a|e)/i", enabled=False, order=7)
    rows[0]["logic"] = "NOT ANY"
    rows.append({"uid": float("nan"), "key": "star", "content": "Stars.", "enabled": None})
    rows.append({"uid": None, "key": "", "content": "  "})  # an empty new row: dropped
    out = apply_rows(entries, [1], rows)
    assert [e["uid"] for e in out] == [0, 1, 2, 3]
    moon = out[1]
    assert moon["content"] == "The moon is red." and moon["key"] == ["moon", "/lun(a|e)/i"]
    assert moon["disable"] is True and moon["order"] == 7 and moon["selectiveLogic"] == NOT_ANY
    assert moon["custom_field"] == "kept"  # fields the table does not show survive
    assert out[3]["key"] == ["star"] and out[3]["disable"] is False
    assert out[0] == entries[0] and out[2] == entries[2]
    # a row deleted from the shown ones deletes that entry only
    assert [e["uid"] for e in apply_rows(entries, [1], [])] == [0, 2]


def test_the_add_form_appends_an_entry_with_the_next_uid() -> None:
    entries = [new_entry(0, key=["dragon"], content="Dragons."), new_entry(4, key=["moon"])]
    out = add_entry(entries, "castle, /tow(er|n)/i", "A castle.", "Castle", constant=True)
    assert out[:2] == entries and len(entries) == 2  # the list given is left as it was
    new = out[2]
    assert (new["uid"], new["key"], new["content"], new["comment"], new["constant"]) == (
        5,
        ["castle", "/tow(er|n)/i"],
        "A castle.",
        "Castle",
        True,
    )
    assert new["order"] == 100 and new["disable"] is False  # SillyTavern's defaults
    assert add_entry([], "", "Text.")[0]["uid"] == 0


# --- hostile books (issue 21) ---------------------------------------------------------------

ISSUE_MESSAGE = "a" * 40 + "!"  # the issue's message for the key /(a+)+$/


@pytest.mark.timeout(120)  # the stdlib's re never finished this (2**40 ways to split the a's)
def test_the_issues_slow_regex_key_does_not_freeze_activation() -> None:
    book = Book(
        "b",
        [
            new_entry(0, key=["/(a+)+$/"], comment="slow", content="never"),
            new_entry(1, key=["aaa"], comment="fine", content="fires"),
        ],
    )
    res = activate([book], [ISSUE_MESSAGE])
    assert [f.title for f in res.fired] == ["fine"]


@pytest.mark.timeout(120)
def test_a_regex_key_that_runs_out_of_time_is_skipped_and_named() -> None:
    # slow for the `regex` package too: it cannot prune the ways to split 60 a's into a and aa
    slow = "/(a|aa)+$/"
    book = Book(
        "b",
        [
            new_entry(0, key=[slow], comment="slow", content="never"),
            new_entry(1, key=["aaa"], comment="fine", content="fires"),
        ],
    )
    res = activate([book], ["a" * 60 + "!"])
    assert [f.title for f in res.fired] == ["fine"]
    assert len(res.errors) == 1
    assert slow in res.errors[0] and "took too long" in res.errors[0]


@pytest.mark.timeout(120)
def test_many_slow_regex_keys_cost_one_bounded_time_together() -> None:
    # 40 different slow keys (a regex comment makes each its own pattern): each has its own time
    # limit, and all of them together one more; the keys past it are not tried, and said so
    entries = [
        new_entry(i, key=[f"/(a|aa)+$(?#{i})/"], comment=f"slow {i}", content="never")
        for i in range(40)
    ]
    entries.append(new_entry(40, key=["aaa"], comment="fine", content="fires"))
    res = activate([Book("b", entries)], ["a" * 60 + "!"])
    assert [f.title for f in res.fired] == ["fine"]
    assert any("took too long" in e for e in res.errors)
    assert any("not tried" in e for e in res.errors), res.errors


def test_world_info_in_list_form_is_held_to_the_entry_limit(monkeypatch) -> None:
    import core.roleplay.lore.formats as formats

    normalized: list[Any] = []
    real = formats.normalize_entry
    monkeypatch.setattr(formats, "normalize_entry", lambda *a: normalized.append(a) or real(*a))
    over = json.dumps({"entries": [{"keys": ["k"], "content": "c"}] * (MAX_ENTRIES + 1)})
    with pytest.raises(LoreError, match=f"{MAX_ENTRIES + 1:,} entries"):
        parse_world_info(over)
    # the issue's file: 1.6 million empty entries in 4.8 MB, refused before any is normalized
    issue = b'{"entries": [' + b",".join([b"{}"] * 1_600_000) + b"]}"
    with pytest.raises(LoreError, match="1,600,000 entries"):
        parse_world_info(issue)
    assert normalized == []
    at_limit = parse_world_info(json.dumps({"entries": [{"keys": ["k"]}] * MAX_ENTRIES}))
    assert len(at_limit.entries) == MAX_ENTRIES


def test_numbers_too_long_or_too_large_are_a_sentence_not_a_crash() -> None:
    digits = b'{"entries": {"0": {"uid": ' + b"1" * 4301 + b', "key": ["a"]}}}'
    with pytest.raises(LoreError, match="too many digits"):
        parse_world_info(digits)
    # a key of digits too large for a uid: kept as the file's key, the uid is its place
    big = "9" * 400
    book = parse_world_info(
        json.dumps({"entries": {big: {"key": ["a"], "content": "x", "order": "1e999"}}})
    )
    assert book.entries[0]["uid"] == 0 and book.entries[0]["order"] == 100
    assert list(export_world_info(book)["entries"]) == [big]
    # the same in a V2 book's ids
    entries, _ = from_character_book({"entries": [{"id": big, "keys": ["a"], "content": "x"}]})
    assert entries[0]["uid"] == 0


def test_a_regex_key_that_would_expand_beyond_memory_is_refused_unread() -> None:
    # the regex package writes out counted repeats: compiled, this key took every byte of memory
    # until the kernel killed the process (the stdlib's re keeps them as loops)
    bomb = "/((a{1000}){1000}){1000}/"
    book = Book(
        "b",
        [
            new_entry(0, key=[bomb], comment="bomb", content="never"),
            new_entry(1, key=["/a{3}(?:b{2}){2}/", "/x{1000}/"], comment="fine", content="c"),
        ],
    )
    res = activate([book], ["aaabbbb"])
    assert [f.title for f in res.fired] == ["fine"]
    assert len(res.errors) == 1 and bomb in res.errors[0] and "too large" in res.errors[0]
    # each of these is allowed, but one activation compiles a bounded size of them in all
    big = [
        new_entry(i, key=[f"/b{{9000}}(?#{i})/"], comment=f"big {i}", content="x")
        for i in range(40)
    ]
    res = activate([Book("b", big)], ["a"])
    assert res.fired == [] and len(res.errors) == 1
    assert "keys were not tried" in res.errors[0] and "elements in all" in res.errors[0]
