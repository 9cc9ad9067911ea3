"""The shipped nginx.conf in front of real gunicorn: delivery, idle streams, the per-client
stream limit, HTTP/2, the page."""

import contextlib
import json
import socket
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from flask import request
from httpx_sse import connect_sse
from servers import wait_until

from app import create_app

# Lines of nginx.conf swapped to build a proxy that holds events back. Measured
# with nginx 1.22: buffering alone does not (it forwards each chunk of an HTTP/1.1
# upstream), nor gzip alone (unbuffered proxying flushes it per chunk); buffering
# with an HTTP/1.0 upstream or with gzip does. The app's X-Accel-Buffering header
# undoes the buffering, so those tests turn it off too.
BUFFERING_ON = ("proxy_buffering off;", "proxy_buffering on;")
UPSTREAM_HTTP_1_0 = [("proxy_http_version 1.1;", "proxy_http_version 1.0;"), BUFFERING_ON]
GZIP_ON_STREAMS = [("gzip off;", "gzip on; gzip_types text/event-stream;"), BUFFERING_ON]
NO_ACCEL_HEADER = {"SSE_X_ACCEL_BUFFERING": "false"}


def tick_delays(url, count=5):
    """Read ``count`` counter events at 0.2 s; return, per event, arrival minus server stamp."""
    delays = []
    with httpx.Client(timeout=10) as client:
        with connect_sse(client, "GET", f"{url}/stream?interval=0.2&limit={count}&ping=0",
                         headers={"Accept-Encoding": "gzip"}) as source:
            assert source.response.status_code == 200
            for event in source.iter_sse():
                if event.event == "message" and event.data:
                    stamped = datetime.fromisoformat(json.loads(event.data)["time"]).timestamp()
                    delays.append(time.time() - stamped)
    assert len(delays) == count
    return delays


def assert_events_arrive_one_by_one(url):
    delays = tick_delays(url)
    assert max(delays) < 0.1, f"events held back: {[round(d, 3) for d in delays]} s late"


def test_events_arrive_one_by_one_through_nginx(gunicorn, nginx):
    proxy = nginx(gunicorn())
    assert_events_arrive_one_by_one(proxy.url)


@pytest.mark.parametrize("replace", [UPSTREAM_HTTP_1_0, GZIP_ON_STREAMS],
                         ids=["http-1.0-upstream-buffered", "gzip-on-streams"])
def test_a_buffering_proxy_fails_the_same_check(gunicorn, nginx, replace):
    proxy = nginx(gunicorn(env=NO_ACCEL_HEADER), replace=replace)
    with pytest.raises(AssertionError, match="events held back"):
        assert_events_arrive_one_by_one(proxy.url)


@pytest.mark.parametrize("replace", [UPSTREAM_HTTP_1_0, GZIP_ON_STREAMS],
                         ids=["http-1.0-upstream-buffered", "gzip-on-streams"])
def test_the_apps_accel_header_alone_undoes_that_buffering(gunicorn, nginx, replace):
    proxy = nginx(gunicorn(), replace=replace)
    assert_events_arrive_one_by_one(proxy.url)


def test_nginx_serves_static_files_itself(gunicorn, nginx, tmp_path):
    upstream = gunicorn()
    static = tmp_path / "nginx-0" / "static"  # start_nginx links the repo's static/ unless present
    static.mkdir(parents=True)
    (static / "probe.js").write_text("export const probe = 1;\n")
    proxy = nginx(upstream)
    response = httpx.get(proxy.url + "/static/probe.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript"  # what an ES module needs
    assert response.text == "export const probe = 1;\n"
    assert "/static/probe.js" not in Path(upstream.log.name).read_text()  # gunicorn never saw it


# A short proxy read timeout keeps the idle-stream tests fast; the heartbeat is
# set below it exactly as the defaults are (15 s heartbeat, 60 s timeout).
READ_TIMEOUT_2S = [("proxy_read_timeout 60s;", "proxy_read_timeout 2s;")]


def watch_idle_stream(url, seconds):
    """Hold an idle stream (one tick, then nothing for 120 s) for up to ``seconds``.

    Returns how long it stayed open and how many heartbeats arrived.
    """
    started = time.monotonic()
    heartbeats = 0
    try:
        with httpx.stream("GET", url + "/stream?interval=120&ping=0", timeout=10) as response:
            assert response.status_code == 200
            for text in response.iter_text():
                heartbeats += text.count(": heartbeat")
                if time.monotonic() - started > seconds:
                    break
    except httpx.RemoteProtocolError:  # nginx closed the stream mid-body
        pass
    return time.monotonic() - started, heartbeats


def test_heartbeats_keep_an_idle_stream_open_past_the_proxy_read_timeout(gunicorn, nginx):
    proxy = nginx(gunicorn(env={"SSE_HEARTBEAT": "0.5"}), replace=READ_TIMEOUT_2S)
    open_for, heartbeats = watch_idle_stream(proxy.url, seconds=4)
    assert open_for > 4
    assert heartbeats >= 6


def test_without_heartbeats_the_proxy_cuts_an_idle_stream(gunicorn, nginx):
    proxy = nginx(gunicorn(env={"SSE_HEARTBEAT": "3600"}), replace=READ_TIMEOUT_2S)
    open_for, heartbeats = watch_idle_stream(proxy.url, seconds=8)
    assert heartbeats == 0
    assert 1.9 < open_for < 4, f"the stream lasted {open_for:.1f} s; the timeout is 2 s"


# nginx.conf's limit_conn on the streams location: open streams per client address.
STREAMS_PER_CLIENT = 100
# One tick, then silence: the streams only hold their slots. A slow heartbeat keeps
# 100 of them from busying the machine (nginx's 60 s read timeout is far off).
QUIET = {"SSE_HEARTBEAT": "30"}
IDLE_STREAM = "/stream?interval=3600&ping=0"


@contextlib.contextmanager
def open_streams(url, count):
    """Hold ``count`` idle streams from 127.0.0.1, one socket each; close them on exit.

    Yields the sockets once every one has its ``HTTP/1.1 200`` status line: by
    then nginx has counted each of them against the client's limit.
    """
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection((host, int(port)), timeout=10))
            sockets[-1].sendall(f"GET {IDLE_STREAM} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        for sock in sockets:
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, f"a stream closed before its status line: {head!r}"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200 "), head.split(b"\r\n")[0]
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def one_more_stream(url, source="127.0.0.1"):
    """Open one more stream from address ``source`` and close it; return the response.

    The body is read only when it is not a 200 (a refusal is short, a stream endless).
    """
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=5) as client:
        with client.stream("GET", url + IDLE_STREAM) as response:
            if response.status_code != 200:
                response.read()
    return response


