"""The reference Server-Sent Events demo for Flask, gunicorn and gevent.

Run it:      gunicorn app:app          (reads gunicorn.conf.py beside this file)
Watch it:    curl -N http://127.0.0.1:8000/stream
Every endpoint is in this file, top to bottom; sse.py holds the wire format,
chat.py the model behind /v1/chat/completions, broker.py the broadcast
between workers.
"""

import functools
import hmac
import json
import math
import os
import random
import threading
import time

from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

import chat
from broker import BrokerUnavailable, MemoryBroker, RedisBroker
from sse import format_event, parse_last_event_id, with_heartbeat

DEFAULTS = {
    # Seconds of silence before a comment is sent. Below every common proxy idle
    # timeout (Nginx 60 s, AWS ALB 60 s, Cloudflare 100 s), and the longest a
    # vanished client can hold its stream open unnoticed.
    "HEARTBEAT": 15,
    # Sent first on every stream: how long EventSource waits before reconnecting.
    "RETRY_MS": 2000,
    # Seconds between named ping events when the client does not ask (?ping=).
    "PING_INTERVAL": 5,
    # Bounds on ?interval=: the low one stops one client from asking for a flood.
    "MIN_INTERVAL": 0.02,
    "MAX_INTERVAL": 3600,
    # Open streams per worker before new ones get 503. Keep it below gunicorn's
    # worker_connections, so the worker can still accept and answer the 503.
    "MAX_STREAMS": 9000,
    # Origins allowed to read the streams from other sites, comma-separated.
    # Empty means same-origin only: CORS stays off unless you name someone.
    "CORS_ORIGINS": "",
    # How many proxies in front of the app set X-Forwarded-*. 0 trusts none,
    # because without a proxy any client could forge those headers.
    "TRUST_PROXY": 0,
    # Send "X-Accel-Buffering: no" so Nginx passes each event on at once.
    # Only the buffering test turns it off, to prove the header matters.
    "X_ACCEL_BUFFERING": True,
    # Seconds between the offline chat model's tokens: about a hosted model's
    # pace, so the typewriter effect looks real. At most HEARTBEAT, because
    # its writes are how it notices a gone client.
    "CHAT_TOKEN_DELAY": 0.03,
    # Largest chat request body in bytes; a bigger one gets 413 unread.
    "CHAT_MAX_BODY": 64 * 1024,
    # Seconds the upstream model may stay silent (connecting, or between two
    # reads) before its stream ends with an error event.
    "CHAT_UPSTREAM_TIMEOUT": 60,
    # The real chat model, used only when a key is set. These three are read
    # from the environment under the OpenAI SDK's own names, without SSE_.
    "OPENAI_API_KEY": "",
    "OPENAI_BASE_URL": "https://api.openai.com/v1",
    "OPENAI_MODEL": "gpt-4o-mini",
    # Seconds after which a stream ends by itself and the client reconnects
    # (0 = never). Each stream draws its lifetime between 80 % and 100 % of it,
    # so clients that connected together (after a restart) do not all come back
    # at once. Spreads clients over new workers and hosts, and ends streams
    # cleanly before a proxy that limits a response's total time cuts them; costs
    # one reconnect per lifetime. (Mercure's hub closes streams after its
    # write_timeout the same way.)
    "MAX_STREAM_SECONDS": 0,
    # Empty: /broadcast lives in this process, right for one worker. Set it
    # (redis://host:6379/0) to broadcast across workers and hosts. Read from
    # REDIS_URL, the name hosting platforms and Redis tools use.
    "REDIS_URL": "",
    # Empty: anyone who can reach the app may POST /broadcast. Set it, from
    # PUBLISH_TOKEN, before exposing the app; POST then needs "Bearer <token>".
    "PUBLISH_TOKEN": "",
    # Messages kept for replay. A client that reconnects with an older
    # Last-Event-ID gets a reset event instead of what it missed.
    "BROADCAST_HISTORY": 1000,
    # Messages queued per subscriber. A client this far behind is disconnected
    # (it reconnects and catches up from the history): memory stays bounded.
    "BROADCAST_QUEUE": 100,
    # Largest POST /broadcast body. With the history it bounds the memory the
    # memory broker (or the Redis stream) keeps: 1000 x 16 KiB = 16 MiB.
    "BROADCAST_MAX_BYTES": 16384,
    # The Redis stream's key: give each app its own when several share a Redis.
    "BROADCAST_STREAM": "sse:broadcast",
}
OPENAI_SETTINGS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL")

