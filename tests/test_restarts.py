"""Restarts with clients streaming through nginx: reload, stop, a killed worker, stream lifetimes.

Each client is a small EventSource written in Python: when a stream ends or
breaks, it waits the server's ``retry`` and reconnects with Last-Event-ID, as
browsers do. Its counter must go on with no gap and no duplicate.
"""

import asyncio
import contextlib
import math
import os
import re
import signal
import socket
import time

import httpx
from httpx_sse import aconnect_sse
from servers import run_async

from streams import Streams

CLIENTS = 200
# Slow ticks and heartbeats keep 200 streams light on a small machine.
QUIET = {"SSE_HEARTBEAT": "5"}
STREAM = "/stream?interval=0.5&ping=0"


class Follower:
    """Follow a stream the way EventSource does, and record what happened."""

    def __init__(self, url):
        self.url = url
        self.ids = []  # every counter id received, in order
        self.opened = []  # when each stream was answered (time.monotonic())
        self.ended = []  # when each stream ended cleanly
        self.broken = []  # when a stream broke off mid-body
        self.refused = None  # a non-200 answer: EventSource gives up, and so do we

    async def run(self, client):
        retry = 3.0  # seconds; the server's first line replaces it
        while True:
            headers = {"Last-Event-ID": str(self.ids[-1])} if self.ids else {}
            try:
                async with aconnect_sse(client, "GET", self.url, headers=headers) as source:
                    if source.response.status_code != 200:
                        self.refused = source.response.status_code
                        return
                    self.opened.append(time.monotonic())
                    async for event in source.aiter_sse():
                        if event.retry is not None:
                            retry = event.retry / 1000
                        if event.event == "message" and event.data:
                            self.ids.append(int(event.id))
                self.ended.append(time.monotonic())
            except httpx.TransportError:
                self.broken.append(time.monotonic())
            await asyncio.sleep(retry)

    def ends_after(self, moment):
        return [t for t in self.ended + self.broken if t > moment]


@contextlib.asynccontextmanager
async def browsers(count):
    """``count`` HTTP clients, each with its own connections, like separate browsers.

    Each has its own loopback address too (127.0.0.2, 127.0.0.3, ...): nginx.conf
    lets one address hold only 100 streams. One shared httpx pool of 200
    connections costs the test seconds of CPU when they all end at once, and the
    clients, not the server, would be measured.
    verify=False: plain HTTP here, so skip loading CA certificates 200 times.
    """
    assert count <= 250, "one loopback address each: 127.0.0.2 to 127.0.0.251"
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for n in range(count):
            transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{n + 2}", verify=False)
            clients.append(await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, timeout=30)))
        yield clients


