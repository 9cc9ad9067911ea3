"""What one client can do to the others, under real gunicorn: nothing it holds is unbounded.

Each test here is an attack that once worked (HEADs that leaked stream slots,
clients that left or stopped reading and kept their slots, bodies dripped a
byte at a time, chunked bodies with broken framing, too few open files, a stop
held up by keep-alive) and now meets a bound, a clear answer, or both.
"""

import asyncio
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servers import run_async, wait_until


def health(server):
    return httpx.get(server.url + "/healthz", timeout=5).json()


def port_of(server):
    return int(server.url.rsplit(":", 1)[1])


def raw_stream(server, path, rcvbuf=None):
    """A socket that sent ``GET path`` and read the status line; it reads no further."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port_of(server)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert sock.recv(12) == b"HTTP/1.1 200"
    return sock


@pytest.mark.parametrize("behind_nginx", [False, True], ids=["direct", "through-nginx"])
def test_head_requests_hold_nothing_on_any_stream_route(gunicorn, nginx, behind_nginx):
    upstream = gunicorn(env={"SSE_MAX_STREAMS": "2"})
    url = nginx(upstream).url if behind_nginx else upstream.url
    for path in ["/stream", "/broadcast"] * 3:  # a leak would fill the cap of 2 at once
        response = httpx.head(url + path, timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert (health(upstream)["open_streams"], health(upstream)["broadcast_subscribers"]) == (0, 0)
    with httpx.stream("GET", url + "/broadcast", timeout=5) as response:
        assert response.status_code == 200  # the slots are all still free


def test_a_client_that_closes_is_let_go_at_once_not_at_a_heartbeat(gunicorn):
    server = gunicorn(env={"SSE_HEARTBEAT": "60"})  # a write would notice only after minutes
    sockets = [raw_stream(server, path) for path in
               ["/stream?interval=3600&ping=0", "/broadcast"] * 50]
    assert health(server)["open_streams"] == 100
    for sock in sockets:
        sock.close()
    # The socket is watched: its end of file is seen within the loop's next turn.
    wait_until(lambda: health(server)["open_streams"] == 0, timeout=2,
               what="every stream to be released")
    assert health(server)["broadcast_subscribers"] == 0


def test_clients_that_stop_reading_are_cut_off_after_the_write_timeout(gunicorn):
    server = gunicorn(env={"SSE_WRITE_TIMEOUT": "1", "SSE_BROADCAST_MAX_BYTES": "70000",
                           "SSE_BROADCAST_QUEUE": "4", "SSE_HEARTBEAT": "60"})
    stalled = [raw_stream(server, "/broadcast", rcvbuf=4096) for _ in range(20)]
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", server.url + "/broadcast") as reader:
            lines = reader.iter_lines()
            wait_until(lambda: health(server)["broadcast_subscribers"] == 21, timeout=5,
                       what="21 subscribers")
            for _ in range(12):  # 12 x 60 kB: more than a small socket buffer and a queue
                response = client.post(server.url + "/broadcast", json={"data": "x" * 60_000})
                assert response.status_code == 202
                assert next(line for line in lines if line.startswith("data: "))
            # Their writes block on a full window; TCP_USER_TIMEOUT ends them 1 s later.
            # The slack covers the kernel's zero-window probe timer.
            wait_until(lambda: health(server)["open_streams"] == 1, timeout=15,
                       what="the stalled streams to be cut off")
    for sock in stalled:
        sock.close()
    assert "Traceback" not in Path(server.log.name).read_text()  # not one per stalled client


def test_a_write_timeout_is_logged_in_one_line():
    import logging
    import runpy

    config = runpy.run_path("gunicorn.conf.py")
    try:
        raise TimeoutError(110, "Connection timed out")
    except TimeoutError:
        record = logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1,
                                   "Socket error processing request.", (), sys.exc_info())
    assert config["one_line_for_stalled_clients"](record)
    assert record.getMessage() == (
        "closed a connection whose client stopped reading: [Errno 110] Connection timed out")
    assert (record.levelname, record.exc_info) == ("INFO", None)


def drip(server, path, seconds_per_byte, give_up_after=6, length=10_000):
    """POST ``path`` announcing ``length`` bytes, send one byte per interval; return the reply.

    Stops when the server answers and closes, or after ``give_up_after`` seconds.
    """
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=5)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode())
    reply, deadline = b"", time.monotonic() + give_up_after
    while time.monotonic() < deadline:
        if select.select([sock], [], [], seconds_per_byte)[0]:
            data = sock.recv(4096)
            if not data:  # the server closed the connection
                break
            reply += data
        else:
            try:
                sock.send(b" ")
            except OSError:  # closed under us
                break
    sock.close()
    return reply


@pytest.mark.parametrize("path", ["/broadcast", "/v1/chat/completions"])
def test_a_body_dripped_a_byte_at_a_time_gets_408_and_the_connection_closes(gunicorn, path):
    server = gunicorn(env={"SSE_BODY_TIMEOUT": "1"})
    started = time.monotonic()
    reply = drip(server, path, seconds_per_byte=0.1)
    took = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), f"after {took:.1f} s: {reply[:200]}"
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["message"] == "the request body did not arrive within 1 s"
    assert took < 3, f"the connection stayed open {took:.1f} s"  # 1 s, and slack for a busy CI


def read_to_end(sock):
    """Everything the server sends until it closes; fail if it keeps the connection open."""
    reply = b""
    try:
        while data := sock.recv(4096):
            reply += data
    except TimeoutError:
        raise AssertionError(f"the connection stayed open after {reply[:200]!r}") from None
    return reply


# A chunk longer than its size says, and a size that is not hexadecimal: gunicorn's reader
# raises its own errors, which once reached the app as a 500 and a traceback.
BROKEN_CHUNKS = [b'5\r\n{"data": 1}\r\n0\r\n\r\n', b'zz\r\n{"data": 1}\r\n0\r\n\r\n']


@pytest.mark.parametrize("path", ["/broadcast", "/v1/chat/completions"])
def test_a_broken_chunked_body_gets_400_and_the_connection_closes(gunicorn, path):
    server = gunicorn()
    for body in BROKEN_CHUNKS:
        sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=5)
        # Where a broken body ends cannot be told: what follows is never read as a request.
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Transfer-Encoding: chunked\r\n\r\n".encode() + body
                     + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = read_to_end(sock)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
        assert reply.count(b"HTTP/1.1 ") == 1, "a second request was read from the connection"
        error = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["message"].startswith("the request body could not be read: "), error
        assert error["type"] == "invalid_request_error"
    log = Path(server.log.name).read_text()
    assert "Traceback" not in log
    assert len(re.findall(r"\[INFO\] streams: a request body could not be read", log)) == 2


@pytest.mark.parametrize("keepalive", ["1", "0"])  # 0 would wait for ever: it counts as 1
def test_headers_trickled_a_line_at_a_time_are_cut_off_after_keepalive(gunicorn, keepalive):
    server = gunicorn(env={"KEEPALIVE": keepalive})
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    started = time.monotonic()
    while not select.select([sock], [], [], 0.2)[0] and time.monotonic() - started < 6:
        sock.sendall(b"X-Slow: 1\r\n")  # never the blank line that ends the headers
    closed_after = time.monotonic() - started
    assert sock.recv(100) == b""  # closed, not answered
    sock.close()
    assert closed_after < 3, f"the connection stayed open {closed_after:.1f} s"  # 1 s + slack


def test_the_stream_cap_follows_a_low_open_file_limit(gunicorn):
    server = gunicorn(open_files=256)
    limit = health(server)["max_streams"]
    assert 0 < limit < 256  # files are kept for everything that is not a stream
    log = Path(server.log.name).read_text()
    # In gunicorn's format, as every line of the worker: "[date] [pid] [WARNING] streams: ..."
    assert re.search(rf"\[WARNING\] streams: the open-file limit is 256: this worker holds "
                     rf"at most {limit} streams", log), log[-2000:]

    async def main():
        async def one():
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            writer.write(b"GET /stream?interval=5&ping=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            status = (await reader.readline()).split()[1]
            return status, writer

        answers = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(limit + 50))), 30)
        statuses = [status for status, _ in answers]
        healthy = httpx.get(server.url + "/healthz", timeout=5).status_code
        for _, writer in answers:
            writer.close()
        return statuses, healthy

    statuses, healthy = run_async(main())
    # Every client got an answer, none hung: the streams up to the cap, 503 for the rest.
    assert (statuses.count(b"200"), statuses.count(b"503")) == (limit, 50)
    assert healthy == 200


def test_a_stop_is_not_held_up_by_clients_keeping_their_connections_alive(gunicorn):
    server = gunicorn(env={"SSE_HEARTBEAT": "5"})
    clients = 1000

    async def main():
        async def one():
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            writer.write(b"GET /stream?interval=1&ping=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            opened.append(1)
            # Read to the end of the chunked body, then keep the connection, as a browser does.
            body = await reader.readuntil(b"\r\n0\r\n\r\n")
            ended.append(body)
            return writer

        opened, ended = [], []
        tasks = [asyncio.create_task(one()) for _ in range(clients)]
        while len(opened) < clients:
            await asyncio.sleep(0.05)
        stop_at = time.monotonic()
        server.send(signal.SIGTERM)
        writers = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        while server.proc.poll() is None and time.monotonic() - stop_at < 15:
            await asyncio.sleep(0.05)
        took = time.monotonic() - stop_at
        for writer in writers:
            writer.close()
        return took, len(ended)

    took, ended = run_async(main())
    assert ended == clients  # every stream ended cleanly, with the chunked end
    # graceful_timeout is 5 s: without closing kept-alive connections the worker waited it out.
    assert took < 5, f"gunicorn took {took:.1f} s to stop"


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_a_message_that_cannot_be_sent_is_refused_and_cuts_no_stream(gunicorn, redis_server,
                                                                      broker):
    env = {"REDIS_URL": redis_server.url} if broker == "redis" else {}
    server = gunicorn(env=env)
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", server.url + "/broadcast") as stream:
            lines = stream.iter_lines()
            for body in ['{"data": "\\ud800"}', '{"data": 1e400}', '{"data": -1e999}',
                         '{"data": 1, "event": "\\udfff"}']:
                response = client.post(server.url + "/broadcast", content=body,
                                       headers={"Content-Type": "application/json"})
                assert response.status_code == 400, body
                assert response.json()["error"]["type"] == "invalid_request_error"
            assert client.post(server.url + "/broadcast", json={"data": "fine"}).status_code == 202
            # The same connection, still open: the refused ones never reached it.
            assert next(line for line in lines if line.startswith("data: ")) == 'data: "fine"'


class Recorder:
    """A socket that keeps what is sent."""

    def __init__(self):
        self.sent = b""

    def sendall(self, data):
        self.sent += bytes(data)


class Request:
    def __init__(self, method):
        self.method, self.version, self.headers = method, (1, 1), []

    def should_close(self):
        return False


@pytest.mark.parametrize(("method", "headers"), [
    ("GET", [("Content-Type", "text/event-stream")]),  # chunked: the short path
    ("HEAD", [("Content-Type", "text/event-stream")]),  # no body at all
    ("GET", [("Content-Length", "6")]),  # not chunked, and cut at its length
])
def test_the_short_chunk_write_sends_the_bytes_gunicorn_would(method, headers, monkeypatch):
    import runpy

    from gunicorn import util
    from gunicorn.config import Config
    from gunicorn.http import wsgi

    monkeypatch.setattr(util, "http_date", lambda: "Tue, 01 Dec 2026 00:00:00 GMT")
    faster = runpy.run_path("gunicorn.conf.py")["chunk_writing_response"](wsgi.Response)
    wire = []
    for response_class in (wsgi.Response, faster):
        sock = Recorder()
        response = response_class(Request(method), sock, Config())
        response.start_response("200 OK", headers)
        for chunk in [b"retry: 100\n\n", b"", b"id: 1\ndata: \xc3\xa9\n\n", b"tail"]:
            response.write(chunk)
        response.close()
        wire.append(sock.sent)
    assert wire[0] == wire[1]
    assert (b"\r\n0\r\n\r\n" in wire[1]) == (method == "GET" and headers[0][0] != "Content-Length")


# --- gunicorn terminating TLS itself (--certfile, --keyfile) ----------------------------------

@pytest.fixture
def tls_gunicorn(tmp_path):
    """gunicorn serving HTTPS itself with a self-signed certificate; stopped by its PID after."""
    from servers import OPENSSL_CERT, ROOT, free_port, need

    (tmp_path / ".nginx").mkdir()
    subprocess.run([need("openssl"), *OPENSSL_CERT[1:]], cwd=tmp_path, check=True,
                   capture_output=True)
    started = []

    def start(env=None):
        port = free_port()
        cmd = [sys.executable, "-m", "gunicorn", "app:app", "--bind", f"127.0.0.1:{port}",
               "--certfile", str(tmp_path / ".nginx/localhost.crt"),
               "--keyfile", str(tmp_path / ".nginx/localhost.key")]
        log = open(tmp_path / f"gunicorn-tls-{port}.log", "w")
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)

        def healthy():
            try:
                return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False,
                                 timeout=1).json()
            except httpx.HTTPError:
                return None

        proc.health = wait_until(healthy, timeout=20, what="gunicorn to answer over TLS")
        proc.port = port
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)


def tls_socket(port):
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))


def read_until(sock, done):
    """Read until ``done(bytes so far)``; an SSL error before (plain bytes over TLS) fails."""
    body = b""
    while not done(body):
        try:
            data = sock.recv(4096)
        except ssl.SSLError as exc:
            raise AssertionError(f"the TLS stream broke ({exc}) after {body[-60:]!r}") from None
        assert data, f"closed after {body[-60:]!r}"
        body += data
    return body


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/stream?interval=0.5&ping=0", "/broadcast"])
def test_over_tls_a_stopping_worker_ends_its_streams_cleanly(tls_gunicorn, path):
    server = tls_gunicorn()
    sock = tls_socket(server.port)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    body = sock.recv(4096)
    assert body.startswith(b"HTTP/1.1 200")
    os.kill(server.health["pid"], signal.SIGTERM)  # what a reload sends the worker
    read_until(sock, lambda rest: (body + rest).endswith(b"\r\n0\r\n\r\n"))  # chunked end


@pytest.mark.integration
def test_over_tls_a_dripped_body_still_gets_a_readable_408(tls_gunicorn):
    server = tls_gunicorn(env={"SSE_BODY_TIMEOUT": "0.5"})
    sock = tls_socket(server.port)
    sock.sendall(b"POST /broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 50\r\n\r\n{")
    reply = read_until(sock, lambda got: b"\r\n\r\n" in got)
    assert reply.startswith(b"HTTP/1.1 408")


def test_a_subscriber_dropped_mid_write_ends_once_that_write_is_done_not_a_heartbeat_later(
        gunicorn):
    # A subscriber is dropped when its queue is full: when its greenlet is stuck writing to
    # a client that reads slowly. So the drop's wake-up comes while it writes, not sleeps.
    server = gunicorn(env={"SSE_HEARTBEAT": "10", "SSE_BROADCAST_QUEUE": "2"})
    slow = raw_stream(server, "/broadcast", rcvbuf=4096)  # reads nothing for now
    wait_until(lambda: health(server)["broadcast_subscribers"] == 1, what="the subscriber")
    payload = "x" * 16_000
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for n in range(40):  # at most 640 kB: far more than the socket buffers hold
            assert client.post("/broadcast", json={"data": f"{n}:{payload}"}).status_code == 202
            if health(server)["broadcast_subscribers"] == 0:
                break
    assert health(server)["broadcast_subscribers"] == 0, "the slow subscriber was not dropped"
    slow.settimeout(30)
    reading_from, body = time.monotonic(), b""
    while not body.endswith(b"\r\n0\r\n\r\n"):  # now it reads all, as fast as it can
        data = slow.recv(65536)
        assert data, "the stream was cut, not ended"
        body += data
    took = time.monotonic() - reading_from
    slow.close()
    assert took < 3, f"the dropped stream ended {took:.1f} s after its client caught up"


def test_the_send_buffer_is_bounded_on_a_socket_without_tcp_options():
    # gunicorn bound to a unix socket behind nginx (bind = "unix:/run/gunicorn.sock"), or a
    # system without TCP_USER_TIMEOUT: the write timeout cannot be set, the send buffer can.
    from streams import SEND_BUFFER, Streams

    server_side, client_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with server_side, client_side:
        stream = Streams(10).start()
        stream.watch(server_side)
        assert server_side.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * SEND_BUFFER
        stream.close()
