"""Every lesson in lessons/ under real gunicorn with the gevent worker, read by httpx-sse.

Each test asserts the one idea its lesson teaches, so a lesson that gets it
wrong fails here; the last tests keep the files themselves honest (the
docstring's commands, the imports, and how little each differs from the one
before).
"""

import ast
import difflib
import itertools
import json
import re
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import openai
import pytest
from conftest import stopped_after
from httpx_sse import connect_sse
from playwright.sync_api import expect
from servers import ROOT, Server, free_port, wait_until

LESSONS = ROOT / "lessons"
LESSON_FILES = sorted(LESSONS.glob("[0-9][0-9]_*.py"))
# Seconds between heartbeats in these tests, instead of the lessons' 15.
HEARTBEAT = 0.2
# Milliseconds a browser test waits for text to show: slack for a shared 2-core
# machine; every wait ends as soon as the text is there.
TIMEOUT = 10_000
# Keeps every EventSource the page makes, so a test can ask whether one was closed.
RECORD_SOURCES = """
window.sources = [];
window.EventSource = class extends EventSource {
  constructor(...args) { super(...args); window.sources.push(this); }
};
"""


class Lesson(Server):
    """A lesson running under ``gunicorn -k gevent`` from inside lessons/, and its output."""

    def output(self):
        self.log.flush()
        return Path(self.log.name).read_text()


@pytest.fixture
def lesson(tmp_path):
    """Start ``lessons/<name>.py`` on a free port; stop every one started after the test."""
    def start_one(name):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # --no-control-socket: gunicorn 27's ~/.gunicorn/gunicorn.ctl would be fought
        # over by the servers other tests run at the same time.
        args = [sys.executable, "-m", "gunicorn", "-k", "gevent", "--no-control-socket",
                "-b", f"127.0.0.1:{port}", f"{name}:app"]
        log = open(tmp_path / f"{name}-{port}.log", "w")
        # From inside lessons/, as the docstrings say: gunicorn then does not read the
        # repository's gunicorn.conf.py, which is app.py's. Every lesson answers / with its page.
        return Lesson(args, url, url + "/", env={"HEARTBEAT_SECONDS": str(HEARTBEAT)},
                      cwd=LESSONS, log=log)

    yield from stopped_after(start_one)


def read_events(url, count, headers=None):
    """The first ``count`` events of the stream at ``url``, then hang up."""
    with httpx.Client(timeout=5) as client, connect_sse(client, "GET", url,
                                                        headers=headers or {}) as source:
        assert_event_stream(source.response)
        return list(itertools.islice(source.iter_sse(), count))


def read_all_events(url, headers=None):
    """Every event of a stream that ends by itself; returns once the response has closed."""
    with httpx.Client(timeout=5) as client, connect_sse(client, "GET", url,
                                                        headers=headers or {}) as source:
        assert_event_stream(source.response)
        return list(source.iter_sse())


def assert_event_stream(response):
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"


def ticks(events):
    """(id, data) of each tick event; the first, retry-only block carries neither."""
    return [(event.id, event.data) for event in events if event.event == "tick"]


# --- 1: the counter ---------------------------------------------------------------------------

def test_01_counts_up_once_a_second(lesson):
    server = lesson("01_counter")
    started = time.monotonic()
    events = read_events(server.url + "/stream", 3)
    elapsed = time.monotonic() - started
    assert [(event.event, event.data) for event in events] == [
        ("message", "1"), ("message", "2"), ("message", "3")]
    # Two one-second sleeps between three events: not bunched up, and not late.
    # The upper bound leaves slack for a machine busy with other tests.
    assert 1.8 < elapsed < 5


# --- 2: named events, id and retry ------------------------------------------------------------

def test_02_ticks_are_named_events_with_ids_after_a_retry_block(lesson):
    server = lesson("02_named_events")
    retry, *rest = read_events(server.url + "/stream", 3)
    assert (retry.retry, retry.data, retry.id) == (2000, "", "")  # a browser dispatches nothing
    assert [(event.event, event.id, event.data) for event in rest] == [
        ("tick", "1", "1"), ("tick", "2", "2")]


def test_02_the_wire_text_is_exactly_these_fields(lesson):
    server = lesson("02_named_events")
    wanted = b"retry: 2000\n\nevent: tick\nid: 1\ndata: 1\n\n"
    with httpx.stream("GET", server.url + "/stream", timeout=5) as response:
        received = b""
        for chunk in response.iter_raw():
            received += chunk
            if len(received) >= len(wanted):
                break
    assert received == wanted