# Numeric settings and the smallest value each accepts.
# Longest a stream sleeps before it checks whether its worker is stopping (seconds).
STOP_CHECK = 1.0
WAKE_GRAIN = 0.01

_NUMBERS = {"HEARTBEAT": 0.01, "RETRY_MS": 0, "PING_INTERVAL": 0.01, "MIN_INTERVAL": 0.001,
            "MAX_INTERVAL": 0.001, "MAX_STREAMS": 0, "TRUST_PROXY": 0, "CHAT_TOKEN_DELAY": 0,
            "CHAT_MAX_BODY": 1, "CHAT_UPSTREAM_TIMEOUT": 0.01, "MAX_STREAM_SECONDS": 0}
# Whole-number settings and the smallest value each accepts.
_COUNTS = {"BROADCAST_HISTORY": 1, "BROADCAST_QUEUE": 1, "BROADCAST_MAX_BYTES": 1}


def create_app(config=None):
    """Create the app: defaults, then SSE_* environment variables, then ``config``."""
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("SSE")  # SSE_HEARTBEAT=5 sets HEARTBEAT, parsed as JSON
    app.config.from_mapping({name: os.environ[name] for name in OPENAI_SETTINGS
                             if os.environ.get(name)})
    for name in ("REDIS_URL", "PUBLISH_TOKEN"):  # conventional names, without the prefix
        if name in os.environ:
            app.config[name] = os.environ[name]
    app.config.from_mapping(config or {})
    check_config(app.config)
    app.extensions["open_streams"] = OpenStreams(app.config["MAX_STREAMS"])
    # Chat streams also hold an open_streams slot, so this one never refuses.
    app.extensions["chat_streams"] = OpenStreams(app.config["MAX_STREAMS"])
    app.extensions["chat_model"] = chat.model_from_config(app.config)
    # Set when this worker is asked to stop (gunicorn.conf.py): open streams end
    # at once instead of holding a reload up, and their clients reconnect to a
    # live worker with Last-Event-ID. Importing app.py never sets it.
    app.extensions["stopping"] = threading.Event()
    history, queue_size = app.config["BROADCAST_HISTORY"], app.config["BROADCAST_QUEUE"]
    if app.config["REDIS_URL"]:  # connects on first use, not here
        app.extensions["broker"] = RedisBroker(
            app.config["REDIS_URL"], app.config["BROADCAST_STREAM"], history, queue_size)
    else:
        app.extensions["broker"] = MemoryBroker(history, queue_size)
    if app.config["TRUST_PROXY"]:
        n = app.config["TRUST_PROXY"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n)

    @app.get("/")
    def index():
        """The demo page: every panel is fed by the endpoints below."""
        response = Response(render_template("index.html"))
        # The page runs only its own scripts, so injected markup could not run any.
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        )
        return response

    @app.get("/stream")
    def stream():
        """Counter, random-number and ping events, multiplexed on one stream."""
        cfg = app.config
        interval = query_number("interval", 1.0, cfg["MIN_INTERVAL"], cfg["MAX_INTERVAL"])
        limit = query_number("limit", None, 1, 10**12, integer=True)
        ping = query_number("ping", cfg["PING_INTERVAL"], 0, cfg["MAX_INTERVAL"])
        if 0 < ping < cfg["MIN_INTERVAL"]:
            raise BadParameter("ping", f"ping must be 0 (off) or at least {cfg['MIN_INTERVAL']}")
        # EventSource resends the last id it saw in this header when it reconnects;
        # the query parameter lets a brand-new EventSource resume (it cannot set headers).
        last_id = parse_last_event_id(
            request.headers.get("Last-Event-ID", request.args.get("lastEventId")))
        first = 1 if last_id is None else last_id + 1

        if request.method == "HEAD":  # Flask routes HEAD here too; no body runs, so no slot
            return event_stream_response(iter(()))
        open_streams = app.extensions["open_streams"]
        if not open_streams.acquire():
            return too_many_streams()
        ticker = Ticker(first, interval, limit, ping, cfg["HEARTBEAT"], cfg["RETRY_MS"],
                        stop=app.extensions["stopping"],
                        ends_at=stream_deadline(cfg["MAX_STREAM_SECONDS"]))
        return event_stream_response(
            with_heartbeat(ticker.next_chunk, on_close=open_streams.release))

    @app.post("/v1/chat/completions")
    def chat_completions():
        """OpenAI's chat API, answered by the offline model or, with a key, the real one."""
        messages, stream = chat.read_request(request, app.config["CHAT_MAX_BODY"])
        model = app.extensions["chat_model"]
        if not stream:
            return model.complete(messages)
        open_streams, chat_streams = app.extensions["open_streams"], app.extensions["chat_streams"]
        if not open_streams.acquire():
            return too_many_streams()
        chat_streams.acquire()

        def release():
            chat_streams.release()
            open_streams.release()

        # No "retry:" first, unlike /stream: nobody reconnects a POST, and the
        # openai client would read a retry-only block as an event without JSON.
        answer = model.stream(messages)
        return event_stream_response(with_heartbeat(answer.__next__, on_close=release))

    @app.get("/v1/models")
    def models():
        """The model that answers chat requests, in OpenAI's list shape."""
        name = app.extensions["chat_model"].name
        return {"object": "list",
                "data": [{"id": name, "object": "model", "created": 0, "owned_by": "sse-demo"}]}

    @app.get("/broadcast")
    def broadcast_stream():
        """Every message published from now on; after Last-Event-ID, the missed ones first."""
        broker, open_streams = app.extensions["broker"], app.extensions["open_streams"]
        if not open_streams.acquire():
            return too_many_streams()
        try:
            subscription = broker.subscribe(
                request.headers.get("Last-Event-ID", request.args.get("lastEventId")))
        except BrokerUnavailable:
            open_streams.release()
            return error(503, "the message broker is unavailable, retry later",
                         headers={"Retry-After": "5"})

        def closed():
            broker.unsubscribe(subscription)
            open_streams.release()

        events = retry_first(app.config["RETRY_MS"], subscription.events(app.config["HEARTBEAT"]))
        return event_stream_response(with_heartbeat(events.__next__, on_close=closed))

    @app.post("/broadcast")
    def publish():
        """Publish {"data": any JSON, "event": "name"} to every subscriber; 202 with its id."""
        token = app.config["PUBLISH_TOKEN"]
        if token and not has_bearer_token(token):
            return error(401, "publishing needs the header Authorization: Bearer <PUBLISH_TOKEN>",
                         headers={"WWW-Authenticate": "Bearer"})
        if not request.is_json:
            return error(415, "send the message as JSON, with Content-Type: application/json")
        limit = app.config["BROADCAST_MAX_BYTES"]
        body = request_body(limit)
        if body is None:
            return error(413, f"a message may be at most {limit} bytes of JSON")
        data, event = read_message(body)
        try:
            id = app.extensions["broker"].publish(data, event)
        except BrokerUnavailable:
            return error(503, "the message broker is unavailable; the message was not published",
                         headers={"Retry-After": "5"})
        return {"id": id}, 202

    @app.get("/healthz")
    def healthz():
        """Liveness, and how many streams and broadcast subscribers this worker has open."""
        open_streams, broker = app.extensions["open_streams"], app.extensions["broker"]
        return {"status": "ok", "pid": os.getpid(), "open_streams": open_streams.count,
                "max_streams": open_streams.limit, "broker": broker.name,
                "broadcast_subscribers": broker.subscribers,
                "chat_streams": app.extensions["chat_streams"].count}

    @app.after_request
    def allow_listed_origins(response):
        """Add CORS headers for allow-listed origins only (preflights included)."""
        origin = request.headers.get("Origin")
        allowed = {o.strip() for o in app.config["CORS_ORIGINS"].split(",") if o.strip()}
        if origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            # A long or non-numeric Last-Event-ID makes the browser ask first.
            response.headers["Access-Control-Allow-Headers"] = (
                "Last-Event-ID, Content-Type, Authorization")
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            response.headers["Access-Control-Max-Age"] = "600"
        response.vary.add("Origin")  # caches must not hand one origin's answer to another
        return response

    @app.errorhandler(BadParameter)
    def bad_parameter(exc):
        """A bad query parameter is the client's mistake: 400, naming the parameter."""
        return error(400, str(exc), param=exc.param)

    @app.errorhandler(chat.ChatError)
    def chat_error(exc):
        """A refused chat request (400, 413, 415) or a failed upstream (502, 504)."""
        return error(exc.status, str(exc), param=exc.param)

    @app.errorhandler(HTTPException)
    def http_error_as_json(exc):
        """404, 405 and friends answer in the same JSON shape as every other error."""
        # Keep the exception's own headers, such as a 405's Allow.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error(exc.code, exc.description, headers=headers)

    return app


