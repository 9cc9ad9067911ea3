"""/broadcast under real gunicorn (gevent workers) with a real redis-server, read by httpx-sse.

What the Redis broker promises, and these tests check:
- every message reaches every subscriber of every worker of every instance, once, in order;
- a reconnect with a kept Last-Event-ID replays exactly what was missed; an aged-out one
  gets ``event: reset``, then the kept history;
- while Redis is down, POST answers 503 and nothing is published; open streams stay open
  and receive, once and in order, every message published after Redis is back;
- a client that stops reading is dropped; the others keep pace; the worker's memory does not
  grow with what the dropped client did not read.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import redis
from httpx_sse import aconnect_sse, connect_sse
from servers import ROOT, wait_until

UNLIMITED = httpx.Limits(max_connections=None, max_keepalive_connections=None)


def dispatched(event):
    """True for an event a browser would dispatch. httpx-sse also reports the blank line
    after a heartbeat comment once an id was seen, as an event with empty data."""
    return event.data != ""


def worker_pids(master_pid):
    """The gunicorn workers: the processes whose parent is the master."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            # The command name, in parentheses, may hold spaces: split after it.
            if int(stat.rsplit(")", 1)[1].split()[1]) == master_pid:
                pids.append(int(entry.name))
    return sorted(pids)


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def subscribers_by_worker(url, workers, total):
    """{worker pid: broadcast subscribers}, asking /healthz on new connections.

    The kernel hands each new connection to whichever worker accepts first, so
    an idle worker may never answer; once the answers account for all ``total``
    subscribers, the silent workers hold none.
    """
    counts = {}
    async with httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for _ in range(500):
            health = (await c.get(url + "/healthz")).json()
            counts[health["pid"]] = health["broadcast_subscribers"]
            if len(counts) == workers or sum(counts.values()) == total:
                return counts
    raise AssertionError(f"only workers {sorted(counts)} answered /healthz")


async def subscribe(client, url, ready, count, got, headers=None, hold=None):
    """Collect ``count`` messages into ``got``; call ``ready()`` once subscribed.

    With ``hold`` (an asyncio.Event), the stream stays open until it is set.
    """
    async with aconnect_sse(client, "GET", url + "/broadcast", headers=headers or {}) as source:
        assert source.response.status_code == 200
        events = source.aiter_sse()
        first = await anext(events)
        assert first.retry is not None  # sent after the subscription is in place
        ready()
        async for event in events:
            if dispatched(event):
                got.append((event.event, event.id, event.data))
                if len(got) == count:
                    if hold is not None:
                        await hold.wait()
                    return


