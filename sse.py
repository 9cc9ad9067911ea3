"""Server-Sent Events on the wire: an event is a few ``field: value`` lines and a blank line.

The rules come from the WHATWG HTML standard, "Server-sent events":
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

>>> format_event(json={"count": 1}, event="tick", id=1)
b'event: tick\\nid: 1\\ndata: {"count": 1}\\n\\n'

A line break inside the data becomes a second ``data:`` line; the browser
joins them again with ``\\n``:

>>> format_event("one\\r\\ntwo")
b'data: one\\ndata: two\\n\\n'
"""

import json as _json
import math
import re
import sys

# The standard ends a line at CRLF, a lone CR or a lone LF, and nothing else.
# str.splitlines() also splits on \v, \f, \x1c-\x1e, \x85, U+2028 and U+2029,
# which would corrupt data that legitimately contains them.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _json_encoder():
    """A function from any JSON value to its text, as json.dumps(value, ensure_ascii=False).

    json.dumps() builds a new encoder for every call, and that is most of what
    an event costs to make: this one is built once. Standard JSON only: NaN and
    Infinity raise ValueError, since no browser's JSON.parse reads them.
    """
    encoder = _json.JSONEncoder(ensure_ascii=False, allow_nan=False)
    make = getattr(_json.encoder, "c_make_encoder", None)
    if make is None:  # Python without the C speedups (PyPy): the plain way
        return encoder.encode
    scan = make(None, encoder.default, _json.encoder.encode_basestring, None, ": ", ", ",
                False, False, False)
    return lambda value: "".join(scan(value, 0))


_to_json = _json_encoder()


class NonStandardNumber(ValueError):
    """NaN, Infinity, or a number too large for a double: Python reads them, JSON has none."""


def parse_json(text):
    """Parse JSON text (str or UTF-8 bytes) whose numbers are all finite doubles.

    The trap: Python's json.loads also reads NaN, Infinity and -Infinity, and
    reads 1e400 as inf, but no encoder writes them back. format_event (and
    httpx, sending a chat upstream) refuse them, and no browser's JSON.parse
    reads them as sent: a request that holds one would fail later, after the
    200. They raise NonStandardNumber, a ValueError, as malformed JSON does;
    nesting deeper than Python's stack raises RecursionError.

    >>> parse_json('{"n": 1.5, "big": 12345678901234567890}')
    {'n': 1.5, 'big': 12345678901234567890}
    >>> parse_json('[1e400]')
    Traceback (most recent call last):
    sse.NonStandardNumber: 1e400 is too large for a double
    """
    return _json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                       parse_int=_finite_int)


def _refuse_constant(name):
    raise NonStandardNumber(f"{name} is not a number JSON can carry")


def _finite_float(text):
    value = float(text)
    if math.isinf(value):
        raise NonStandardNumber(f"{_shortened(text)} is too large for a double")
    return value


def _finite_int(text):
    value = int(text)
    if abs(value) > sys.float_info.max:  # JavaScript reads it as Infinity
        raise NonStandardNumber(f"{_shortened(text)} is too large for a double")
    return value


def _shortened(text, length=20):
    return text if len(text) <= length else text[:length] + "..."


def format_event(data=None, event=None, id=None, retry=None, json=None):
    """Return one event as the UTF-8 bytes to write.

    ``data`` is split on CR, LF and CRLF into several ``data:`` lines; an
    empty string still gives one, so it reaches ``onmessage``. ``json`` is
    any JSON value instead, sent as one ``data:`` line (JSON escapes line
    breaks). Neither gives no data line, for an event that only sets
    ``retry`` or ``id`` (the browser dispatches nothing without data).
    ``event`` and ``id`` are single-line
    fields: a line break in them would start a field the sender never meant,
    so it raises ValueError, as does NUL in ``id`` (the browser ignores such
    an id). ``retry`` is the reconnection delay in whole milliseconds.

    Text that is not valid Unicode (a lone surrogate) raises
    UnicodeEncodeError here, where the event is made, never at the write.

    >>> format_event("", id=0)
    b'id: 0\\ndata: \\n\\n'
    >>> format_event(retry=2000)
    b'retry: 2000\\n\\n'
    >>> format_event(json={"text": "two\\nlines", "ok": True})
    b'data: {"text": "two\\\\nlines", "ok": true}\\n\\n'
    """
    fields = ""
    if event is not None:
        event = str(event)
        if "\n" in event or "\r" in event:
            raise ValueError("event name must not contain CR or LF")
        fields = f"event: {event}\n"
    if id is not None:
        id = str(id)
        if "\n" in id or "\r" in id or "\0" in id:
            raise ValueError("id must not contain CR, LF or NUL")
        fields += f"id: {id}\n"
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise ValueError("retry must be a non-negative integer (milliseconds)")
        fields += f"retry: {retry}\n"
    if json is not None:
        fields += f"data: {_to_json(json)}\n"
    elif data is not None:
        data = str(data)
        if "\n" in data or "\r" in data:  # the common case needs no regex
            data = _LINE_BREAK.sub("\ndata: ", data)
        fields += f"data: {data}\n"
    return (fields + "\n").encode()


def format_comment(text=""):
    """Return comment lines: ignored by the browser, but bytes that keep a stream alive.

    No blank line follows. A comment needs none, and a client that tracks ids
    may read a blank line after a comment as an event with no data (the
    official ``openai`` client then fails to parse it as JSON).

    >>> format_comment("hello")
    b': hello\\n'
    """
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(str(text))).encode()


# Written when a stream has been quiet for a heartbeat period. Real bytes:
# proxies see traffic and keep the connection, and a write to a client that
# has gone fails, so the server notices (a zero-length write would not).
HEARTBEAT = format_comment("heartbeat")


def parse_last_event_id(value):
    """Return the counter a client last saw, or None to start fresh.

    Anything but a plain non-negative decimal number (the ids this app sends)
    starts fresh instead of failing: a reconnect is never refused.

    >>> parse_last_event_id("41"), parse_last_event_id("x"), parse_last_event_id(None)
    (41, None, None)
    """
    if value is None:
        return None
    value = value.strip()
    # isdecimal() also accepts other scripts' digits; only ASCII ids are ours.
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        return None
    return int(value)