def event_stream_response(body):
    """Wrap an iterator of SSE bytes (as with_heartbeat yields) in a response with SSE headers.

    ``direct_passthrough`` hands the iterator to the WSGI server as it is.
    Otherwise Werkzeug wraps it in two more layers that touch every event and
    stay on each idle stream's greenlet stack: about 3 KB per open stream.
    """
    response = Response(body, mimetype="text/event-stream", direct_passthrough=True)
    response.headers["Cache-Control"] = "no-cache"
    if current_app.config["X_ACCEL_BUFFERING"]:
        response.headers["X-Accel-Buffering"] = "no"  # Nginx: pass each event on at once
    return response


def retry_first(retry_ms, chunks):
    """Send the reconnect delay before anything else; it also flushes the headers."""
    yield f"retry: {retry_ms}\n\n"
    yield from chunks


class Ticker:
    """What /stream sends, a chunk at a time: the retry field, ticks, pings, the end event.

    The counter event carries the id, so EventSource's Last-Event-ID is always
    the last count it saw; random and ping events carry none (an id field is
    sticky, so they do not change it). Ticks follow a fixed schedule, so a
    stream does not drift; a tick missed while the client was slow is skipped,
    not sent in a burst. The stream also ends, without an end event, when
    ``stop`` is set or at ``ends_at`` (time.monotonic()): the client
    reconnects and resumes.

    A class, not a generator: ``sse.with_heartbeat`` calls ``next_chunk``, and
    an idle stream then holds one paused generator instead of two. Ten
    thousand of these live at once, hence ``__slots__``.
    """

    __slots__ = ("count", "interval", "limit", "ping_every", "heartbeat", "stop", "ends_at",
                 "next_tick", "next_ping", "last_write", "pending", "done")

    def __init__(self, first, interval, limit, ping_every, heartbeat, retry_ms, stop,
                 ends_at=math.inf):
        self.count, self.interval, self.limit = first, interval, limit
        self.ping_every, self.heartbeat, self.stop, self.ends_at = (
            ping_every, heartbeat, stop, ends_at)
        self.next_tick = self.last_write = time.monotonic()
        self.next_ping = self.next_tick + ping_every if ping_every else math.inf
        # First the reconnect delay for EventSource; it also sends the headers at once.
        self.pending = f"retry: {retry_ms}\n\n".encode()
        self.done = limit is not None and first > limit  # resumed after the last event
        if self.done:
            self.pending += self.end_event()

    def next_chunk(self):
        """Wait for the next events and return them; None after an idle heartbeat period."""
        if self.pending:
            chunk, self.pending = self.pending, b""
            return chunk
        if self.done:
            raise StopIteration
        while True:
            now = time.monotonic()
            if now >= self.ends_at or self.stop.is_set():
                raise StopIteration
            wait = min(self.next_tick, self.next_ping, self.ends_at) - now
            if wait <= 0:
                return self.due(now)
            # Never sleep past a heartbeat, because writing is how a dead client
            # is noticed, nor past STOP_CHECK, so a stopping worker's streams end
            # at once. A plain sleep is the cheapest wait gevent has (waiting on
            # `stop` costs twice the CPU per tick), and waking on a WAKE_GRAIN grid
            # lets streams due at nearly the same moment share one turn of the
            # event loop. Events are stamped when written, so nobody sees it.
            wake = now + min(wait, self.heartbeat, STOP_CHECK)
            time.sleep(math.ceil(wake / WAKE_GRAIN) * WAKE_GRAIN - now)
            if time.monotonic() - self.last_write >= self.heartbeat:
                self.last_write = time.monotonic()
                return None

    def due(self, now):
        """The events due at ``now``, as one chunk: one write, one packet."""
        chunk = b""
        if now >= self.next_ping:
            chunk += format_event(json.dumps({"time": utc_now()}), event="ping").encode()
            self.next_ping = max(self.next_ping + self.ping_every, now)
        if now >= self.next_tick:
            chunk += tick_events(self.count, utc_now(), random.randrange(100))
            if self.count == self.limit:
                self.done = True
                return chunk + self.end_event()
            self.count += 1
            self.next_tick = max(self.next_tick + self.interval, now)
        self.last_write = now
        return chunk

    def end_event(self):
        """Tells EventSource the stream is over, so it closes instead of re-running it."""
        return format_event(json.dumps({"reason": "limit", "limit": self.limit}),
                            event="end").encode()