async def wait_for(condition, tasks, timeout, what):
    """The asyncio twin of servers.wait_until that also fails as soon as a task fails."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                for task in tasks:
                    if task.done() and task.exception():
                        raise task.exception()
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def test_every_message_reaches_200_subscribers_on_two_instances_once_in_order(
        gunicorn, redis_server):
    env = {"REDIS_URL": redis_server.url, "SSE_HEARTBEAT": "2"}
    first = gunicorn(env={**env, "WEB_CONCURRENCY": "3"})
    second = gunicorn(env={**env, "WEB_CONCURRENCY": "1"})
    per_instance, messages = 100, 20

    async def main():
        ready = []
        results = [[] for _ in range(2 * per_instance)]
        async with httpx.AsyncClient(timeout=60, limits=UNLIMITED) as client:
            tasks = [asyncio.create_task(subscribe(
                client, (first, second)[i % 2].url, lambda: ready.append(1), messages, got))
                for i, got in enumerate(results)]
            await wait_for(lambda: len(ready) == len(results), tasks, 60, "every subscriber")
            spread = await subscribers_by_worker(first.url, 3, per_instance)
            sent = []
            for n in range(messages):  # alternate the instance that takes the POST
                response = await client.post((first, second)[n % 2].url + "/broadcast",
                                             json={"data": {"n": n}})
                assert response.status_code == 202
                sent.append(response.json()["id"])
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return results, spread, sent

    results, spread, sent = asyncio.run(main())
    expected = [("message", id, json.dumps({"n": n})) for n, id in enumerate(sent)]
    assert all(got == expected for got in results)
    assert sum(spread.values()) == per_instance
    assert sum(1 for count in spread.values() if count) >= 2, f"one worker took all: {spread}"
    # One reading connection per worker process, however many clients listen.
    clients = redis.Redis.from_url(redis_server.url).client_list()
    assert len(clients) <= 3 * 4 + 1


def test_reconnects_replay_across_workers_and_an_aged_out_id_gets_a_reset(
        gunicorn, redis_server):
    server = gunicorn(env={"REDIS_URL": redis_server.url, "WEB_CONCURRENCY": "2",
                           "SSE_BROADCAST_HISTORY": "5"})

    def post(n):
        response = httpx.post(server.url + "/broadcast", json={"data": n})
        assert response.status_code == 202
        return response.json()["id"]

    def read(count, headers=None, query="", publish=()):
        """Open a stream, publish ``publish`` once subscribed, return ``count`` events."""
        with httpx.Client(timeout=10) as client, connect_sse(
                client, "GET", server.url + "/broadcast" + query, headers=headers or {}) as source:
            events = source.iter_sse()
            assert next(events).retry == 100
            live = [post(n) for n in publish]
            messages = (e for e in events if dispatched(e))
            got = [next(messages) for _ in range(count)]
        return [(e.event, e.id, e.data) for e in got], live

    got, sent = read(2, publish=[0, 1])
    assert got == [("message", sent[0], "0"), ("message", sent[1], "1")]
    missed = [post(2), post(3)]
    # Reconnect (a new connection: often another worker) with the id it saw last.
    got, live = read(3, headers={"Last-Event-ID": sent[1]}, publish=[4])
    assert got == [("message", missed[0], "2"), ("message", missed[1], "3"),
                   ("message", live[0], "4")]
    got, _ = read(2, query=f"?lastEventId={missed[0]}")
    assert [id for _, id, _ in got] == [missed[1], live[0]]

    later = [post(n) for n in range(5, 10)]  # the history holds 5: sent[1] ages out
    got, live = read(7, headers={"Last-Event-ID": sent[1]}, publish=[10])
    name, _, data = got[0]
    assert name == "reset"
    assert json.loads(data) == {"reason": "aged-out", "last_event_id": sent[1],
                                "history_from": later[0]}
    assert [id for _, id, _ in got[1:]] == later + live

    got, _ = read(6, headers={"Last-Event-ID": "not-an-id"})
    assert json.loads(got[0][2])["reason"] == "unknown-id"
    assert [id for _, id, _ in got[1:]] == later[1:] + live


def test_redis_down_then_back_mid_stream(gunicorn, redis_server):
    """Guarantee: open streams survive the outage and get every message published after it."""
    server = gunicorn(env={"REDIS_URL": redis_server.url, "WEB_CONCURRENCY": "2"})
    workers = worker_pids(server.pid)
    assert len(workers) == 2
    count = 20

    async def main():
        ready, results = [], [[] for _ in range(count)]
        async with httpx.AsyncClient(timeout=30, limits=UNLIMITED) as client:
            tasks = [asyncio.create_task(subscribe(
                client, server.url, lambda: ready.append(1), 3, got)) for got in results]
            await wait_for(lambda: len(ready) == count, tasks, 30, "every subscriber")
            before = await client.post(server.url + "/broadcast", json={"data": "before"})
            await wait_for(lambda: all(len(got) == 1 for got in results), tasks, 10, "before")

            await asyncio.to_thread(redis_server.stop)
            down = await client.post(server.url + "/broadcast", json={"data": "lost"})
            resume = await client.get(server.url + "/broadcast",
                                      headers={"Last-Event-ID": before.json()["id"]})
            spread = await subscribers_by_worker(server.url, 2, count)

            await asyncio.to_thread(redis_server.start)  # same port, empty
            after = [await client.post(server.url + "/broadcast", json={"data": f"after-{n}"})
                     for n in (1, 2)]
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return results, before, down, resume, spread, after

    results, before, down, resume, spread, after = asyncio.run(main())
    assert down.status_code == 503
    assert down.headers["retry-after"] == "5"
    assert down.json()["error"]["type"] == "server_error"
    assert "broker is unavailable" in down.json()["error"]["message"]
    assert resume.status_code == 503  # its replay needs Redis; the page retries it
    assert sum(spread.values()) == count, "a stream was closed during the outage"
    assert [r.status_code for r in after] == [202, 202]
    expected = [("message", before.json()["id"], '"before"'),
                ("message", after[0].json()["id"], '"after-1"'),
                ("message", after[1].json()["id"], '"after-2"')]
    # Each list comes from one connection: a stream that had ended would be short.
    assert [got for got in results if got != expected] == []
    assert worker_pids(server.pid) == workers, "a worker crashed and was replaced"


def test_a_client_that_stops_reading_is_dropped_and_memory_stays_bounded(
        gunicorn, redis_server):
    # A short history: each worker keeps one formatted copy of it (for replays), by design;
    # what this test measures is what the dropped client did not read.
    server = gunicorn(env={"REDIS_URL": redis_server.url, "SSE_BROADCAST_QUEUE": "8",
                           "SSE_BROADCAST_HISTORY": "8", "SSE_BROADCAST_MAX_BYTES": "70000",
                           "SSE_HEARTBEAT": "1"})
    (worker,) = worker_pids(server.pid)
    port = int(server.url.rsplit(":", 1)[1])
    payload = "x" * 60_000
    warmup, flood, fast = 20, 300, 3

    def health():
        return httpx.get(server.url + "/healthz").json()

    async def main():
        ready, results, hold = [], [[] for _ in range(fast)], asyncio.Event()
        async with httpx.AsyncClient(timeout=60, limits=UNLIMITED) as client:
            tasks = [asyncio.create_task(subscribe(
                client, server.url, lambda: ready.append(1), warmup + flood, got, hold=hold))
                for got in results]
            await wait_for(lambda: len(ready) == fast, tasks, 30, "the fast subscribers")

            async def publish(n):
                response = await client.post(server.url + "/broadcast",
                                             json={"data": f"{n}:{payload}"})
                assert response.status_code == 202

            for n in range(warmup):  # the allocator grows to its working size
                await publish(n)
            await wait_for(lambda: all(len(got) == warmup for got in results), tasks, 30,
                           "the warm-up messages")
            before = rss_kib(worker)

            slow = socket.socket()
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.connect(("127.0.0.1", port))
            slow.sendall(b"GET /broadcast HTTP/1.1\r\nHost: x\r\n\r\n")  # then never reads
            await asyncio.to_thread(wait_until, lambda: health()["broadcast_subscribers"] == 4,
                                    10, what="the slow subscriber")
            for n in range(warmup, warmup + flood):
                await publish(n)
            await wait_for(lambda: all(len(got) == warmup + flood for got in results), tasks, 60,
                           "the flood to reach the fast subscribers")
            after = rss_kib(worker)
            dropped = health()  # while the fast ones are still connected
            hold.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            slow.close()
        return results, before, after, dropped

    results, before, after, dropped = asyncio.run(main())
    for got in results:  # the fast ones kept pace: everything, in order
        assert [int(data[1:].split(":")[0]) for _, _, data in got] == list(range(warmup + flood))
    assert dropped["broadcast_subscribers"] == fast
    # 300 x 60 kB = 18 MB went past the slow client. Kept for it, the worker would grow by
    # that; dropped, it holds one queue (8 x 60 kB) at most, plus the worker's copy of the
    # history (8 x 60 kB) and the allocator's slack.
    assert after - before < 8 * 1024, f"worker RSS grew from {before} to {after} KiB"


def test_a_chunked_body_is_read_and_over_the_limit_refused_with_413(gunicorn):
    server = gunicorn(env={"SSE_BROADCAST_MAX_BYTES": "100"})

    def body():  # a generator: httpx sends it chunked, with no Content-Length
        yield b'{"data": "'
        yield b"x" * 200
        yield b'"}'

    response = httpx.post(server.url + "/broadcast", content=body(),
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "a message may be at most 100 bytes of JSON"
    small = httpx.post(server.url + "/broadcast", content=iter([b'{"data": ', b'"fits"}']),
                       headers={"Content-Type": "application/json"})
    assert small.status_code == 202


def test_importing_the_app_with_redis_url_starts_no_thread_and_opens_no_socket(redis_server):
    code = """if True:
        import os, threading, app
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:  # the descriptor listdir itself used
                pass
        print(threading.active_count(), sum(link.startswith("socket:") for link in links))
    """
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "REDIS_URL": redis_server.url},
                            timeout=30, check=True)
    assert result.stdout.split() == ["1", "0"]
