"""Lesson 1: the counter from the Express posts, in Flask: a view that returns a generator.

Flask writes out each ``yield`` as it comes, so the response never ends, and each
``data: ...`` line with a blank line after it is one message for the browser's
EventSource. gunicorn's gevent worker gives every client a greenlet of its own;
its default sync worker would serve one stream at a time.

Run: gunicorn -k gevent 01_counter:app
Try: curl -N http://127.0.0.1:8000/stream
    data: 1

    data: 2

    data: 3

and so on, one a second, until Ctrl-C.
"""

import time

from flask import Flask, Response

app = Flask(__name__)

# text/event-stream: EventSource accepts no other type. no-cache: nobody may store
# the stream. X-Accel-Buffering: no: Nginx passes each event on at once, unbuffered.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@app.get("/")
def page():
    return PAGE


@app.get("/stream")
def stream():
    def events():
        count = 1
        while True:
            # Each yield is a write. Once the client has gone, a write fails and
            # gunicorn stops this generator: that is how the loop ever ends.
            yield f"data: {count}\n\n"
            count += 1
            time.sleep(1)  # the gevent worker runs other clients meanwhile

    return Response(events(), mimetype="text/event-stream", headers=SSE_HEADERS)


PAGE = r"""<!doctype html>
<title>SSE lessons</title>
<pre id="counter"></pre>
<script type="module">
  const show = (id, line) => { document.getElementById(id).textContent += line + "\n"; };
  const source = new EventSource("/stream");
  source.onmessage = (event) => show("counter", event.data);
</script>
"""
