"""The reference Server-Sent Events demo for Flask, gunicorn and gevent.

Run it:      gunicorn app:app          (reads gunicorn.conf.py beside this file)
Watch it:    curl -N http://127.0.0.1:8000/stream
Every endpoint is in this file, top to bottom; sse.py holds the wire format.
"""

import json
import math
import os
import random
import time
from datetime import UTC, datetime

from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

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
}

# Numeric settings and the smallest value each accepts.
_NUMBERS = {"HEARTBEAT": 0.01, "RETRY_MS": 0, "PING_INTERVAL": 0.01, "MIN_INTERVAL": 0.001,
            "MAX_INTERVAL": 0.001, "MAX_STREAMS": 0, "TRUST_PROXY": 0}


def create_app(config=None):
    """Create the app: defaults, then SSE_* environment variables, then ``config``."""
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("SSE")  # SSE_HEARTBEAT=5 sets HEARTBEAT, parsed as JSON
    app.config.from_mapping(config or {})
    check_config(app.config)
    app.extensions["open_streams"] = OpenStreams(app.config["MAX_STREAMS"])
    if app.config["TRUST_PROXY"]:
        n = app.config["TRUST_PROXY"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_prefix=n)

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
            return error(503, "too many open streams on this worker, retry later",
                         headers={"Retry-After": "5"})
        ticks = ticker(first, interval, limit, ping, cfg["HEARTBEAT"], cfg["RETRY_MS"])
        return event_stream_response(with_heartbeat(ticks, on_close=open_streams.release))

    @app.get("/healthz")
    def healthz():
        """Liveness, and how many streams this worker has open right now."""
        open_streams = app.extensions["open_streams"]
        return {"status": "ok", "pid": os.getpid(), "open_streams": open_streams.count,
                "max_streams": open_streams.limit}

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

    @app.errorhandler(HTTPException)
    def http_error_as_json(exc):
        """404, 405 and friends answer in the same JSON shape as every other error."""
        return error(exc.code, exc.description)

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


def ticker(first, interval, limit, ping_every, heartbeat, retry_ms):
    """Yield the retry field, each tick's events as one chunk, None when idle, the end event.

    The counter event carries the id, so EventSource's Last-Event-ID is always
    the last count it saw; random and ping events carry none (an id field is
    sticky, so they do not change it). Ticks follow a fixed schedule, so a
    stream does not drift; a tick missed while the client was slow is skipped,
    not sent in a burst.
    """
    # First the reconnect delay for EventSource; it also sends the headers at once.
    yield f"retry: {retry_ms}\n\n"
    n = first
    next_tick = time.monotonic()
    next_ping = next_tick + ping_every if ping_every else math.inf
    while True:
        now = time.monotonic()
        wait = min(next_tick, next_ping) - now
        if wait > 0:
            # Never sleep past a heartbeat: waking up is how a dead client is noticed.
            time.sleep(min(wait, heartbeat))
            if wait > heartbeat:
                yield None
                continue
            now = time.monotonic()
        chunk = ""
        if now >= next_tick:
            if limit is not None and n > limit:
                yield format_event(json.dumps({"reason": "limit", "limit": limit}), event="end")
                return
            chunk += format_event(json.dumps({"count": n, "time": utc_now()}), id=n)
            chunk += format_event(json.dumps({"value": random.randrange(100)}), event="random")
            n += 1
            next_tick = max(next_tick + interval, now)
        if now >= next_ping:
            chunk += format_event(json.dumps({"time": utc_now()}), event="ping")
            next_ping = max(next_ping + ping_every, now)
        if chunk:  # empty when a timer woke us a hair early
            yield chunk


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


app = create_app()
