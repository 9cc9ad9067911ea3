r"""Lesson 7: a ChatGPT-style answer, streamed to a POST and read with fetch().

EventSource can only GET, and a chat sends its prompt in a POST body. The route,
the chunks and the closing [DONE] copy OpenAI's chat completions, so the official
openai client reads this too: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-").

Run: gunicorn -k gevent 07_chat:app
Try: curl -N -X POST http://127.0.0.1:8000/v1/chat/completions \
       -H 'Content-Type: application/json' -d '{"messages": [{"role": "user", "content": "hi"}]}'
    data: {"choices": [{"index": 0, "delta": {"content": "You"}}]}

    data: {"choices": [{"index": 0, "delta": {"content": " said:"}}]}

    data: {"choices": [{"index": 0, "delta": {"content": " hi"}}]}

    data: [DONE]
"""

import contextlib
import json
import logging
import os
import queue
import re
import time

from flask import Flask, Response, request

app = Flask(__name__)
MAX_MESSAGE = 64 * 1024  # bytes: a message, not an upload
# One byte more: Werkzeug cuts a chunked body (no Content-Length) off at this size
# without an error, so a body that reaches it was too long. Over a Content-Length: 413.
app.config["MAX_CONTENT_LENGTH"] = MAX_MESSAGE + 1
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


subscribers = set()  # a queue per open /broadcast stream, in this worker process only


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
    limit = request.args.get("limit", type=int)  # None: count for ever

    def events():
        count = first
        try:
            yield format_event(retry=2000)  # no data, so no event: only the reconnect delay
            while limit is None or count <= limit:
                # Each yield is a write. Once the client has gone, a write fails and
                # gunicorn stops this generator: that is how the loop ever ends.
                yield format_event(str(count), event="tick", id=count)
                count += 1
                yield from sleep_with_heartbeats(interval)
            # Tell the page it is over, or EventSource reconnects; with a data line,
            # as an event without one is never dispatched.
            yield format_event("limit reached", event="end")
        finally:  # however the stream stops, a client leaving included
            app.logger.info("stream closed after event %d", count - 1)

    return Response(events(), mimetype="text/event-stream", headers=SSE_HEADERS)


@app.get("/broadcast")
def broadcast():
    def events():
        # Subscribe in the generator, not the view: a response nobody reads (HEAD)
        # never starts it, so it never reaches the finally that unsubscribes.
        inbox = queue.Queue(maxsize=100)  # bounded: a client that stops reading holds 100
        subscribers.add(inbox)
        try:
            yield format_event(retry=2000)  # the headers go out now: this client is subscribed
            while True:
                try:  # the timeout keeps heartbeats going while nobody publishes
                    yield format_event(inbox.get(timeout=HEARTBEAT_SECONDS))
                except queue.Empty:
                    yield HEARTBEAT
        finally:
            subscribers.discard(inbox)
            app.logger.info("subscriber left, %d remain", len(subscribers))

    return Response(events(), mimetype="text/event-stream", headers=SSE_HEADERS)


@app.post("/broadcast")
def publish():
    body = request.get_data()
    if len(body) > MAX_MESSAGE:
        return f"a message may be at most {MAX_MESSAGE} bytes\n", 413
    message = body.decode(errors="replace")
    for inbox in list(subscribers):
        with contextlib.suppress(queue.Full):  # a client 100 messages behind misses this one
            inbox.put_nowait(message)
    return {"subscribers": len(subscribers)}


@app.post("/v1/chat/completions")
def chat_completions():
    try:  # a body that is not JSON at all gets Flask's own 415 or 400
        prompt = str(request.get_json()["messages"][-1]["content"])
    except (KeyError, IndexError, TypeError):
        return {"error": {"message": "messages must end with one that has content"}}, 400

    def events():  # always streamed, as if the request said "stream": true
        for word in re.findall(r"\s*\S+", f"You said: {prompt}"):
            yield format_event(json.dumps({"choices": [{"index": 0, "delta": {"content": word}}]}))
            time.sleep(0.05)
        yield format_event("[DONE]")  # not JSON: clients look for it before parsing

    return Response(events(), mimetype="text/event-stream", headers=SSE_HEADERS)


PAGE = r"""<!doctype html>
<title>SSE lessons</title>
<pre id="counter"></pre>
<pre id="messages"></pre>
<form id="chat"><input name="prompt" value="Tell me a story"> <button>Ask</button></form>
<pre id="answer"></pre>
<script type="module">
  const show = (id, line) => { document.getElementById(id).textContent += line + "\n"; };
  const source = new EventSource("/stream" + location.search);
  source.addEventListener("tick", (event) => {
    show("counter", `tick ${event.data} (id ${event.lastEventId})`);
  });
  // Without close(), EventSource reconnects after retry ms and gets "end" again, for ever.
  source.addEventListener("end", () => { source.close(); show("counter", "end"); });
  const broadcast = new EventSource("/broadcast");
  broadcast.onmessage = (event) => show("messages", event.data);

  // EventSource cannot POST, so fetch() reads the answer. Each event here is one data:
  // line, so splitting on blank lines is enough; the real app's static/sse-parser.js
  // follows the spec in full.
  const answer = document.getElementById("answer");
  document.getElementById("chat").onsubmit = async (event) => {
    event.preventDefault();
    answer.textContent = "";
    const messages = [{ role: "user", content: event.target.prompt.value }];
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ stream: true, messages }),
    });
    if (!response.ok) return show("answer", await response.text());  // e.g. a 400
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (let read = await reader.read(); !read.done; read = await reader.read()) {
      buffer += decoder.decode(read.value, { stream: true });  // a character may span reads
      const events = buffer.split("\n\n");
      buffer = events.pop();  // the last one is not finished yet
      for (const data of events.map((text) => text.slice("data: ".length))) {
        if (data === "[DONE]") return;
        answer.textContent += JSON.parse(data).choices[0].delta.content ?? "";
      }
    }
  };
</script>
"""