@contextlib.asynccontextmanager
async def following(url, count):
    """Run ``count`` Followers of ``url``; stop them on the way out."""
    async with browsers(count) as clients:
        followers = [Follower(url) for _ in clients]
        tasks = [asyncio.create_task(f.run(c)) for f, c in zip(followers, clients, strict=True)]
        try:
            yield followers
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def until(condition, timeout, what):
    """Wait for ``condition()`` without blocking the clients; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def assert_counters_continue(followers):
    for f in followers:
        assert f.refused is None, f"a reconnect was refused with HTTP {f.refused}"
        assert f.ids == list(range(1, len(f.ids) + 1)), f"gap or duplicate: {f.ids}"


async def all_moved_on(followers, by, timeout=20):
    """Wait until every follower has ``by`` more events than it has now."""
    targets = [len(f.ids) + by for f in followers]
    await until(lambda: all(len(f.ids) >= t for f, t in zip(followers, targets, strict=True)),
                timeout, f"every client to receive {by} more events")


def worker(server):
    """The pid of the worker answering, and its open streams, asked directly (not via nginx)."""
    health = httpx.get(server.url + "/healthz", timeout=5).json()
    return health["pid"], health["open_streams"]


def test_reload_ends_every_stream_at_once_and_clients_resume_on_the_new_worker(
        gunicorn, nginx):
    upstream = gunicorn(env=QUIET)
    proxy = nginx(upstream)
    old_pid, _ = worker(upstream)

    async def scenario():
        async with following(proxy.url + STREAM, CLIENTS) as followers:
            await until(lambda: all(len(f.ids) >= 2 for f in followers), 30,
                        f"{CLIENTS} streams to start")
            reload_at = time.monotonic()
            os.kill(upstream.pid, signal.SIGHUP)
            await until(lambda: all(f.ends_after(reload_at) for f in followers), 10,
                        "every stream to end")
            await all_moved_on(followers, by=4)
            return followers, reload_at

    followers, reload_at = run_async(scenario())
    slowest = max(f.ends_after(reload_at)[0] - reload_at for f in followers)
    assert slowest < 2, f"the last stream ended {slowest:.1f} s after the reload"
    assert not any(f.broken for f in followers), "a stream was cut instead of ended"
    assert_counters_continue(followers)
    pid, _ = worker(upstream)
    assert pid != old_pid


def test_without_the_hook_a_reload_waits_for_the_graceful_timeout(gunicorn, nginx, tmp_path):
    # The control for the test above: gunicorn's own behaviour, our hook removed.
    config = tmp_path / "no_hook.conf.py"
    config.write_text("exec(open('gunicorn.conf.py').read())\ndel post_worker_init\n")
    upstream = gunicorn(env={**QUIET, "GRACEFUL_TIMEOUT": "3"}, args=["--config", str(config)])
    proxy = nginx(upstream)

    async def scenario():
        async with following(proxy.url + STREAM, 5) as followers:
            await until(lambda: all(len(f.ids) >= 2 for f in followers), 10, "5 streams")
            reload_at = time.monotonic()
            os.kill(upstream.pid, signal.SIGHUP)
            await until(lambda: all(f.ends_after(reload_at) for f in followers), 10,
                        "every stream to end")
            return followers, reload_at

    followers, reload_at = run_async(scenario())
    first = min(f.ends_after(reload_at)[0] - reload_at for f in followers)
    assert first > 2.5, f"a stream ended {first:.1f} s after the reload"
    assert all(f.broken for f in followers), "cut at the timeout, not ended"


SSE_LINE = re.compile(r"(|retry: \d+|id: \d+|event: \w+|data: .*|: .*)")


def test_stopping_gunicorn_takes_under_5_s_and_ends_streams_cleanly(gunicorn, nginx):
    upstream = gunicorn(env=QUIET)
    proxy = nginx(upstream)
    bodies, errors = [], []

    async def read(client):
        body = ""
        try:
            async with client.stream("GET", proxy.url + STREAM) as response:
                async for text in response.aiter_text():
                    body += text
        except httpx.TransportError as exc:  # an incomplete chunked body lands here
            errors.append(repr(exc))
        bodies.append(body)

    async def scenario():
        async with browsers(CLIENTS) as clients:
            readers = [asyncio.create_task(read(client)) for client in clients]
            await until(lambda: worker(upstream)[1] == CLIENTS, 30, f"{CLIENTS} streams")
            stop_at = time.monotonic()
            upstream.send(signal.SIGTERM)
            await asyncio.gather(*readers)
            await until(lambda: upstream.proc.poll() is not None, 10, "gunicorn to exit")
            return time.monotonic() - stop_at

    took = run_async(scenario())
    assert took < 5, f"gunicorn took {took:.1f} s to exit"
    assert errors == [], f"{len(errors)} streams were cut, e.g. {errors[0]}"
    for body in bodies:
        assert body.endswith("\n\n"), f"a body ends mid-event: {body[-80:]!r}"
        odd = [line for line in body.split("\n") if not SSE_LINE.fullmatch(line)]
        assert odd == [], f"not an event stream: {odd[:3]}"


def test_a_killed_worker_costs_its_clients_a_reconnect_not_an_event(gunicorn, nginx):
    upstream = gunicorn(env=QUIET)
    proxy = nginx(upstream)
    killed_pid, _ = worker(upstream)

    async def scenario():
        async with following(proxy.url + STREAM, CLIENTS) as followers:
            await until(lambda: all(len(f.ids) >= 2 for f in followers), 30,
                        f"{CLIENTS} streams to start")
            os.kill(killed_pid, signal.SIGKILL)
            await until(lambda: all(f.broken for f in followers), 10, "every stream to break")
            await all_moved_on(followers, by=4)
            return followers

    followers = run_async(scenario())
    assert_counters_continue(followers)
    assert worker(upstream)[0] != killed_pid


def test_streams_end_within_their_jittered_lifetime_and_resume(gunicorn, nginx):
    upstream = gunicorn(env={**QUIET, "SSE_MAX_STREAM_SECONDS": "1"})
    proxy = nginx(upstream)

    async def scenario():
        async with following(proxy.url + "/stream?interval=0.1&ping=0", 20) as followers:
            await until(lambda: all(len(f.ended) >= 2 for f in followers), 20,
                        "two lifetimes on every stream")
            return followers

    followers = run_async(scenario())
    lifetimes = [end - start for f in followers  # the last stream of each may still be open
                 for start, end in zip(f.opened, f.ended, strict=False)]
    assert all(0.7 < t < 1.2 for t in lifetimes), sorted(lifetimes)
    assert max(lifetimes) - min(lifetimes) > 0.05, "every stream lived exactly as long"
    assert not any(f.broken for f in followers)
    assert_counters_continue(followers)


def test_an_nginx_reload_closes_old_streams_after_worker_shutdown_timeout(gunicorn, nginx):
    proxy = nginx(gunicorn(env=QUIET),
                  replace=[("worker_shutdown_timeout 10s;", "worker_shutdown_timeout 1s;")])

    async def scenario():
        async with following(proxy.url + "/stream?interval=0.2&ping=0", 5) as followers:
            await until(lambda: all(len(f.ids) >= 2 for f in followers), 10, "5 streams")
            reload_at = time.monotonic()
            proxy.send(signal.SIGHUP)
            await until(lambda: all(f.ends_after(reload_at) for f in followers), 10,
                        "the old nginx workers to let go of every stream")
            await all_moved_on(followers, by=3)
            return followers, reload_at

    followers, reload_at = run_async(scenario())
    held = [f.ends_after(reload_at)[0] - reload_at for f in followers]
    assert all(0.9 < t < 3 for t in held), f"streams held {held} s after the reload"
    assert_counters_continue(followers)


def test_stream_lifetimes_are_off_by_default_and_jittered_below_the_maximum():
    assert Streams(10).start().ends_at == math.inf
    streams = Streams(200, max_seconds=100)
    now = time.monotonic()
    lifetimes = [streams.start().ends_at - now for _ in range(200)]
    assert all(80 <= t <= 100.1 for t in lifetimes)  # 0.1 s of slack for the loop itself
    assert max(lifetimes) - min(lifetimes) > 10


def test_a_stream_ends_cleanly_when_its_worker_is_stopping(app, client):
    response = client.get("/stream?interval=0.05&ping=0")
    chunks = response.iter_encoded()
    assert next(chunks).startswith(b"retry: ")
    assert next(chunks).startswith(b"id: 1\n")
    started = time.monotonic()
    app.extensions["streams"].stop()
    rest = b"".join(chunks)  # the generator returns instead of ticking for ever
    response.close()
    assert time.monotonic() - started < 1
    assert b"event: end" not in rest  # not the end of the data: the client should come back
    assert app.extensions["streams"].count == 0


def test_a_stopping_worker_starts_no_new_stream(app, client):
    app.extensions["streams"].stop()
    response = client.get("/stream?interval=0.05")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "retry: 100\n\n"


def test_the_app_runs_without_gunicorn_and_never_stops_by_itself(client):
    response = client.get("/stream?interval=0.02&ping=0")
    reader = response.iter_encoded()
    assert next(reader).startswith(b"retry: ")
    ids = [next(reader).split(b"\n")[0] for _ in range(5)]
    assert ids == [f"id: {n}".encode() for n in range(1, 6)]  # nothing stopped it
    response.close()


def test_reload_ends_broadcast_streams_at_once_and_cleanly(gunicorn):
    # Broadcast streams wait on their queues, not on a timer: the worker ends them itself.
    upstream = gunicorn(env={**QUIET, "GRACEFUL_TIMEOUT": "10"})
    port = int(upstream.url.rsplit(":", 1)[1])
    sockets = []
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /broadcast HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sockets.append(sock)
    reload_at = time.monotonic()
    os.kill(upstream.pid, signal.SIGHUP)
    for sock in sockets:
        body = b""
        while not body.endswith(b"0\r\n\r\n"):  # the chunked body's clean end
            data = sock.recv(4096)
            assert data, f"a stream was cut, not ended: {body[-80:]!r}"
            body += data
        sock.close()
    took = time.monotonic() - reload_at
    assert took < 2, f"the broadcast streams ended {took:.1f} s after the reload"


def test_reload_ends_every_stream_at_once_while_a_chat_answer_is_in_flight(gunicorn):
    # Without Redis a chat reader stays with its answer on a reload; the other streams of
    # that worker must still end at once, as they do with no chat going.
    upstream = gunicorn(env={**QUIET, "SSE_CHAT_TOKEN_DELAY": "0.05"})
    port = int(upstream.url.rsplit(":", 1)[1])
    chat = socket.create_connection(("127.0.0.1", port), timeout=5)
    body = b'{"messages": [{"role": "user", "content": "hi"}], "stream": true}'
    chat.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert chat.recv(4096).startswith(b"HTTP/1.1 200")
    sockets = []
    for path in ["/stream?interval=1&ping=0", "/broadcast"] * 10:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sockets.append(sock)
    reload_at = time.monotonic()
    os.kill(upstream.pid, signal.SIGHUP)
    for n, sock in enumerate(sockets):
        body = b""
        while not body.endswith(b"0\r\n\r\n"):  # the chunked body's clean end
            sock.settimeout(max(0.01, reload_at + 2 - time.monotonic()))
            try:
                data = sock.recv(4096)
            except TimeoutError:
                raise AssertionError(f"stream {n} of 20 still open 2 s after the reload") from None
            assert data, f"a stream was cut, not ended: {body[-80:]!r}"
            body += data
        sock.close()
    chat.close()