def tick_events(count, stamp, value):
    """One tick's counter and random events, as the bytes gunicorn writes.

    The same bytes as ``format_event(json.dumps({"count": count, "time": stamp}),
    id=count) + format_event(json.dumps({"value": value}), event="random")``
    (tests/test_stream.py checks it), written out because this runs for every
    stream on every tick: integers and an ISO timestamp need no JSON escaping
    and contain no line break, and skipping the general path is most of what
    keeps a tick cheaper than the Express version's.
    """
    return (b'id: %d\ndata: {"count": %d, "time": "%s"}\n\n'
            b'event: random\ndata: {"value": %d}\n\n' % (count, count, stamp.encode(), value))


def stream_deadline(max_seconds):
    """When a new stream should end: a random 80-100 % of ``max_seconds`` from now (0 = never)."""
    if not max_seconds:
        return math.inf
    return time.monotonic() + max_seconds * random.uniform(0.8, 1.0)


def utc_now():
    """The current UTC time in ISO 8601 with milliseconds, e.g. 2026-11-21T15:00:00.123Z."""
    now = time.time()
    return f"{_utc_second(int(now))}.{int(now % 1 * 1000):03d}Z"


@functools.lru_cache(maxsize=2)
def _utc_second(second):
    """The date and time up to the second: thousands of streams tick within each second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class OpenStreams:
    """Count this worker's open streams and refuse new ones past a limit.

    gevent runs one thread per worker and switches greenlets only at I/O, so a
    plain counter is safe here.
    """

    def __init__(self, limit):
        self.limit = limit
        self.count = 0

    def acquire(self):
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def release(self):
        self.count -= 1


class BadParameter(ValueError):
    """A query or body value that is missing, malformed or out of range."""

    def __init__(self, param, message):
        super().__init__(message)
        self.param = param


def query_number(name, default, low, high, integer=False):
    """Read ``?name=`` as a number in [low, high]; a bad one answers 400 naming it."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise BadParameter(name, f"{name} must be {kind}, got {raw!r}") from None
    if not (low <= value <= high):  # also rejects nan; inf fails the high bound
        raise BadParameter(name, f"{name} must be between {low} and {high}, got {raw!r}")
    return value


