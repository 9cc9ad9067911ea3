"""Read /stream from Python, and resume where you left off when the connection drops.

Usage:
    python examples/consume.py [URL]          (default http://127.0.0.1:8000/stream)

A browser's EventSource reconnects by itself and sends ``Last-Event-ID``; a
Python client must do it explicitly. httpx-sse parses the wire format (it
follows the WHATWG rules); this loop adds what EventSource adds: wait
``retry`` milliseconds, reconnect, send the last id seen, stop on ``end``.
"""

import json
import sys
import time

import httpx
from httpx_sse import connect_sse


def consume(url, on_event=print, give_up_after=30.0):
    """Print every event from ``url``, reconnecting with Last-Event-ID until the stream ends."""
    last_id, retry_ms, down_since = None, 2000, None
    # No read timeout of our own would be shorter than the server's 15 s
    # heartbeat, so silence for a minute means the connection is dead.
    timeout = httpx.Timeout(5.0, read=60.0)
    with httpx.Client(timeout=timeout) as client:
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(client, "GET", url, headers=headers) as source:
                    source.response.raise_for_status()
                    down_since = None
                    for event in source.iter_sse():
                        retry_ms = event.retry or retry_ms
                        if event.id:
                            last_id = event.id
                        if event.event == "end":
                            return
                        if event.data:  # a bare "retry:" block carries no event
                            on_event(event.event, event.id, json.loads(event.data))
            except httpx.HTTPError as exc:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > give_up_after:
                    raise
                print(f"# connection lost ({exc.__class__.__name__}); "
                      f"resuming after id {last_id} in {retry_ms} ms", file=sys.stderr)
            time.sleep(retry_ms / 1000)


if __name__ == "__main__":
    consume(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/stream",
            on_event=lambda name, id, data: print(name, id or "-", data, flush=True))