# --- 3: resume with Last-Event-ID -------------------------------------------------------------

@pytest.mark.parametrize("how", ["Last-Event-ID header", "?lastEventId= query"])
def test_03_a_reconnect_resumes_with_no_gap_and_no_repeat(lesson, how):
    server = lesson("03_resume")
    before = ticks(read_events(server.url + "/stream", 3))
    last_id = before[-1][0]
    if how.startswith("Last-Event-ID"):
        after = read_events(server.url + "/stream", 2, headers={"Last-Event-ID": last_id})
    else:
        after = read_events(server.url + f"/stream?lastEventId={last_id}", 2)
    ids = [int(id) for id, _ in before + ticks(after)]
    assert ids == [1, 2, 3]


def test_03_the_header_wins_over_the_query(lesson):
    """A page opened with ?lastEventId=5 reconnects to that URL with a newer header."""
    server = lesson("03_resume")
    events = read_events(server.url + "/stream?lastEventId=5", 2, headers={"Last-Event-ID": "7"})
    assert ticks(events) == [("8", "8")]


def test_03_an_id_that_is_not_ours_starts_from_the_beginning(lesson):
    server = lesson("03_resume")
    # "\u0663" is an Arabic-Indic 3, which int() would take; 40 digits is no id of ours.
    for last_id in ["", "x", "-1", "1e3", "\u0663", "9" * 40]:
        url = server.url + "/stream?" + urllib.parse.urlencode({"lastEventId": last_id})
        assert ticks(read_events(url, 2)) == [("1", "1")], last_id


# --- 4: heartbeats and cleanup ----------------------------------------------------------------

def test_04_an_idle_stream_writes_heartbeat_comments(lesson):
    server = lesson("04_heartbeats")
    started = time.monotonic()
    with httpx.stream("GET", server.url + "/stream?interval=3600", timeout=5) as response:
        assert_event_stream(response)
        received = b""
        for chunk in response.iter_raw():
            received += chunk
            if received.count(b": heartbeat\n") == 2:
                break
    # The next tick is an hour away: only heartbeats came after the first one,
    # as bare comment lines (a blank line after them would make an empty event).
    assert received == b"retry: 2000\n\nevent: tick\nid: 1\ndata: 1\n\n" + b": heartbeat\n" * 2
    # Two heartbeats take 0.4 s; the bound is slack for a busy machine, and far
    # below the hour a stream without heartbeats would be silent for.
    assert time.monotonic() - started < 4


def test_04_finally_runs_when_the_client_leaves(lesson):
    server = lesson("04_heartbeats")
    events = read_events(server.url + "/stream?interval=3600", 2)  # then hangs up
    assert ticks(events) == [("1", "1")]
    # Nothing tells the server at once: the first heartbeat written after the
    # hang-up still succeeds, the second fails and gunicorn closes the generator.
    # That takes about 0.4 s; without heartbeats it would take the hour until tick 2.
    wait_until(lambda: "stream closed after event 1" in server.output(), timeout=5,
               what="the lesson to log that the stream closed")


# --- 5: a finite stream -----------------------------------------------------------------------

def test_05_the_stream_ends_with_an_end_event_after_the_limit(lesson):
    server = lesson("05_end")
    events = read_all_events(server.url + "/stream?limit=2")  # returns: the response closed
    assert [(event.event, event.data) for event in events[1:]] == [
        ("tick", "1"), ("tick", "2"), ("end", "limit reached")]
    wait_until(lambda: "stream closed after event 2" in server.output(), timeout=5,
               what="the finally after the end event")


def test_05_a_reconnect_after_the_end_gets_only_the_end_again(lesson):
    """What a page that forgot source.close() would get every ``retry`` ms, for ever."""
    server = lesson("05_end")
    events = read_all_events(server.url + "/stream?limit=2", headers={"Last-Event-ID": "2"})
    assert [(event.event, event.data) for event in events[1:]] == [("end", "limit reached")]


def test_05_the_page_closes_its_source_on_end():
    page = page_of(LESSONS / "05_end.py")
    listener = page[page.index('addEventListener("end"'):]
    assert "source.close()" in listener.splitlines()[0]


# --- 6: broadcast -----------------------------------------------------------------------------