def request_body(limit):
    """Return the request body, or None when it is longer than ``limit`` bytes."""
    # Werkzeug cuts a chunked body (no Content-Length) short at the maximum without
    # an error: allow one byte more and look, or a cut-off JSON body would answer 400.
    request.max_content_length = limit + 1
    try:
        body = request.get_data()
    except RequestEntityTooLarge:  # the Content-Length said so, before reading
        return None
    return body if len(body) <= limit else None


def read_message(body):
    """Return (data as JSON text, event name or None) from a POST /broadcast body.

    Anything else raises BadParameter (400). NaN and Infinity are refused:
    Python would write them back out, and no browser's JSON.parse reads them.
    """
    try:
        message = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep
        raise BadParameter(None, "the body is not valid JSON") from None
    if not isinstance(message, dict) or "data" not in message:
        raise BadParameter("data", 'send an object like {"data": "hello", "event": "news"}')
    unknown = sorted(message.keys() - {"data", "event"})
    if unknown:  # most likely a typo, which would otherwise be silently ignored
        raise BadParameter(unknown[0], f"unknown field {unknown[0]!r}: only data and event count")
    event = message.get("event")
    if event is not None:
        # A line break would start a new field; "reset" is this server's own notice.
        if not (isinstance(event, str) and 0 < len(event) <= 64 and event.isprintable()):
            raise BadParameter("event", "event must be 1 to 64 characters, none of them a "
                                        "line break or other control character")
        if event == "reset":
            raise BadParameter("event", "the event name reset is reserved for the server")
    # Escaped JSON has no raw line breaks, so data goes out as a single data: line.
    return json.dumps(message["data"], ensure_ascii=False), event


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def has_bearer_token(expected):
    """True when the request carries ``Authorization: Bearer <expected>``.

    compare_digest takes as long for a near miss as for a wild guess, so the
    answer time does not give the token away one character at a time.
    """
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), expected.encode())


