import json

import pytest

from sse import HEARTBEAT, format_comment, format_event, parse_last_event_id


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        ("", "data: \n\n"),
        ("one", "data: one\n\n"),
        ("a\nb", "data: a\ndata: b\n\n"),
        ("a\rb", "data: a\ndata: b\n\n"),
        ("a\r\nb", "data: a\ndata: b\n\n"),
        ("a\n\rb", "data: a\ndata: \ndata: b\n\n"),  # LF then CR: two breaks, not one
        ("a\r\n\r\nb", "data: a\ndata: \ndata: b\n\n"),
        ("a\n", "data: a\ndata: \n\n"),  # a trailing break keeps its empty line
        ("\n", "data: \ndata: \n\n"),
        ("\r\n\n\r", "data: \ndata: \ndata: \ndata: \n\n"),
    ],
)
def test_multiline_data_becomes_several_data_lines(data, wire):
    assert format_event(data) == wire.encode()


@pytest.mark.parametrize(
    "text",
    ["a\u2028b", "a\u2029b", "a\x85b", "a\x0bb", "a\x0cb", "a\x1cb", "héllo ✓ 😀"],
)
def test_characters_splitlines_would_split_stay_in_one_line(text):
    assert format_event(text) == f"data: {text}\n\n".encode()


def test_fields_come_in_a_fixed_order_and_non_strings_are_converted():
    assert format_event('{"a": 1}', event="tick", id=7, retry=1500) == (
        b'event: tick\nid: 7\nretry: 1500\ndata: {"a": 1}\n\n'
    )
    assert format_event(42, id=0) == b"id: 0\ndata: 42\n\n"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "\n"])
def test_event_name_with_a_line_break_is_rejected(bad):
    with pytest.raises(ValueError, match="event"):
        format_event("x", event=bad)


@pytest.mark.parametrize("bad", ["1\n2", "1\r2", "1\r\n", "1\x002"])
def test_id_with_a_line_break_or_nul_is_rejected(bad):
    with pytest.raises(ValueError, match="id"):
        format_event("x", id=bad)


def test_empty_id_is_allowed_because_it_resets_the_last_event_id():
    assert format_event("x", id="") == b"id: \ndata: x\n\n"


@pytest.mark.parametrize("bad", [1.5, "2000", -1, True])
def test_retry_must_be_a_non_negative_integer(bad):
    with pytest.raises(ValueError, match="retry"):
        format_event("x", retry=bad)


def test_comment_lines_each_start_with_a_colon_and_no_blank_line_follows():
    assert format_comment("a\nb") == b": a\n: b\n"
    assert HEARTBEAT == b": heartbeat\n"


@pytest.mark.parametrize("value", [
    {"count": 1, "time": "2026-12-01T22:00:00.123Z"}, [1, 2.5, -0.0, 1e300, 10**40, None, True],
    "é ✓ 😀", "line\r\nbreaks\n", "\u2028\u2029\x00\x1f\"\\", {"nested": {"a": [{}, []]}}, 0,
])
def test_json_data_is_exactly_what_json_dumps_writes_on_one_line(value):
    expected = json.dumps(value, ensure_ascii=False)
    assert format_event(json=value) == f"data: {expected}\n\n".encode()


@pytest.mark.parametrize("value", [float("nan"), [float("inf")], {"x": -float("inf")}])
def test_json_data_refuses_what_no_browser_can_parse(value):
    with pytest.raises(ValueError):
        format_event(json=value)


def test_no_data_gives_no_data_line_and_an_empty_string_gives_one():
    assert format_event(retry=100) == b"retry: 100\n\n"
    assert format_event(id=3) == b"id: 3\n\n"
    assert format_event("") == b"data: \n\n"


def test_text_that_is_not_valid_unicode_fails_where_the_event_is_made():
    with pytest.raises(UnicodeEncodeError):
        format_event("\ud800")


@pytest.mark.parametrize(
    ("header", "expected"),
    [("0", 0), ("41", 41), (" 41 ", 41), ("", None), ("-1", None), ("4.5", None),
     ("abc", None), ("١٢", None), ("9" * 19, None), (None, None)],
)
def test_last_event_id_parses_or_starts_fresh(header, expected):
    assert parse_last_event_id(header) == expected