def test_06_one_post_reaches_every_open_stream(lesson):
    server = lesson("06_broadcast")
    url = server.url + "/broadcast"
    with (httpx.Client(timeout=5) as client, connect_sse(client, "GET", url) as first,
          connect_sse(client, "GET", url) as second):
        assert_event_stream(first.response)
        streams = [first.iter_sse(), second.iter_sse()]
        # The retry block is written once the stream has subscribed.
        assert [next(events).retry for events in streams] == [2000, 2000]
        reply = client.post(url, content="one\r\ntwo\rthree\nfour\u2028still four")
        assert reply.status_code == 200
        assert reply.json() == {"subscribers": 2}
        # Every line break the spec knows became its own data: line, and U+2028 is not one.
        for events in streams:
            assert next(events).data == "one\ntwo\nthree\nfour\u2028still four"


def test_06_a_client_that_leaves_is_unsubscribed(lesson):
    server = lesson("06_broadcast")
    url = server.url + "/broadcast"
    with httpx.Client(timeout=5) as client, connect_sse(client, "GET", url) as staying:
        events = staying.iter_sse()
        assert next(events).retry == 2000
        assert read_events(url, 1)[0].retry == 2000  # a second subscriber, who hangs up
        # It is noticed at a failed heartbeat, about 0.4 s later (see lesson 4).
        wait_until(lambda: "subscriber left, 1 remain" in server.output(), timeout=5,
                   what="the second subscriber to be dropped")
        reply = client.post(url, content="still here?")
        assert reply.json() == {"subscribers": 1}
        assert next(events).data == "still here?"


def test_06_a_message_over_the_limit_is_refused_with_or_without_a_content_length(lesson):
    server = lesson("06_broadcast")
    url, limit = server.url + "/broadcast", 64 * 1024

    def chunked(size):  # httpx sends an iterator chunked, without a Content-Length
        yield b"a" * size

    with httpx.Client(timeout=5) as client, connect_sse(client, "GET", url) as source:
        events = source.iter_sse()
        assert next(events).retry == 2000
        assert client.post(url, content=b"a" * (limit + 1)).status_code == 413
        # Werkzeug would have cut this one off at the limit and passed it on.
        assert client.post(url, content=chunked(limit + 1)).status_code == 413
        assert client.post(url, content=chunked(limit)).status_code == 200
        assert next(events).data == "a" * limit  # the first message through is the one that fit


# --- 7: a ChatGPT-style POST ------------------------------------------------------------------

def chat_request(prompt):
    return {"model": "echo", "stream": True, "messages": [{"role": "user", "content": prompt}]}


def test_07_a_post_streams_content_chunks_then_done(lesson):
    server = lesson("07_chat")
    with httpx.Client(timeout=5) as client, connect_sse(
            client, "POST", server.url + "/v1/chat/completions",
            json=chat_request("hello there")) as source:
        assert_event_stream(source.response)
        data = [event.data for event in source.iter_sse()]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(text) for text in data[:-1]]
    words = [chunk["choices"][0]["delta"]["content"] for chunk in chunks]
    assert words == ["You", " said:", " hello", " there"]


def test_07_the_official_openai_client_reads_the_stream(lesson):
    server = lesson("07_chat")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0)
    stream = client.chat.completions.create(
        model="echo", stream=True, messages=[{"role": "user", "content": "line one\nline two"}])
    answer = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert answer == "You said: line one\nline two"


def test_07_a_request_without_a_prompt_is_refused(lesson):
    server = lesson("07_chat")
    for body in ['{}', '{"messages": []}', '{"messages": [{"role": "user"}]}',
                 '{"messages": "hi"}', '[1, 2]', 'null']:
        reply = httpx.post(server.url + "/v1/chat/completions", content=body, timeout=5,
                           headers={"Content-Type": "application/json"})
        assert reply.status_code == 400, body
        assert "message" in reply.json()["error"], body


# --- The pages, in Debian's chromium --------------------------------------------------------

@pytest.fixture
def page_errors(page):
    """Errors the page threw; a test asserts there were none."""
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


@pytest.mark.browser
def test_01_the_page_shows_each_message(lesson, page, page_errors):
    server = lesson("01_counter")
    page.goto(server.url + "/")
    expect(page.locator("#counter")).to_have_text(re.compile(r"^1\n2\n"), timeout=TIMEOUT)
    assert page_errors == []


