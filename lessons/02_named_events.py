"""Lesson 2: named events, ids and the reconnection delay.

An event is a few ``field: value`` lines and a blank line. ``event:`` names it, and
a named event reaches addEventListener(name), not onmessage. ``id:`` is what the
browser sends back when it reconnects (lesson 3). ``retry:`` is how many
milliseconds it waits before it does.

Run: gunicorn -k gevent 02_named_events:app
Try: curl -N http://127.0.0.1:8000/stream
    retry: 2000

    event: tick
    id: 1
    data: 1

    event: tick
    id: 2
    data: 2
"""

import re
import time

from flask import Flask, Response

app = Flask(__name__)

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


@app.get("/")
def page():
    return PAGE


@app.get("/stream")
def stream():
    def events():
        count = 1
        yield format_event(retry=2000)  # no data, so no event: only the reconnect delay
        while True:
            # Each yield is a write. Once the client has gone, a write fails and
            # gunicorn stops this generator: that is how the loop ever ends.
            yield format_event(str(count), event="tick", id=count)
            count += 1
            time.sleep(1)  # the gevent worker runs other clients meanwhile

    return Response(events(), mimetype="text/event-stream", headers=SSE_HEADERS)


PAGE = r"""<!doctype html>
<title>SSE lessons</title>
<pre id="counter"></pre>
<script type="module">
  const show = (id, line) => { document.getElementById(id).textContent += line + "\n"; };
  const source = new EventSource("/stream");
  source.addEventListener("tick", (event) => {
    show("counter", `tick ${event.data} (id ${event.lastEventId})`);
  });
</script>
"""
