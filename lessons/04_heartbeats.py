"""Lesson 4: heartbeats while idle, and cleanup when the client leaves.

A slow stream (?interval=40) is silent between events, and a server hears that its
client has gone only when a write to it fails. So while idle it writes a heartbeat
comment every HEARTBEAT_SECONDS (15, or as set in the environment), and its
``finally`` runs once the client has gone: stop curl with Ctrl-C, and within two
heartbeats gunicorn prints that the stream closed. Two, because the first write
after a client left still succeeds (the kernel takes it); the next one fails.

Run: gunicorn -k gevent 04_heartbeats:app
Try: curl -N 'http://127.0.0.1:8000/stream?interval=40'
    retry: 2000

    event: tick
    id: 1
    data: 1

    : heartbeat
    : heartbeat
    event: tick
    id: 2
    data: 2

and once curl is stopped, gunicorn's terminal shows
    INFO:04_heartbeats:stream closed after event 2
"""

import logging
import os
import re
import time

from flask import Flask, Response, request

app = Flask(__name__)
logging.basicConfig(level=logging.INFO)  # so that app.logger.info() shows in gunicorn's output

# text/event-stream: EventSource accepts no other type. no-cache: nobody may store
# the stream. X-Accel-Buffering: no: Nginx passes each event on at once, unbuffered.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# A line ends at CRLF, CR or LF (https://html.spec.whatwg.org/multipage/server-sent-events.html);
# str.splitlines() also splits on U+2028 and others, which would corrupt such data.
LINE_BREAK = re.compile(r"\r\n|\r|\n")


def format_event(data=None, event=None, id=None, retry=None):
    """One event as wire text: a line per field, then the blank line that dispatches it."""
    fields = (("event", event), ("id", id), ("retry", retry))
    lines = [f"{name}: {value}" for name, value in fields if value is not None]
    if data is not None:  # a data: line per line of data; the browser joins them with \n
        lines += [f"data: {line}" for line in LINE_BREAK.split(data)]
    return "\n".join(lines) + "\n\n"


# Only a failed write tells a server that its client has gone (WSGI has no other
# signal), so an idle stream writes a comment line, which clients ignore. No blank
# line after it: some clients would take that for an empty event. Nginx, too,
# drops an upstream that is silent for 60 s.
HEARTBEAT_SECONDS = float(os.environ.get("HEARTBEAT_SECONDS", "15"))
HEARTBEAT = ": heartbeat\n"


def sleep_with_heartbeats(seconds):
    """Sleep ``seconds``, yielding a heartbeat after each HEARTBEAT_SECONDS of it."""
    deadline = time.monotonic() + seconds
    while deadline - time.monotonic() > HEARTBEAT_SECONDS:
        time.sleep(HEARTBEAT_SECONDS)  # the gevent worker runs other clients meanwhile
        yield HEARTBEAT
    time.sleep(max(0.0, deadline - time.monotonic()))


@app.get("/")
def page():
    return PAGE


@app.get("/stream")
def stream():
    # EventSource sends the last id it saw when it reconnects. A new EventSource
    # cannot set headers, so the page passes ?lastEventId= instead.
    last_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId", "")
    first = int(last_id) + 1 if re.fullmatch(r"[0-9]{1,15}", last_id) else 1
    interval = min(max(request.args.get("interval", 1, type=int), 1), 3600)  # whole seconds

    def events():
        count = first
        try:
            yield format_event(retry=2000)  # no data, so no event: only the reconnect delay
            while True:
                # Each yield is a write. Once the client has gone, a write fails and
                # gunicorn stops this generator: that is how the loop ever ends.
                yield format_event(str(count), event="tick", id=count)
                count += 1
                yield from sleep_with_heartbeats(interval)
        finally:  # however the stream stops, a client leaving included
            app.logger.info("stream closed after event %d", count - 1)

    return Response(events(), mimetype="text/event-stream", headers=SSE_HEADERS)


PAGE = r"""<!doctype html>
<title>SSE lessons</title>
<pre id="counter"></pre>
<script type="module">
  const show = (id, line) => { document.getElementById(id).textContent += line + "\n"; };
  const source = new EventSource("/stream" + location.search);
  source.addEventListener("tick", (event) => {
    show("counter", `tick ${event.data} (id ${event.lastEventId})`);
  });
</script>
"""
