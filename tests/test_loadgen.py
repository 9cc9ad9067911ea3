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


def broadcast(seq, sent, id="1700000000000-0"):
    """What POST /broadcast sends each subscriber for one of loadgen's marked messages."""
    return chunk(b'id: %s\ndata: "bench:%d:%.6f"\n\n' % (id.encode(), seq, sent))


def test_each_fanout_message_gets_its_own_latency_histogram():
    now = time.time()
    stats, _ = feed([HEAD + chunk(b"retry: 2000\n\n") + broadcast(0, now - 0.3)
                     + chunk(b": heartbeat\n") + broadcast(1, now - 0.05)])
    assert sorted(stats.delivery_by_seq) == [0, 1]
    assert 300 <= stats.delivery_by_seq[0].percentile(50) < 400
    assert 50 <= stats.delivery_by_seq[1].percentile(50) < 150
    assert stats.delivery.count() == 2


def report_with(latencies_ms):
    """A child's report whose deliveries have these latencies, per message seq."""
    stats = loadgen.Stats()
    for seq, values in latencies_ms.items():
        for ms in values:
            stats.delivery_by_seq.setdefault(seq, loadgen.Hist()).add(ms)
            entry = stats.deliveries.setdefault(seq, [0, 0.0])
            entry[0] += 1
            entry[1] = max(entry[1], ms / 1000)
    return {**stats.report(), "cpu_seconds": 0.0, "open": 0}


def test_per_message_histograms_add_up_across_load_processes():
    merged = loadgen.merge([report_with({0: [10, 20]}), report_with({0: [30], 1: [5]})])
    assert merged["delivery_by_seq"][0].count() == 3
    assert merged["delivery_by_seq"][0].percentile(100) == 30
    assert merged["deliveries"] == {0: [3, 0.03], 1: [1, 0.005]}


def test_steady_summary_counts_missing_deliveries_and_prices_the_ones_that_came():
    report = loadgen.merge([report_with({0: [10, 20, 30], 1: [40, 50], 2: [5, 6, 7]})])
    posts = [{"seq": 0, "sent_at_s": 0.0, "status": 202, "answer_ms": 2.0},
             {"seq": 1, "sent_at_s": 1.0, "status": 202, "answer_ms": 80.0},
             {"seq": 2, "sent_at_s": 2.0, "status": 202, "answer_ms": 3.0}]
    summary = loadgen.steady_summary(report, established=3, posts=posts,
                                     server_cpu_seconds=0.008, window_seconds=4.0)
    assert summary["deliveries"] == 8 and summary["expected_deliveries"] == 9
    assert summary["missing_deliveries"] == 1 and not summary["complete"]
    assert [m["missing"] for m in summary["per_message"]] == [0, 1, 0]
    assert summary["cpu_us_per_delivery"] == pytest.approx(1000)
    assert summary["server_busy_fraction"] == pytest.approx(0.002)
    assert (summary["delivery_p50_ms"], summary["delivery_max_ms"]) == (10, 50)
    assert summary["all_have_it_max_ms"] == 50  # the slowest receiver of message 1
    assert (summary["post_answer_p50_ms"], summary["post_answer_max_ms"]) == (3, 80)
    assert summary["post_statuses"] == {"202": 3}


def test_steady_summary_of_a_message_nobody_got():
    posts = [{"seq": 0, "sent_at_s": 0.0, "status": "error: TimeoutError", "answer_ms": 30000.0}]
    summary = loadgen.steady_summary(loadgen.merge([report_with({})]), established=2,
                                     posts=posts, server_cpu_seconds=0.5, window_seconds=6.0)
    assert summary["deliveries"] == 0 and summary["missing_deliveries"] == 2
    assert summary["cpu_us_per_delivery"] is None and summary["delivery_p99_ms"] is None
    assert summary["post_statuses"] == {"error: TimeoutError": 1} and not summary["complete"]


def test_steady_summary_without_a_server_sample_prices_nothing():
    posts = [{"seq": 0, "sent_at_s": 0.0, "status": 202, "answer_ms": 1.0}]
    summary = loadgen.steady_summary(loadgen.merge([report_with({0: [4]})]), established=1,
                                     posts=posts, server_cpu_seconds=None, window_seconds=1.0)
    assert summary["complete"] and summary["deliveries"] == 1
    assert summary["cpu_us_per_delivery"] is None and summary["server_busy_fraction"] is None


def test_the_highest_rate_counts_what_was_published_not_what_was_asked():
    step = {"complete": True, "client_bound": False}
    steps = [{**step, "rate": 5.0, "achieved_rate": 5.0, "delivery_p99_ms": 200},
             {**step, "rate": 50.0, "achieved_rate": 6.5, "delivery_p99_ms": 300},  # POSTs waited
             {**step, "rate": 100.0, "achieved_rate": 90.0, "delivery_p99_ms": 1500}]  # too slow
    assert loadgen.max_rates(steps, p99_limit=1.0) == {
        "max_rate_p99_under_limit": 50.0, "max_achieved_rate_p99_under_limit": 6.5}
    assert loadgen.max_rates([], p99_limit=1.0) == {
        "max_rate_p99_under_limit": None, "max_achieved_rate_p99_under_limit": None}