def error(status, message, param=None, headers=None):
    """An error answer in OpenAI's JSON shape, used by every endpoint of this app."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return jsonify(body), status, headers or {}


def too_many_streams():
    """503 with Retry-After: the client comes back later instead of hanging now."""
    return error(503, "too many open streams on this worker, retry later",
                 headers={"Retry-After": "5"})


def check_config(config):
    """Fail at start-up, naming the variable, rather than misbehave later."""
    for key, low in _NUMBERS.items():
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
            raise ValueError(f"SSE_{key} must be a number >= {low}, got {value!r}")
    if config["MIN_INTERVAL"] > config["MAX_INTERVAL"]:
        raise ValueError("SSE_MIN_INTERVAL must not exceed SSE_MAX_INTERVAL")
    if not isinstance(config["CORS_ORIGINS"], str):
        raise ValueError("SSE_CORS_ORIGINS must be a comma-separated list of origins")
    if not isinstance(config["X_ACCEL_BUFFERING"], bool):
        raise ValueError("SSE_X_ACCEL_BUFFERING must be true or false")
    if config["CHAT_TOKEN_DELAY"] > config["HEARTBEAT"]:
        raise ValueError("SSE_CHAT_TOKEN_DELAY must not exceed SSE_HEARTBEAT")
    for name in OPENAI_SETTINGS:
        if not isinstance(config[name], str):
            raise ValueError(f"{name} must be a string")
    if not config["OPENAI_BASE_URL"].startswith(("http://", "https://")):
        raise ValueError("OPENAI_BASE_URL must start with http:// or https://")
    for key, low in _COUNTS.items():
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"SSE_{key} must be a whole number >= {low}, got {value!r}")
    url = config["REDIS_URL"]
    if not isinstance(url, str) or (url and not url.startswith(("redis://", "rediss://", "unix://"))):
        # Not echoed: the URL may hold a password.
        raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
    if not isinstance(config["PUBLISH_TOKEN"], str):
        raise ValueError("PUBLISH_TOKEN must be a string")
    if not isinstance(config["BROADCAST_STREAM"], str) or not config["BROADCAST_STREAM"]:
        raise ValueError("SSE_BROADCAST_STREAM must be a non-empty Redis key")


app = create_app()
