"""Load generator for the SSE benchmark: thousands of HTTP/1.1 streams from one core, cheaply.

Each stream is a bare asyncio Protocol (uvloop when installed): it sends one GET,
checks the status line, removes the chunked framing and counts whole events with
bytes.count() instead of parsing them one by one. The delivery lag is the receive
time minus the server's "time" in the last counter event of each read (counter
events carry it in both servers). Every process reports its own CPU time, so a
run can prove the client was not the bottleneck.

Usage (bench/run.py drives it; alone it is handy against a running server):
    python bench/loadgen.py streams 'http://127.0.0.1:8000/stream?interval=1' -n 1000 --duration 10
    python bench/loadgen.py first-bytes 'http://127.0.0.1:8000/stream' --count 200
    python bench/loadgen.py fanout 'http://127.0.0.1:8000/broadcast' -n 1000 --messages 20
    python bench/loadgen.py fanout-steady 'http://127.0.0.1:8000/broadcast' -n 1000 --messages 20

Loopback only: any other host is refused. Every loop is bounded in count and time.
"""

import argparse
import asyncio
import http.client
import json
import math
import re
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # plain asyncio works too, at about twice the CPU per event
    uvloop = None

LOOPBACK = ("127.0.0.1", "localhost")
# A close sends RST instead of FIN: no TIME_WAIT on the client side, so the next
# run can reuse the ~28k ephemeral ports of this one at once.
LINGER_RST = struct.pack("ii", 1, 0)
# How many connections of one process may be between connect() and the response
# headers at once; the rest wait. Keeps the server's accept backlog from overflowing.
IN_FLIGHT = 200
# Per process, comfortably below this machine's 20k open-file cap.
STREAMS_PER_PROCESS = 7000

COUNTER = b'{"count":'  # json.dumps writes {"count": 1, JSON.stringify {"count":1
TIME_KEY = b'"time":'
MARK = b"bench:"  # fan-out messages carry "bench:<seq>:<sent at>", however the server wraps them
MARK_RE = re.compile(rb"bench:(\d+):(\d+\.\d+)")


