"""bench/loadgen.py's stream parser: whatever way TCP splits the bytes, the counts are the same."""

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import loadgen  # noqa: E402  (bench/ is not a package)

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(text):
    return b"%X\r\n%s\r\n" % (len(text), text)


def stamp(seconds):
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def feed(pieces):
    """Run an SSEClient over ``pieces`` inside an open window; return its stats."""

    async def run():
        stats = loadgen.Stats()
        stats.window = (0, float("inf"))
        client = loadgen.SSEClient(stats, b"", time.time())
        for piece in pieces:
            client.data_received(piece)
        return stats, client

    return asyncio.run(run())


def wire(ticks, sent, lost=()):
    """What /stream sends: retry, then per tick one chunk with counter + random, pings apart."""
    body = chunk(b"retry: 2000\n\n")
    for n in range(1, ticks + 1):
        if n in lost:
            continue
        body += chunk(b'id: %d\ndata: {"count": %d, "time": "%s"}\n\nevent: random\n'
                      b'data: {"value": 7}\n\n' % (n, n, stamp(sent).encode()))
        if n % 3 == 0:
            body += chunk(b'event: ping\ndata: {"time": "%s"}\n\n' % stamp(sent).encode())
    return HEAD + body


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50, 4096])
def test_counts_do_not_depend_on_how_reads_split_the_bytes(size):
    data = wire(ticks=10, sent=time.time() - 0.5)
    stats, client = feed([data[i:i + size] for i in range(0, len(data), size)])
    assert stats.established == 1
    assert dict(stats.events) == {"counter": 10, "random": 10, "ping": 3, "end": 0}
    assert stats.count_gaps == 0
    assert client.pending == b"" and client.raw == b"" and client.left == 0


def test_lag_is_receive_time_minus_the_server_stamp():
    stats, _ = feed([wire(ticks=1, sent=time.time() - 0.25)])
    lag = stats.lag.percentile(50)
    assert 250 <= lag < 250 + 100  # the stamp drops the sub-millisecond part


def test_a_lost_tick_is_reported_as_a_gap():
    data = wire(ticks=5, sent=time.time(), lost={3})
    stats, _ = feed([data[i:i + 7] for i in range(0, len(data), 7)])
    assert stats.events["counter"] == 4 and stats.count_gaps == 1


def test_a_refusal_counts_as_failed_not_established():
    stats, _ = feed([b"HTTP/1.1 503 SERVICE UNAVAILABLE\r\nContent-Length: 2\r\n\r\n{}"])
    assert stats.established == 0 and stats.failed == {"HTTP 503": 1}


def test_fanout_messages_are_found_however_the_server_wraps_them():
    sent = time.time() - 0.1
    event = b'event: broadcast\ndata: {"data": "bench:4:%.6f"}\n\n' % sent
    stats, _ = feed([HEAD + chunk(event)])
    receivers, slowest = stats.deliveries[4]
    assert receivers == 1 and 0.1 <= slowest < 1


def test_histogram_percentiles():
    hist = loadgen.Hist()
    for ms in range(1, 101):
        hist.add(ms)
    assert (hist.percentile(50), hist.percentile(99), hist.percentile(100)) == (50, 99, 100)
    assert loadgen.Hist.from_json(hist.to_json()).count() == 100


def test_only_loopback_is_allowed():
    with pytest.raises(SystemExit):
        loadgen.parse_url("http://example.com/stream")
    assert loadgen.parse_url("http://127.0.0.1:8000/stream?interval=1") == (
        "127.0.0.1", 8000, "/stream?interval=1")