def test_one_address_gets_100_streams_then_a_json_429_until_one_closes(gunicorn, nginx):
    proxy = nginx(gunicorn(env=QUIET))
    with open_streams(proxy.url, STREAMS_PER_CLIENT) as streams:
        refused = one_more_stream(proxy.url)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/json"
        assert refused.headers["retry-after"] == "5"
        error = refused.json()["error"]
        assert "too many open streams from your address" in error["message"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] is None and error["code"] is None
        apps_own = create_app({"TESTING": True}).test_client().get("/nowhere")
        assert apps_own.status_code == 404
        assert error.keys() == apps_own.json["error"].keys()  # the app's error shape
        chat = httpx.post(proxy.url + "/v1/chat/completions", json={"stream": True})
        assert chat.status_code == 429  # the other stream routes share the limit
        assert chat.json()["error"] == error

        streams.pop().close()
        # nginx frees the slot as soon as it sees the close (milliseconds); 5 s is
        # slack for a busy 2-core machine, not an expected wait.
        wait_until(lambda: one_more_stream(proxy.url).status_code == 200, timeout=5,
                   what="a stream to get in after one of the 100 closed")


def test_the_stream_limit_leaves_the_page_healthz_and_other_addresses_alone(gunicorn, nginx):
    proxy = nginx(gunicorn(env=QUIET))
    with open_streams(proxy.url, STREAMS_PER_CLIENT):
        assert one_more_stream(proxy.url).status_code == 429
        page = httpx.get(proxy.url + "/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        health = httpx.get(proxy.url + "/healthz")
        assert health.status_code == 200
        assert health.json()["open_streams"] == STREAMS_PER_CLIENT  # all 100 reached gunicorn
        # The limit is per address: 127.0.0.2 is this machine too, with slots of its own.
        assert one_more_stream(proxy.url, source="127.0.0.2").status_code == 200


# nginx.conf's limit_req on chat questions: a burst of 30 per address, then one a second.
QUESTIONS_BURST = 30


def ask(url, source="127.0.0.1"):
    """POST one streamed chat question from address ``source``; close once its status is in."""
    transport = httpx.HTTPTransport(local_address=source)
    question = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.Client(transport=transport, timeout=5) as client:
        with client.stream("POST", url + "/v1/chat/completions", json=question) as response:
            if response.status_code != 200:
                response.read()
    return response


def test_one_address_asking_a_burst_of_questions_gets_a_json_429_and_others_do_not(
        gunicorn, nginx):
    # A question's answer goes on being generated after its connection closes, so
    # limit_conn does not bound them: without a rate, one address that asks and
    # hangs up in a loop fills the worker's SSE_CHAT_MAX_ANSWERS for everyone.
    proxy = nginx(gunicorn(env={"SSE_CHAT_TOKEN_DELAY": "0.05"}))
    statuses = [ask(proxy.url).status_code for _ in range(QUESTIONS_BURST + 10)]
    # The burst, plus the one a second the asking took (well under 10 s).
    assert QUESTIONS_BURST <= statuses.count(200) < QUESTIONS_BURST + 10
    refused = ask(proxy.url)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
    assert "too many chat questions from your address" in refused.json()["error"]["message"]
    assert ask(proxy.url, source="127.0.0.2").status_code == 200  # another address
    with open_streams(proxy.url, 1):  # the same address still streams
        pass
    # A refused question never reached gunicorn: it holds no answer there.
    assert httpx.get(proxy.url + "/healthz").json()["chat_answers"] == statuses.count(200) + 1


OPEN_EIGHT_EVENT_SOURCES = """() => {
    window.counts = [0, 0, 0, 0, 0, 0, 0, 0];
    window.sources = window.counts.map((_, i) => {
        const source = new EventSource("/stream?interval=0.1&ping=0");
        source.onmessage = () => { window.counts[i] += 1; };
        return source;
    });
}"""


def receiving_event_sources(context, origin):
    """Open 8 EventSources on one page of ``origin``; return each one's message count.

    Waits until the open ones have each received 10 more messages, so a source
    still silent by then is queued by the browser, not merely slow.
    """
    page = context.new_page()
    assert page.goto(origin + "/healthz").status == 200  # a page on the same origin
    page.evaluate(OPEN_EIGHT_EVENT_SOURCES)
    page.wait_for_function("window.counts.filter(n => n > 0).length >= 6", timeout=10_000)
    page.wait_for_function("Math.min(...window.counts.filter(n => n > 0)) >= 10",
                           timeout=10_000)
    counts = page.evaluate("window.counts")
    page.evaluate("window.sources.forEach(source => source.close())")
    return counts


@pytest.mark.browser
def test_over_http_1_1_a_page_gets_only_six_event_sources(gunicorn, nginx, browser):
    proxy = nginx(gunicorn())
    context = browser.new_context()
    counts = receiving_event_sources(context, proxy.url)
    context.close()
    receiving = sum(n > 0 for n in counts)
    assert receiving == 6, f"{receiving} of 8 EventSources received events: {counts}"


@pytest.mark.browser
def test_over_http_2_all_eight_event_sources_receive_events(gunicorn, nginx, browser):
    proxy = nginx(gunicorn())
    context = browser.new_context(ignore_https_errors=True)  # the self-signed certificate
    counts = receiving_event_sources(context, proxy.https_url)
    context.close()
    assert all(n > 0 for n in counts), f"EventSources that received events: {counts}"


@pytest.mark.browser
def test_the_demo_page_counts_through_nginx(gunicorn, nginx, page):
    proxy = nginx(gunicorn())
    scripts = []
    page.on("response", lambda r: r.url.endswith(".js") and scripts.append(r))
    page.goto(proxy.url + "/?interval=0.1")
    # The page's CSP forbids eval: wait_for_function needs a function, not a string.
    count_reaches = "(n) => Number(document.querySelector('#count').textContent) >= n"
    page.wait_for_function(count_reaches, arg=1, timeout=10_000)
    first = int(page.locator("#count").text_content())
    page.wait_for_function(count_reaches, arg=first + 2, timeout=10_000)
    # nginx serves static/ itself; gunicorn would say "gunicorn" here.
    assert scripts and all(r.ok and r.headers["server"].startswith("nginx") for r in scripts)


OPEN_IDLE_EVENT_SOURCES = """(count) => {
    window.opened = 0;
    window.refused = 0;
    window.sources = Array.from({length: count}, () => {
        const source = new EventSource("/stream?interval=3600&ping=0");
        source.onopen = () => { window.opened += 1; };
        // A non-200 answer closes an EventSource for good.
        source.onerror = () => {
            if (source.readyState === EventSource.CLOSED) window.refused += 1;
        };
        return source;
    });
}"""


@pytest.mark.browser
def test_over_http_2_each_stream_counts_against_the_limit(gunicorn, nginx, browser):
    proxy = nginx(gunicorn(env=QUIET))
    context = browser.new_context(ignore_https_errors=True)  # the self-signed certificate
    page = context.new_page()
    assert page.goto(proxy.https_url + "/healthz").status == 200
    assert page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
    page.evaluate(OPEN_IDLE_EVENT_SOURCES, STREAMS_PER_CLIENT + 1)  # multiplexed on that connection
    page.wait_for_function(f"window.opened + window.refused === {STREAMS_PER_CLIENT + 1}",
                           timeout=10_000)
    counts = page.evaluate("({opened: window.opened, refused: window.refused})")
    page.evaluate("window.sources.forEach(source => source.close())")
    context.close()
    assert counts == {"opened": STREAMS_PER_CLIENT, "refused": 1}


# Host, Port and Prefix are never trusted: the app needs only who asked and how.
FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
             "X-Forwarded-Host": "example.org", "X-Forwarded-Port": "8443",
             "X-Forwarded-Prefix": "//evil.example"}


@pytest.mark.parametrize(("trust", "seen"), [
    (1, "203.0.113.7 https://localhost/where"),  # behind nginx: SSE_TRUST_PROXY=1
    (0, "127.0.0.1 http://localhost/where"),  # direct: anyone could send those headers
])
def test_forwarded_headers_count_only_when_a_proxy_is_trusted(trust, seen):
    app = create_app({"TESTING": True, "TRUST_PROXY": trust})
    app.add_url_rule("/where", "where", lambda: f"{request.remote_addr} {request.url}")
    response = app.test_client().get("/where", headers=FORWARDED)
    assert response.status_code == 200
    assert response.text == seen
