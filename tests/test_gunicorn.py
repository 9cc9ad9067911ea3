"""/stream under real gunicorn with the gevent worker, read by an independent SSE client;
and the request headers gunicorn.conf.py keeps gunicorn from trusting."""

import asyncio
import contextlib
import json
import socket
import time
from datetime import datetime

import httpx
from httpx_sse import aconnect_sse, connect_sse
from servers import wait_until


def server_time(event):
    return datetime.fromisoformat(json.loads(event.data)["time"]).timestamp()


def is_tick(event):
    """A counter event (httpx-sse also reports the bare ``retry:`` block; browsers do not)."""
    return event.event == "message" and event.data != ""


def open_streams(server):
    return httpx.get(server.url + "/healthz").json()["open_streams"]


def test_events_arrive_one_by_one_as_they_are_stamped(gunicorn):
    server = gunicorn()
    arrivals = []
    with httpx.Client(timeout=10) as client:
        url = server.url + "/stream?interval=0.2&limit=5&ping=0"
        with connect_sse(client, "GET", url) as source:
            assert source.response.headers["content-type"] == "text/event-stream; charset=utf-8"
            for event in source.iter_sse():
                if is_tick(event):
                    arrivals.append((time.time(), server_time(event), int(event.id)))
                if event.event == "end":
                    break
    assert [n for _, _, n in arrivals] == [1, 2, 3, 4, 5]
    for arrived, stamped, _ in arrivals:
        assert arrived - stamped < 0.5, "an event was held back after the server stamped it"
    assert arrivals[-1][0] - arrivals[0][0] > 0.6, "events arrived in one burst"


def test_headers_arrive_before_the_first_tick(gunicorn):
    server = gunicorn()
    started = time.monotonic()
    with httpx.stream("GET", server.url + "/stream?interval=60&ping=0", timeout=10) as response:
        assert response.status_code == 200
        first = next(response.iter_raw())
    assert time.monotonic() - started < 5
    assert first.startswith(b"retry: ")


def test_one_worker_serves_500_concurrent_streams(gunicorn):
    server = gunicorn()
    count = 500

    async def one(client, results):
        url = server.url + "/stream?interval=0.5&ping=0"
        async with aconnect_sse(client, "GET", url) as source:
            async for event in source.aiter_sse():
                if is_tick(event):
                    results.append(int(event.id))
                    if len(results) == 2:
                        return

    async def main():
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            results = [[] for _ in range(count)]
            await asyncio.gather(*(one(client, r) for r in results))
            return results

    results = asyncio.run(main())
    assert all(r == [1, 2] for r in results), "a stream missed its first two events"


def test_reconnect_with_last_event_id_resumes_without_gap(gunicorn):
    server = gunicorn()
    seen = []
    with httpx.Client(timeout=10) as client:
        with connect_sse(client, "GET", server.url + "/stream?interval=0.05&ping=0") as source:
            for event in source.iter_sse():
                seen.append(int(event.id)) if is_tick(event) else None
                if len(seen) == 3:
                    last_id = event.id
                    break
        headers = {"Last-Event-ID": last_id}
        with connect_sse(client, "GET", server.url + "/stream?interval=0.05&ping=0",
                         headers=headers) as source:
            for event in source.iter_sse():
                seen.append(int(event.id)) if is_tick(event) else None
                if len(seen) == 6:
                    break
    assert seen == [1, 2, 3, 4, 5, 6]


def test_dropped_clients_are_noticed_and_released(gunicorn):
    server = gunicorn()
    sockets = []
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
        sock.sendall(b"GET /stream?interval=5&ping=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        sockets.append(sock)
    for sock in sockets:
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    wait_until(lambda: open_streams(server) == 100, timeout=10, what="100 open streams")
    for sock in sockets:
        sock.close()
    # Each stream learns of its gone client at its next write: the heartbeat (0.2 s here).
    wait_until(lambda: open_streams(server) == 0, timeout=10, what="every stream to close")


def test_stream_cap_answers_503_not_a_hang(gunicorn):
    server = gunicorn(env={"SSE_MAX_STREAMS": "3"})
    # The ExitStack keeps the three streams open: a context manager from
    # client.stream() that is dropped right away closes its stream with it.
    with httpx.Client(timeout=5) as client, contextlib.ExitStack() as streams:
        for _ in range(3):
            streams.enter_context(client.stream("GET", server.url + "/stream"))
        refused = client.get(server.url + "/stream")
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["type"] == "server_error"


def test_a_script_name_header_changes_nothing(gunicorn):
    # gunicorn would take it from a loopback client by default, and rewrite the page's URLs.
    server = gunicorn()
    with httpx.Client(base_url=server.url, timeout=5) as client:
        page = client.get("/", headers={"SCRIPT_NAME": "/evil"})
        assert page.status_code == 200
        assert 'src="/static/stream.js"' in page.text and "/evil" not in page.text
        assert client.get("/evil/", headers={"SCRIPT_NAME": "/evil"}).status_code == 404
