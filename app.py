"""The reference Server-Sent Events demo for Flask, gunicorn and gevent.

Run it:      gunicorn app:app          (reads gunicorn.conf.py beside this file)
Watch it:    curl -N http://127.0.0.1:8000/stream
Every endpoint is in this file, top to bottom; sse.py holds the wire format,
chat.py the model behind /v1/chat/completions.
"""

import json
import math
import os
import random
import threading
import time
from datetime import UTC, datetime

from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

import chat
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
}
OPENAI_SETTINGS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL")

# Numeric settings and the smallest value each accepts.
_NUMBERS = {"HEARTBEAT": 0.01, "RETRY_MS": 0, "PING_INTERVAL": 0.01, "MIN_INTERVAL": 0.001,
            "MAX_INTERVAL": 0.001, "MAX_STREAMS": 0, "TRUST_PROXY": 0, "CHAT_TOKEN_DELAY": 0,
            "CHAT_MAX_BODY": 1, "CHAT_UPSTREAM_TIMEOUT": 0.01, "MAX_STREAM_SECONDS": 0}


def create_app(config=None):
    """Create the app: defaults, then SSE_* environment variables, then ``config``."""
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("SSE")  # SSE_HEARTBEAT=5 sets HEARTBEAT, parsed as JSON
    app.config.from_mapping({name: os.environ[name] for name in OPENAI_SETTINGS
                             if os.environ.get(name)})
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

        open_streams = app.extensions["open_streams"]
        if not open_streams.acquire():
            return too_many_streams()
        ticks = ticker(first, interval, limit, ping, cfg["HEARTBEAT"],
                       stop=app.extensions["stopping"],
                       ends_at=stream_deadline(cfg["MAX_STREAM_SECONDS"]))
        body = with_heartbeat(retry_first(cfg["RETRY_MS"], ticks), on_close=open_streams.release)
        return event_stream_response(body)

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
        return event_stream_response(with_heartbeat(model.stream(messages), on_close=release))

    @app.get("/v1/models")
    def models():
        """The model that answers chat requests, in OpenAI's list shape."""
        name = app.extensions["chat_model"].name
        return {"object": "list",
                "data": [{"id": name, "object": "model", "created": 0, "owned_by": "sse-demo"}]}

    @app.get("/healthz")
    def healthz():
        """Liveness, and how many streams this worker has open right now."""
        open_streams = app.extensions["open_streams"]
        return {"status": "ok", "pid": os.getpid(), "open_streams": open_streams.count,
                "max_streams": open_streams.limit,
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
    """Wrap an iterator of SSE text in a response with the three headers SSE needs."""
    response = Response(body, mimetype="text/event-stream")  # adds "; charset=utf-8"
    response.headers["Cache-Control"] = "no-cache"
    if current_app.config["X_ACCEL_BUFFERING"]:
        response.headers["X-Accel-Buffering"] = "no"  # Nginx: pass each event on at once
    return response


def retry_first(retry_ms, chunks):
    """Send the reconnect delay before anything else; it also flushes the headers."""
    yield f"retry: {retry_ms}\n\n"
    yield from chunks


def ticker(first, interval, limit, ping_every, heartbeat, stop, ends_at=math.inf):
    """Yield each tick's events as one chunk, None per idle heartbeat, then the end event.

    The counter event carries the id, so EventSource's Last-Event-ID is always
    the last count it saw; random and ping events carry none (an id field is
    sticky, so they do not change it). Ticks follow a fixed schedule, so a
    stream does not drift; a tick missed while the client was slow is skipped,
    not sent in a burst.

    The stream also ends, without an end event, when ``stop`` is set or at
    ``ends_at`` (time.monotonic()): the client reconnects and resumes.
    """
    n = first
    end = format_event(json.dumps({"reason": "limit", "limit": limit}), event="end")
    if limit is not None and n > limit:  # resumed after the last event: nothing to re-run
        yield end
        return
    next_tick = time.monotonic()
    next_ping = next_tick + ping_every if ping_every else math.inf
    while not stop.is_set():
        now = time.monotonic()
        if now >= ends_at:
            return
        wait = min(next_tick, next_ping, ends_at) - now
        if wait > 0:
            # Wait on `stop` rather than sleep, so a stopping worker ends its
            # streams at once. Never wait past a heartbeat: waking up is how a
            # dead client is noticed.
            if stop.wait(min(wait, heartbeat)):
                return
            if wait > heartbeat:
                yield None
                continue
            now = time.monotonic()
        chunk = ""
        if now >= next_ping:
            chunk += format_event(json.dumps({"time": utc_now()}), event="ping")
            next_ping = max(next_ping + ping_every, now)
        if now >= next_tick:
            chunk += format_event(json.dumps({"count": n, "time": utc_now()}), id=n)
            chunk += format_event(json.dumps({"value": random.randrange(100)}), event="random")
            if n == limit:
                yield chunk + end
                return
            n += 1
            next_tick = max(next_tick + interval, now)
        if chunk:  # empty when a timer woke us a hair early
            yield chunk


def stream_deadline(max_seconds):
    """When a new stream should end: a random 80-100 % of ``max_seconds`` from now (0 = never)."""
    if not max_seconds:
        return math.inf
    return time.monotonic() + max_seconds * random.uniform(0.8, 1.0)


def utc_now():
    """The current UTC time in ISO 8601 with milliseconds, e.g. 2026-11-21T15:00:00.123Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


app = create_app()