def parse_url(url):
    """Host, port and request target of a loopback http:// URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK:
        raise SystemExit(f"loadgen talks to http://127.0.0.1 only, not {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return "127.0.0.1", parts.port or 80, target


class Hist:
    """A sparse histogram of milliseconds at 0.1 ms resolution: small, exact enough, mergeable."""

    def __init__(self, buckets=None):
        self.buckets = Counter(buckets or {})

    def add(self, ms):
        self.buckets[max(0, int(ms * 10))] += 1

    def merge(self, other):
        self.buckets.update(other.buckets)

    def count(self):
        return sum(self.buckets.values())

    def percentile(self, p):
        total = self.count()
        if not total:
            return None
        rank = math.ceil(total * p / 100)
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return bucket / 10
        return None

    def summary(self):
        return {"n": self.count(), "p50_ms": self.percentile(50), "p99_ms": self.percentile(99),
                "max_ms": self.percentile(100)}

    def to_json(self):
        return {str(k): v for k, v in self.buckets.items()}

    @classmethod
    def from_json(cls, data):
        return cls({int(k): v for k, v in data.items()})


class ServerClock:
    """Turn '2026-11-21T15:00:00.123Z' into epoch seconds, parsing each second once."""

    def __init__(self):
        self.seconds = {}

    def epoch(self, stamp):
        base = self.seconds.get(stamp[:19])
        if base is None:
            if len(self.seconds) > 10_000:
                self.seconds.clear()
            base = datetime.fromisoformat(stamp[:19].decode() + "+00:00").timestamp()
            self.seconds[stamp[:19]] = base
        return base + int(stamp[20:23]) / 1000


class Stats:
    """What one process saw, counted only inside the measurement window."""

    def __init__(self):
        self.window = (math.inf, math.inf)
        self.opened = self.established = self.ended = 0
        self.failed = Counter()
        self.events = Counter()
        self.count_gaps = 0
        self.bytes = 0
        self.lag = Hist()
        self.first_byte = Hist()
        self.headers = Hist()
        self.first_event = Hist()
        self.deliveries = {}  # fan-out message seq -> [receivers, slowest seconds]
        self.delivery = Hist()
        self.delivery_by_seq = {}  # fan-out message seq -> Hist of its receivers' latencies
        self.clock = ServerClock()

    def report(self):
        return {
            "opened": self.opened, "established": self.established, "ended_by_server": self.ended,
            "failed": dict(self.failed), "events": dict(self.events),
            "count_gaps": self.count_gaps, "bytes": self.bytes,
            "lag": self.lag.to_json(), "first_byte": self.first_byte.to_json(),
            "headers": self.headers.to_json(), "first_event": self.first_event.to_json(),
            "deliveries": {str(k): v for k, v in self.deliveries.items()},
            "delivery": self.delivery.to_json(),
            "delivery_by_seq": {str(k): v.to_json() for k, v in self.delivery_by_seq.items()},
        }


class SSEClient(asyncio.Protocol):
    """One GET, then count the events of the response as they arrive."""

    def __init__(self, stats, request, started):
        self.stats, self.request, self.started = stats, request, started
        self.head = b""  # response head until it is complete, then None
        self.chunked = False
        self.raw = b""  # unparsed chunk framing
        self.left = 0  # bytes of the current chunk still to come
        self.pending = b""  # the start of an event whose end has not arrived
        self.last_count = None
        self.transport = None
        self.ready = asyncio.get_running_loop().create_future()  # headers or failure
        self.first_event = asyncio.get_running_loop().create_future()
        self.closed = False
        self.abandoned = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc):
        self.closed = True
        if not self.ready.done():
            self.stats.failed["closed before headers"] += 1
            self.ready.set_result(False)
        elif not self.abandoned:
            self.stats.ended += 1
        if not self.first_event.done():
            self.first_event.set_result(None)

    def abandon(self):
        """Close with RST; the server sees a vanished client, as after a crash or a lost network."""
        self.abandoned = True
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def data_received(self, data):
        now = time.time()
        stats = self.stats
        in_window = stats.window[0] <= now < stats.window[1]
        if in_window:
            stats.bytes += len(data)
        if self.head is not None:
            if not self.head:
                stats.first_byte.add((now - self.started) * 1000)
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.fail("response head too long")
                return
            head, data = self.head[:end], self.head[end + 4:]
            self.head = None
            status = head[:head.find(b"\r\n")].split(b" ", 2)
            if len(status) < 2 or status[1] != b"200":
                code = status[1].decode(errors="replace") if len(status) > 1 else "?"
                self.fail(f"HTTP {code}")
                return
            self.chunked = b"transfer-encoding: chunked" in head.lower()
            stats.established += 1
            stats.headers.add((now - self.started) * 1000)
            self.ready.set_result(True)
        if self.chunked:
            data = self.dechunk(data)
        text = self.pending + data if self.pending else data
        cut = text.rfind(b"\n\n")
        if cut < 0:
            self.pending = text
            return
        done, self.pending = text[:cut + 2], text[cut + 2:]
        self.count(done, now, in_window)

    def fail(self, reason):
        self.stats.failed[reason] += 1
        if not self.ready.done():
            self.ready.set_result(False)
        self.abandon()

    def dechunk(self, data):
        """Strip HTTP/1.1 chunk framing (RFC 9112, section 7.1) from what arrived."""
        raw = self.raw + data if self.raw else data
        out = []
        pos, size, left = 0, len(raw), self.left  # left: chunk data + its CRLF still to come
        for _ in range(size):  # each pass consumes at least one byte, or stops
            if pos >= size:
                break
            if left:
                take = min(left, size - pos)
                data_bytes = min(take, left - 2)  # the last two bytes are the CRLF
                if data_bytes > 0:
                    out.append(raw[pos:pos + data_bytes])
                pos += take
                left -= take
                continue
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(raw[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if not length:
                break  # the last chunk: the server ended the response
            left = length + 2
        self.raw, self.left = raw[pos:], left
        return out[0] if len(out) == 1 else b"".join(out)

    def count(self, done, now, in_window):
        ticks = done.count(COUNTER)
        if ticks:
            at = done.rfind(COUNTER)
            number = done[at + len(COUNTER):done.find(b",", at)]
            count = int(number)
            if self.last_count is not None and count - self.last_count > ticks:
                if in_window:
                    self.stats.count_gaps += count - self.last_count - ticks
            self.last_count = count
            if not self.first_event.done():
                self.first_event.set_result(now)
                self.stats.first_event.add((now - self.started) * 1000)
            if in_window:
                start = done.find(b'"', done.find(TIME_KEY, at) + len(TIME_KEY)) + 1
                sent = self.stats.clock.epoch(done[start:start + 24])
                self.stats.lag.add((now - sent) * 1000)
        if in_window:
            events = self.stats.events
            events["counter"] += ticks
            events["random"] += done.count(b"event: random\n")
            events["ping"] += done.count(b"event: ping\n")
            events["end"] += done.count(b"event: end\n")
        if MARK in done:
            self.delivered(done, now)

    def delivered(self, done, now):
        for match in MARK_RE.finditer(done):
            latency = now - float(match[2])
            entry = self.stats.deliveries.setdefault(int(match[1]), [0, 0.0])
            entry[0] += 1
            entry[1] = max(entry[1], latency)
            self.stats.delivery.add(latency * 1000)
            self.stats.delivery_by_seq.setdefault(int(match[1]), Hist()).add(latency * 1000)


def request_bytes(target, port):
    return (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").encode()


async def connect(stats, host, port, request, timeout):
    """Open one stream; return its protocol once the headers are in (or it failed)."""
    loop = asyncio.get_running_loop()
    started = time.time()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    sock.setblocking(False)
    stats.opened += 1
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        _, client = await loop.create_connection(
            lambda: SSEClient(stats, request, started), sock=sock)
    except (TimeoutError, OSError) as exc:
        sock.close()
        stats.failed[f"connect: {type(exc).__name__}"] += 1
        return None
    try:
        await asyncio.wait_for(asyncio.shield(client.ready), timeout)
    except TimeoutError:
        client.fail("no headers in time")
    return client


async def open_streams(stats, url, n, rate, timeout):
    """Open n streams at ``rate`` per second, at most IN_FLIGHT in the handshake at once."""
    host, port, target = parse_url(url)
    request = request_bytes(target, port)
    gate = asyncio.Semaphore(IN_FLIGHT)
    clients = []

    async def one():
        async with gate:
            client = await connect(stats, host, port, request, timeout)
        if client is not None:
            clients.append(client)

    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.wait(tasks, timeout=timeout * 2 + 5)
    for task in tasks:
        task.cancel()
    return clients


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def read_command(reader, timeout):
    line = await asyncio.wait_for(reader.readline(), timeout)
    if not line:
        raise SystemExit("the parent went away")
    return line.decode().split()


async def child(args):
    """One load process: open streams, then obey WINDOW / PEEK / REPORT / QUIT from the parent."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stats = Stats()
    clients = await open_streams(stats, args.url, args.n, args.rate, args.timeout)
    say({"ready": True, "established": stats.established, "failed": dict(stats.failed)})
    cpu = {}
    for _ in range(10_000):  # commands are few; the bound only stops a runaway parent
        command = await read_command(reader, args.max_seconds)
        if command[0] == "WINDOW":
            start, end = float(command[1]), float(command[2])
            stats.window = (start, end)
            loop.call_later(max(0.0, start - time.time()), lambda: cpu.update(start=cpu_seconds()))
            loop.call_later(max(0.0, end - time.time()), lambda: cpu.update(end=cpu_seconds()))
        elif command[0] == "REPORT":
            report = stats.report()
            report["cpu_seconds"] = cpu.get("end", cpu_seconds()) - cpu.get("start", 0.0)
            report["open"] = sum(not c.closed for c in clients)
            say(report)
            if stats.deliveries:  # fan-out reports per step: start the next one fresh
                stats.deliveries, stats.delivery, stats.delivery_by_seq = {}, Hist(), {}
        elif command[0] == "PEEK":  # fan-out deliveries so far, without starting afresh
            say({"received": sum(receivers for receivers, _ in stats.deliveries.values())})
        elif command[0] == "QUIT":
            break
    for client in clients:
        client.abandon()


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Fleet:
    """Several child processes that each hold part of the streams, driven over pipes."""

    def __init__(self, url, n, rate=1000.0, timeout=10.0, max_seconds=600.0, per_process=None):
        per_process = per_process or STREAMS_PER_PROCESS
        procs = max(1, math.ceil(n / per_process))
        shares = [n // procs + (i < n % procs) for i in range(procs)]
        self.max_seconds = max_seconds
        self.procs = [
            subprocess.Popen(
                [sys.executable, __file__, "child", url, "-n", str(share),
                 "--rate", str(rate / procs), "--timeout", str(timeout),
                 "--max-seconds", str(max_seconds)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for share in shares if share]
        self.ramp_seconds = None

    def wait_ready(self, timeout):
        started = time.monotonic()
        replies = self.replies(timeout)
        self.ramp_seconds = time.monotonic() - started
        established = sum(r["established"] for r in replies)
        failed = Counter()
        for r in replies:
            failed.update(r["failed"])
        return established, dict(failed)

    def send(self, line):
        for proc in self.procs:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()

    def replies(self, timeout):
        """One JSON line from every child, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        out = {}
        while len(out) < len(self.procs):
            waiting = [p.stdout for i, p in enumerate(self.procs) if i not in out]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(waiting)} load processes did not answer in {timeout} s")
            ready, _, _ = select.select(waiting, [], [], left)
            for i, proc in enumerate(self.procs):
                if proc.stdout in ready:
                    line = proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"load process {proc.pid} exited ({proc.poll()})")
                    out[i] = json.loads(line)
        return [out[i] for i in range(len(self.procs))]

    def report(self, timeout=30):
        self.send("REPORT")
        return merge(self.replies(timeout))

    def received(self, timeout=30):
        """Fan-out deliveries counted so far by all the children."""
        self.send("PEEK")
        return sum(r["received"] for r in self.replies(timeout))

    def close(self):
        for proc in self.procs:
            try:
                proc.stdin.write("QUIT\n")
                proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def merge(reports):
    """Add up the children's reports; histograms merge bucket by bucket."""
    total = {"processes": len(reports), "cpu_seconds_per_process": [], "failed": Counter(),
             "events": Counter(), "deliveries": {}, "delivery_by_seq": {}}
    hists = {k: Hist() for k in ("lag", "first_byte", "headers", "first_event", "delivery")}
    for r in reports:
        for key in ("opened", "established", "ended_by_server", "count_gaps", "bytes", "open"):
            total[key] = total.get(key, 0) + r[key]
        total["cpu_seconds_per_process"].append(r["cpu_seconds"])
        total["failed"].update(r["failed"])
        total["events"].update(r["events"])
        for name, hist in hists.items():
            hist.merge(Hist.from_json(r[name]))
        for seq, (receivers, slowest) in r["deliveries"].items():
            entry = total["deliveries"].setdefault(int(seq), [0, 0.0])
            entry[0] += receivers
            entry[1] = max(entry[1], slowest)
        for seq, buckets in r.get("delivery_by_seq", {}).items():
            total["delivery_by_seq"].setdefault(int(seq), Hist()).merge(Hist.from_json(buckets))
    total["failed"], total["events"] = dict(total["failed"]), dict(total["events"])
    total["cpu_seconds"] = sum(total["cpu_seconds_per_process"])
    total.update(hists)
    return total


def run_streams(url, n, duration, settle=2.0, rate=1000.0, timeout=10.0, sample=None,
                per_process=None):
    """Open n streams, wait ``settle`` s, count for ``duration`` s; ``sample()`` brackets it.

    ``sample(moment)`` (say, the server's CPU and RSS) is called when the streams
    are up ("ramped"), then at the "start" and at the "end" of the window.
    """
    samples = {}
    with Fleet(url, n, rate, timeout, max_seconds=duration + settle + n / rate + 120,
               per_process=per_process) as fleet:
        established, failed = fleet.wait_ready(timeout=n / rate + timeout * 2 + 30)
        if sample:
            samples["ramped"] = sample("ramped")
        start = time.time() + settle
        end = start + duration
        fleet.send(f"WINDOW {start} {end}")
        for name, at in (("start", start), ("end", end)):
            time.sleep(max(0.0, at - time.time()))
            if sample:
                samples[name] = sample(name)
        time.sleep(0.2)  # let the children's end-of-window timers fire
        result = fleet.report()
        result["ramp_seconds"] = fleet.ramp_seconds
    result.update(ramped_established=established, ramp_failed=failed, window_seconds=duration,
                  samples=samples, lag_summary=result["lag"].summary())
    return result


async def first_bytes(url, count, gap, timeout):
    """``count`` sequential streams: time to the first byte, the headers and the first tick."""
    host, port, target = parse_url(url)
    request = request_bytes(target, port)
    stats = Stats()
    for _ in range(count):
        client = await connect(stats, host, port, request, timeout)
        if client is not None:
            try:
                await asyncio.wait_for(asyncio.shield(client.first_event), timeout)
            except TimeoutError:
                stats.failed["no event in time"] += 1
            client.abandon()
        await asyncio.sleep(gap)  # let the server finish closing before the next one
    return {"count": count, "established": stats.established, "failed": dict(stats.failed),
            "first_byte": stats.first_byte.summary(), "headers": stats.headers.summary(),
            "first_event": stats.first_event.summary()}


def publish(conn, target, seq, timeout=10):
    """POST one fan-out message whose text carries its sequence number and send time."""
    body = json.dumps({"data": f"bench:{seq}:{time.time():.6f}"})
    conn.request("POST", target, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status


def run_fanout(url, n, messages, gap, rates=(), step_seconds=5.0, p99_limit=1.0, rate=1000.0,
               timeout=10.0, sample=None, per_process=None):
    """N subscribers; time until all have each message; then the highest rate with p99 under 1 s.

    First ``messages`` POSTs ``gap`` seconds apart; then ``step_seconds`` at each
    of ``rates`` (messages per second) until a step loses a message or its
    delivery p99 passes ``p99_limit`` seconds. ``sample(moment)`` returns the
    server's {"cpu_seconds": ...}, to price each step.
    """
    host, port, target = parse_url(url)
    sample = sample or (lambda moment: {"cpu_seconds": 0.0})
    out = {"subscribers": n}
    with Fleet(url, n, rate, timeout, max_seconds=3600, per_process=per_process) as fleet:
        established, failed = fleet.wait_ready(timeout=n / rate + timeout * 2 + 30)
        out.update(established=established, ramp_failed=failed, ramped=sample("ramped"))
        fleet.send(f"WINDOW 0 {time.time() + 3600}")  # from now on, count everything
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        loadgen_cpu = 0.0

        def measure(seqs, statuses, began, before, linger):
            nonlocal loadgen_cpu
            time.sleep(linger)  # the stragglers of the last message
            report = fleet.report()
            seconds = time.monotonic() - began
            server_cpu = sample("step")["cpu_seconds"] - before["cpu_seconds"]
            step = fanout_summary(report, seqs, established, statuses)
            step.update(
                seconds=round(seconds, 2),
                server_cpu_ms_per_1000_deliveries=server_cpu * 1e6 / max(1, step["delivery"]["n"]),
                loadgen_cpu_fraction=(report["cpu_seconds"] - loadgen_cpu) / seconds)
            loadgen_cpu = report["cpu_seconds"]
            return step

        statuses, began, before = Counter(), time.monotonic(), sample("start")
        for seq in range(messages):
            statuses[publish(conn, target, seq)] += 1
            time.sleep(gap)
        out["one_at_a_time"] = measure(range(messages), statuses, began, before,
                                       min(5.0, 1 + gap))
        out["rates"] = []
        seq = messages
        for per_second in rates:
            statuses, began, before = Counter(), time.monotonic(), sample("start")
            first = seq
            for i in range(int(per_second * step_seconds)):
                time.sleep(max(0.0, began + i / per_second - time.monotonic()))
                statuses[publish(conn, target, seq)] += 1
                seq += 1
            achieved = (seq - first - 1) / max(1e-9, time.monotonic() - began)  # n sends, n-1 gaps
            step = measure(range(first, seq), statuses, began, before, 2.0)
            # Past 90 % of its core the client, not the server, would set the pace.
            step.update(rate=per_second, achieved_rate=round(achieved, 1),
                        client_bound=step["loadgen_cpu_fraction"] > 0.9)
            out["rates"].append(step)
            if (not step["complete"] or step["client_bound"]
                    or (step["delivery_p99_ms"] or 0) > p99_limit * 1000):
                break
        conn.close()
    out.update(max_rates(out["rates"], p99_limit))
    return out


def max_rates(steps, p99_limit):
    """The highest publish rate whose step kept p99 under ``p99_limit`` s: asked for, and taken.

    The rate asked for is not always the rate published: the publisher waits for
    each POST's answer, and a server that answers only after its fan-out (the
    seeds' Express pattern) takes fewer messages a second than asked.
    """
    passing = [s for s in steps if s["complete"] and not s["client_bound"]
               and (s["delivery_p99_ms"] or 0) <= p99_limit * 1000]
    return {"max_rate_p99_under_limit": max((s["rate"] for s in passing), default=None),
            "max_achieved_rate_p99_under_limit": max((s["achieved_rate"] for s in passing),
                                                     default=None)}


def fanout_summary(report, seqs, established, statuses):
    """Per message: when did the last subscriber get it? Then p50/p99 over the messages."""
    slowest = Hist()
    complete = 0
    for seq in seqs:
        receivers, latest = report["deliveries"].get(seq, (0, None))
        if latest is not None:
            slowest.add(latest * 1000)
        complete += receivers >= established
    return {"messages": len(seqs), "post_statuses": {str(k): v for k, v in statuses.items()},
            "all_delivered_messages": complete, "complete": complete == len(seqs),
            "all_have_it": slowest.summary(),
            "delivery_p99_ms": report["delivery"].percentile(99),
            "delivery": report["delivery"].summary()}


def run_fanout_steady(url, n, messages=20, gap=1.0, settle=2.0, linger=5.0, rate=1000.0,
                      timeout=10.0, post_timeout=30.0, sample=None, per_process=None):
    """N subscribers, one POST every ``gap`` s: every delivery timed, every POST answer timed.

    The window opens just before the first POST and closes once every
    subscriber has every message (at the earliest ``messages * gap`` s after
    the first POST, at the latest ``linger`` s after that). ``sample(moment)``
    gives the server's {"cpu_seconds", "rss_kb"} when the subscribers are up
    ("ramped"), and ``settle`` s later at the "start" and at the "end" of the window.
    """
    host, port, target = parse_url(url)
    measured = sample is not None  # alone (from the command line) it cannot see the server
    sample = sample or (lambda moment: {"cpu_seconds": None})
    with Fleet(url, n, rate, timeout, max_seconds=n / rate + messages * (gap + post_timeout) + 300,
               per_process=per_process) as fleet:
        established, failed = fleet.wait_ready(timeout=n / rate + timeout * 2 + 30)
        ramped = sample("ramped")
        time.sleep(settle)
        fleet.send(f"WINDOW {time.time()} {time.time() + 86400}")  # loadgen CPU from now on
        conn = http.client.HTTPConnection(host, port, timeout=post_timeout)
        posts = []
        before = sample("start")
        began = time.monotonic()
        for seq in range(messages):
            # On a fixed schedule: a slow answer delays the next POST, never the ones after it.
            time.sleep(max(0.0, began + seq * gap - time.monotonic()))
            sent_at = time.monotonic() - began
            asked = time.perf_counter()
            try:
                status = publish(conn, target, seq)
            except (OSError, http.client.HTTPException) as exc:  # a timeout is an OSError
                status = f"error: {type(exc).__name__}"
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=post_timeout)
            posts.append({"seq": seq, "sent_at_s": round(sent_at, 4), "status": status,
                          "answer_ms": (time.perf_counter() - asked) * 1000})
        conn.close()
        time.sleep(max(0.0, began + messages * gap - time.monotonic()))
        deadline = time.monotonic() + linger
        while fleet.received() < established * messages and time.monotonic() < deadline:
            time.sleep(0.05)
        after = sample("end")
        window = time.monotonic() - began
        report = fleet.report()
    server_cpu = after["cpu_seconds"] - before["cpu_seconds"] if measured else None
    out = steady_summary(report, established, posts, server_cpu, window)
    out.update(subscribers=n, established=established, ramp_failed=failed,
               ramp_seconds=round(fleet.ramp_seconds, 2), gap=gap,
               samples={"ramped": ramped, "start": before, "end": after},
               ended_by_server=report["ended_by_server"], open_at_end=report["open"],
               loadgen_cpu_fraction=report["cpu_seconds"] / window,
               loadgen_processes=report["processes"])
    return out


def steady_summary(report, established, posts, server_cpu_seconds, window_seconds):
    """What a steady fan-out cost and how it went, from the merged report and the POSTs.

    Every one of the ``established`` subscribers should get every posted
    message: the ones that did not are ``missing_deliveries``. CPU per delivery
    is the server's CPU over the whole window (POSTs, fan-out, idle streams)
    divided by the deliveries that arrived (None when it was not measured).
    """
    by_seq = report["delivery_by_seq"]
    every, slowest, answers = Hist(), Hist(), Hist()
    per_message = []
    for post in posts:
        hist = by_seq.get(post["seq"], Hist())
        receivers = hist.count()
        every.merge(hist)
        answers.add(post["answer_ms"])
        if receivers:
            slowest.add(hist.percentile(100))
        per_message.append({
            "seq": post["seq"], "sent_at_s": post["sent_at_s"], "status": post["status"],
            "answer_ms": round(post["answer_ms"], 2), "receivers": receivers,
            "missing": max(0, established - receivers), "p50_ms": hist.percentile(50),
            "p99_ms": hist.percentile(99), "max_ms": hist.percentile(100)})
    deliveries = every.count()
    statuses = Counter(str(p["status"]) for p in posts)
    missing = sum(m["missing"] for m in per_message)
    return {
        "messages": len(posts), "post_statuses": dict(statuses),
        "deliveries": deliveries, "expected_deliveries": established * len(posts),
        "missing_deliveries": missing,
        "duplicate_deliveries": sum(max(0, m["receivers"] - established) for m in per_message),
        "complete": missing == 0 and statuses.get("202", 0) == len(posts),
        "delivery_p50_ms": every.percentile(50), "delivery_p99_ms": every.percentile(99),
        "delivery_max_ms": every.percentile(100),
        "all_have_it_p50_ms": slowest.percentile(50), "all_have_it_p99_ms": slowest.percentile(99),
        "all_have_it_max_ms": slowest.percentile(100),
        "post_answer_p50_ms": answers.percentile(50), "post_answer_p99_ms": answers.percentile(99),
        "post_answer_max_ms": answers.percentile(100),
        "server_cpu_s": server_cpu_seconds, "window_seconds": round(window_seconds, 3),
        "server_busy_fraction": (server_cpu_seconds / window_seconds
                                 if server_cpu_seconds is not None and window_seconds else None),
        "cpu_us_per_delivery": (server_cpu_seconds * 1e6 / deliveries
                                if server_cpu_seconds is not None and deliveries else None),
        "per_message": per_message,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("streams", "child", "first-bytes", "fanout", "fanout-steady"):
        p = sub.add_parser(name)
        p.add_argument("url")
        p.add_argument("-n", type=int, default=1000, help="streams to hold open")
        p.add_argument("--rate", type=float, default=1000, help="new connections per second")
        p.add_argument("--timeout", type=float, default=10, help="seconds for connect + headers")
        p.add_argument("--duration", type=float, default=10, help="seconds in the window")
        p.add_argument("--settle", type=float, default=2, help="seconds between ramp and window")
        p.add_argument("--count", type=int, default=200, help="first-bytes: connections")
        p.add_argument("--messages", type=int, default=20, help="fanout: messages, one at a time")
        p.add_argument("--gap", type=float, help="fanout: seconds between messages "
                                                  "(default 0.5; fanout-steady: 1)")
        p.add_argument("--max-seconds", type=float, default=600, help="child: wait no longer")
    args = parser.parse_args(argv)
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.mode == "child":
        asyncio.run(child(args))
        return
    if args.mode == "streams":
        result = run_streams(args.url, args.n, args.duration, args.settle, args.rate,
                             args.timeout)
        for key in ("lag", "first_byte", "headers", "first_event", "delivery"):
            result[key] = result[key].summary()
    elif args.mode == "first-bytes":
        result = asyncio.run(first_bytes(args.url, args.count, 0.005, args.timeout))
    elif args.mode == "fanout-steady":
        result = run_fanout_steady(args.url, args.n, args.messages, args.gap or 1.0,
                                   settle=args.settle, rate=args.rate, timeout=args.timeout)
    else:
        result = run_fanout(args.url, args.n, args.messages, args.gap or 0.5, rate=args.rate,
                            timeout=args.timeout)
    json.dump(result, sys.stdout, indent=1, default=str)
    print()


if __name__ == "__main__":
    main()