@pytest.mark.browser
@pytest.mark.parametrize("name", ["05_end", "07_chat"])
def test_05_the_page_closes_the_stream_on_end(lesson, page, page_errors, name):
    server = lesson(name)
    page.add_init_script(RECORD_SOURCES)
    page.goto(server.url + "/?limit=1")
    expect(page.locator("#counter")).to_have_text("tick 1 (id 1)\nend\n",
                                                  timeout=TIMEOUT)
    # CLOSED (2) at once; an EventSource left alone would be CONNECTING (0) again,
    # to get "end" again retry ms later, for ever.
    assert page.evaluate("() => window.sources[0].readyState") == 2
    assert page_errors == []


@pytest.mark.browser
def test_07_the_page_shows_broadcasts_and_streams_the_answer(lesson, page, page_errors):
    server = lesson("07_chat")
    page.goto(server.url + "/")
    # Publish until the page's EventSource has subscribed: the first POST that says
    # so is the only one it gets.
    wait_until(lambda: httpx.post(server.url + "/broadcast", content="<b>hello</b>",
                                  timeout=5).json() == {"subscribers": 1},
               what="the page to subscribe to /broadcast")
    expect(page.locator("#messages")).to_have_text("<b>hello</b>\n", timeout=TIMEOUT)
    page.locator("input[name=prompt]").fill("what now?")
    page.get_by_role("button", name="Ask").click()
    expect(page.locator("#answer")).to_have_text("You said: what now?", timeout=TIMEOUT)
    assert page_errors == []


# --- The files themselves ---------------------------------------------------------------------

def page_of(path):
    """The lesson's inline page (its PAGE string)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PAGE":
            return node.value.value
    raise AssertionError(f"{path.name} has no PAGE")


def test_the_lessons_are_numbered_one_to_seven():
    assert [path.name[:2] for path in LESSON_FILES] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda path: path.stem)
def test_the_docstring_says_how_to_run_it_and_what_curl_prints(path):
    lines = ast.get_docstring(ast.parse(path.read_text())).splitlines()
    assert f"Run: gunicorn -k gevent {path.stem}:app" in lines
    tries = [n for n, line in enumerate(lines) if line.startswith("Try: curl -N")]
    assert tries, "no line starts with 'Try: curl -N'"
    # What it printed follows, indented.
    assert any(line.startswith("    ") and line.strip() for line in lines[tries[0] + 1:])


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda path: path.stem)
def test_a_lesson_imports_only_flask_and_the_standard_library(path):
    tree = ast.parse(path.read_text())
    modules = {alias.name.partition(".")[0] for node in ast.walk(tree)
               if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.partition(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)}
    assert "gevent" not in modules  # the server's business, not the lesson's
    assert modules - {"flask"} <= sys.stdlib_module_names


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda path: path.stem)
def test_the_page_shows_text_with_textcontent_only(path):
    page = page_of(path)
    assert "new EventSource(" in page
    assert "textContent" in page
    assert "innerHTML" not in page


@pytest.mark.parametrize("before, after", list(itertools.pairwise(LESSON_FILES)),
                         ids=lambda path: path.stem)
def test_each_lesson_keeps_most_of_the_one_before(before, after):
    """So that ``diff`` between two lessons stays the lesson."""
    old, new = before.read_text().splitlines(), after.read_text().splitlines()
    kept = sum(block.size for block in
               difflib.SequenceMatcher(None, old, new, autojunk=False).get_matching_blocks())
    assert kept >= 0.6 * len(old), f"{after.name} keeps only {kept} of {len(old)} lines"


@pytest.mark.parametrize("name", ["SSE_HEADERS", "page", "LINE_BREAK", "format_event",
                                  "HEARTBEAT_SECONDS", "HEARTBEAT", "sleep_with_heartbeats",
                                  "subscribers", "broadcast", "publish"])
def test_what_a_lesson_introduces_stays_the_same_afterwards(name):
    sources = {}
    for path in LESSON_FILES:
        text = path.read_text()
        for node in ast.parse(text).body:
            defined = getattr(node, "name", None) or getattr(
                getattr(node, "targets", [None])[0], "id", None)
            if defined == name:
                sources[path.name] = ast.get_source_segment(text, node)
    assert sources, f"no lesson defines {name}"
    assert len(set(sources.values())) == 1, f"{name} differs between {sorted(sources)}"
