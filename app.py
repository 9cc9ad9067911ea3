"""Server-Sent Events with Flask, gunicorn and gevent: every endpoint of the demo, in order.

Run:  gunicorn app:app          (gunicorn.conf.py beside this file: one gevent worker)
Try:  curl -N http://127.0.0.1:8000/stream

An event stream is a response that does not end: a view returns a generator,
and every ``yield format_event(...)`` is one event on the wire. Beside this
file: sse.py (the wire format), streams.py (the cap, the clock, and how a
stream ends), broker.py (broadcast), chat.py (the chat model), settings.py.
"""

import functools
import hmac
import json
import math
import os
import random
import re
import time

from flask import Blueprint, Flask, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

import chat
import settings
from answers import AnswerNotFound, MemoryAnswers, RedisAnswers, StoreUnavailable, TooManyAnswers
from broker import BrokerUnavailable, MemoryBroker, RedisBroker
from sse import HEARTBEAT, format_event, parse_json, parse_last_event_id
from streams import (
    RESERVED_FILES,
    BodyTimeout,
    BodyUnreadable,
    Streams,
    TooManyStreams,
    body_deadline,
    event_stream,
    read_body,
)

bp = Blueprint("sse", __name__)


@bp.get("/")
def index():
    """The demo page: every panel is fed by the endpoints below."""
    return render_template("index.html"), {
        # The page runs only its own scripts, so injected markup could not run any.
        "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                                   "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                                   "frame-ancestors 'none'",
        # Fresh each time, and never kept by a shared cache: its URLs depend on the request.
        "Cache-Control": "private, no-cache",
    }


@bp.get("/stream")
def stream():
    """Counter, random-number and ping events on one response that never ends."""
    config = current_app.config
    interval = query_number("interval", 1.0, config["MIN_INTERVAL"], config["MAX_INTERVAL"])
    limit = query_number("limit", None, 1, 10**12, whole=True)
    ping_every = query_number("ping", config["PING_INTERVAL"], config["MIN_INTERVAL"],
                              config["MAX_INTERVAL"], or_zero=True)  # 0: no pings
    # A reconnecting EventSource sends the last id it saw: carry on after it.
    # A new one cannot set headers, so ?lastEventId= works too.
    last_id = parse_last_event_id(request.headers.get("Last-Event-ID",
                                                      request.args.get("lastEventId")))
    first = 1 if last_id is None else last_id + 1

    def events(stream):
        # First the reconnect delay; it also sends the headers at once.
        yield format_event(retry=config["RETRY_MS"])
        count = first
        next_tick = last_write = time.monotonic()
        next_ping = next_tick + ping_every if ping_every else math.inf
        while limit is None or count <= limit:
            now = stream.sleep_until(min(next_tick, next_ping, last_write + config["HEARTBEAT"]))
            if stream.ended:  # the worker stops, the client left, or the lifetime is up
                return  # no end event: EventSource reconnects and resumes
            chunk = b""
            if now >= next_ping:
                chunk += format_event(json={"time": utc_now()}, event="ping")
                while next_ping <= now:
                    next_ping += ping_every
            if now >= next_tick:
                # The id goes on the counter only: the browser sends it back on reconnect.
                chunk += format_event(json={"count": count, "time": utc_now()}, id=count)
                chunk += format_event(json={"value": random.randrange(100)}, event="random")
                count += 1
                while next_tick <= now:  # ticks missed while the worker was busy are skipped
                    next_tick += interval
            # One write per wake-up. With nothing due, a comment: proxies see
            # traffic, and writing to a vanished client fails, which ends the stream.
            yield chunk or HEARTBEAT
            last_write = now
        # Tells the page the stream is over, so it closes instead of reconnecting.
        yield format_event(json={"reason": "limit", "limit": limit}, event="end")

    return event_stream(events)


@bp.post("/v1/chat/completions")
def chat_completions():
    """OpenAI's chat API, answered by the offline model or, with a key, the real one.

    A streamed answer is generated in the background and kept a while, its
    chunks numbered by their SSE ids: if the connection drops, the client
    re-attaches with GET .../<id>/stream and Last-Event-ID, and nothing is
    generated twice.
    """
    with body_deadline(current_app.config["BODY_TIMEOUT"]):
        messages, wants_stream = chat.read_request(request, current_app.config["CHAT_MAX_BODY"])
    model, answers = current_app.extensions["chat_model"], current_app.extensions["answers"]
    if not wants_stream:
        return model.complete(messages)
    id, heartbeat = chat.new_id(), current_app.config["HEARTBEAT"]

    def events(stream):
        refuse_if_restarting(stream, answers)
        answers.start(model.stream(messages, id), id, model.name)  # 503 when this worker is full
        yield from answer_events(answers, id, 0, stream, heartbeat)

    return event_stream(events, lifetime=False, kind="chat")  # never cut for its age


@bp.get("/v1/chat/completions/<completion_id>/stream")
def chat_completion_stream(completion_id):
    """Re-attach to an answer: the chunks after Last-Event-ID (or all), live ones, then [DONE]."""
    answers, heartbeat = current_app.extensions["answers"], current_app.config["HEARTBEAT"]
    after = parse_last_event_id(request.headers.get("Last-Event-ID",
                                                    request.args.get("lastEventId"))) or 0

    def events(stream):
        refuse_if_restarting(stream, answers)
        yield from answer_events(answers, completion_id, after, stream, heartbeat)

    return event_stream(events, lifetime=False, kind="chat")


@bp.post("/v1/chat/completions/<completion_id>/cancel")
def cancel_chat_completion(completion_id):
    """Stop generating an answer; its readers get a last chunk and [DONE]."""
    status = current_app.extensions["answers"].cancel(completion_id)
    if status is None:
        raise AnswerNotFound(completion_id)
    return {"id": completion_id, "object": "chat.completion", "status": status}


@bp.get("/v1/models")
def models():
    """The model that answers chat requests, in OpenAI's list shape."""
    name = current_app.extensions["chat_model"].name
    return {"object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "sse-demo"}]}


@bp.get("/broadcast")
def broadcast_stream():
    """Every message published from now on; after Last-Event-ID, the missed ones first."""
    config, broker = current_app.config, current_app.extensions["broker"]
    last_id = request.headers.get("Last-Event-ID", request.args.get("lastEventId"))

    def events(stream):
        with broker.subscribe(last_id, wake=stream.wake) as inbox:
            yield format_event(retry=config["RETRY_MS"])  # sent once the subscription is in place
            while True:
                if not inbox.pending:  # sleep until a message comes, or a heartbeat is due
                    stream.wait_until(time.monotonic() + config["HEARTBEAT"])
                if stream.ended or inbox.dropped:  # dropped: a whole queue behind
                    return  # EventSource reconnects with Last-Event-ID and catches up
                yield inbox.take() or HEARTBEAT

    return event_stream(events, kind="broadcast")


@bp.post("/broadcast")
def publish():
    """Publish {"data": any JSON, "event": "name"} to every subscriber; 202 with its id."""
    token = current_app.config["PUBLISH_TOKEN"]
    if token and not has_bearer_token(token):
        return error(401, "publishing needs the header Authorization: Bearer <PUBLISH_TOKEN>",
                     headers={"WWW-Authenticate": "Bearer"})
    if not request.is_json:
        return error(415, "send the message as JSON, with Content-Type: application/json")
    limit = current_app.config["BROADCAST_MAX_BYTES"]
    body = request_body(limit)
    if body is None:
        return error(413, f"a message may be at most {limit} bytes of JSON")
    data, event = read_message(body)
    try:
        id = current_app.extensions["broker"].publish(data, event)
    except BrokerUnavailable:
        return error(503, "the message broker is unavailable; the message was not published",
                     headers={"Retry-After": "5"})
    return {"id": id}, 202


@bp.get("/healthz")
def healthz():
    """Liveness, and how many streams and broadcast subscribers this worker has open."""
    streams, broker = current_app.extensions["streams"], current_app.extensions["broker"]
    return {"status": "ok", "pid": os.getpid(), "open_streams": streams.count,
            "max_streams": streams.limit, "broker": broker.name,
            "broadcast_subscribers": broker.subscribers, "chat_streams": streams.kinds["chat"],
            "chat_answers": current_app.extensions["answers"].count}


# --- Errors: every one answers in the same JSON shape (OpenAI's) ----------------------------

@bp.app_errorhandler(TooManyStreams)
def too_many_streams(exc):
    """503 with Retry-After: the client comes back later instead of hanging now."""
    return error(503, "too many open streams on this worker, retry later",
                 headers={"Retry-After": "5"})


@bp.app_errorhandler(BrokerUnavailable)
def broker_unavailable(exc):
    return error(503, "the message broker is unavailable, retry later",
                 headers={"Retry-After": "5"})


@bp.app_errorhandler(AnswerNotFound)
def answer_not_found(exc):
    return error(404, f"no chat completion {exc.args[0]!r} here: it is unknown, or expired")


@bp.app_errorhandler(TooManyAnswers)
def too_many_answers(exc):
    return error(503, "this worker keeps as many chat answers as it may, retry later",
                 headers={"Retry-After": "5"})


@bp.app_errorhandler(StoreUnavailable)
def store_unavailable(exc):
    return error(503, "the store of chat answers is unavailable, retry later",
                 headers={"Retry-After": "5"})


class Restarting(Exception):
    """This worker is stopping, and another can serve the request: answer 503."""


@bp.app_errorhandler(Restarting)
def restarting(exc):
    return error(503, "this worker is restarting, retry in a moment", headers={"Retry-After": "1"})


@bp.app_errorhandler(BodyTimeout)
def body_too_slow(exc):
    """408: the body did not arrive in time. The connection closes after this answer."""
    seconds = current_app.config["BODY_TIMEOUT"]
    return error(408, f"the request body did not arrive within {seconds} s")


@bp.app_errorhandler(BodyUnreadable)
def body_unreadable(exc):
    """400: the body's framing is broken. The connection closes after this answer."""
    return error(400, f"the request body could not be read: {exc}")


class BadParameter(ValueError):
    """A query or body value that is missing, malformed or out of range."""

    def __init__(self, param, message):
        super().__init__(message)
        self.param = param


@bp.app_errorhandler(BadParameter)
def bad_parameter(exc):
    """A bad query parameter is the client's mistake: 400, naming the parameter."""
    return error(400, str(exc), param=exc.param)


@bp.app_errorhandler(chat.ChatError)
def chat_error(exc):
    """A refused chat request (400, 413, 415) or a failed upstream (502, 504)."""
    return error(exc.status, str(exc), param=exc.param)


@bp.app_errorhandler(HTTPException)
def http_error_as_json(exc):
    """404, 405 and friends answer in the same JSON shape as every other error."""
    # Keep the exception's own headers, such as a 405's Allow.
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return error(exc.code, exc.description, headers=headers)


def error(status, message, param=None, headers=None):
    """An error answer in OpenAI's JSON shape, used by every endpoint of this app."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return jsonify(body), status, headers or {}


@bp.after_app_request
def allow_listed_origins(response):
    """Add CORS headers for allow-listed origins only (preflights included)."""
    origin = request.headers.get("Origin")
    allowed = {o.strip() for o in current_app.config["CORS_ORIGINS"].split(",") if o.strip()}
    if origin in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        # A long or non-numeric Last-Event-ID makes the browser ask first.
        response.headers["Access-Control-Allow-Headers"] = (
            "Last-Event-ID, Content-Type, Authorization")
        response.headers["Access-Control-Allow-Methods"] = "GET, POST"
        response.headers["Access-Control-Max-Age"] = "600"
    response.vary.add("Origin")  # caches must not hand one origin's answer to another
    return response


# --- What the views share ----------------------------------------------------------------------

def refuse_if_restarting(stream, answers):
    """A stopping worker still accepts for a moment; with Redis, send chat clients elsewhere."""
    if stream.ended and answers.shared:
        raise Restarting()


def answer_events(answers, completion_id, after, stream, heartbeat):
    """A chat answer as SSE: its chunks after number ``after``, live ones, then [DONE].

    Each chunk's number is its id, so a client that drops re-attaches with
    Last-Event-ID and misses nothing. The heartbeat is a comment line with no
    blank line after it: the openai client reads a blank line after an id as
    an event with no data, and fails on it.
    """
    with answers.attach(completion_id, wake=stream.wake) as reader:  # 404 when unknown
        last_write = 0.0  # long ago: with nothing to send yet, a heartbeat goes out at once
        while True:
            chunks, end = reader.since(after)
            if chunks:
                yield b"".join(format_event(text, id=n) for n, text in
                               enumerate(chunks, start=after + 1))
                after, last_write = after + len(chunks), time.monotonic()
                continue
            if end == "done":
                yield format_event("[DONE]")  # and the response ends
                return
            if end == "lost":
                yield format_event(chat.compact_json(chat.error_chunk(
                    "the answer was lost: the worker generating it stopped, or Redis lost chunks, "
                    "before the end")))
            if end is not None:  # "error": its last chunk was the error event
                return
            # With answers in Redis, a stopping worker's readers re-attach elsewhere.
            if stream.gone or (stream.ended and answers.shared):
                return
            if time.monotonic() - last_write >= heartbeat:
                yield HEARTBEAT
                last_write = time.monotonic()
                continue  # a chunk may have come while the heartbeat was written
            stream.wait_until(min(last_write + heartbeat, time.monotonic() + (reader.poll or
                                                                             heartbeat)))


def utc_now():
    """The current UTC time in ISO 8601 with milliseconds, e.g. 2026-11-21T15:00:00.123Z."""
    now = time.time()
    return f"{_utc_second(int(now))}.{int(now % 1 * 1000):03d}Z"


@functools.lru_cache(maxsize=2)
def _utc_second(second):
    """The date and time to the second: thousands of streams tick within each one."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


# Plain ASCII decimals: float() and int() would also take 1_000, ١٢ or ＱＱ's digits.
_NUMBER = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)")
_WHOLE = re.compile(r"-?[0-9]+")


def query_number(name, default, low, high, whole=False, or_zero=False):
    """Read ``?name=`` as a number in [low, high] (or 0); a bad one answers 400 naming it."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (_WHOLE if whole else _NUMBER).fullmatch(raw) or len(raw) > 30:
        kind = "a whole number" if whole else "a number"
        raise BadParameter(name, f"{name} must be {kind} in plain digits, got {raw[:40]!r}")
    value = int(raw) if whole else float(raw)
    if not (low <= value <= high or (or_zero and value == 0)):
        zero = "0 or " if or_zero else ""
        raise BadParameter(name, f"{name} must be {zero}between {low} and {high}, got {raw!r}")
    return value


def request_body(limit):
    """Return the request body, or None when it is longer than ``limit`` bytes."""
    # Werkzeug cuts a chunked body (no Content-Length) short at the maximum without
    # an error: allow one byte more and look, or a cut-off JSON body would answer 400.
    request.max_content_length = limit + 1
    try:
        with body_deadline(current_app.config["BODY_TIMEOUT"]):
            body = read_body(request)
    except RequestEntityTooLarge:  # the Content-Length said so, before reading
        return None
    return body if len(body) <= limit else None


# Event names the browser itself fires on an EventSource, and this server's own notice.
RESERVED_EVENTS = {"error": "EventSource fires it when the connection fails",
                   "open": "EventSource fires it when the connection opens",
                   "reset": "this server sends it when missed messages are gone"}


def read_message(body):
    """Return (data as JSON text, event name or None) from a POST /broadcast body.

    Anything else raises BadParameter (400). Refused: NaN, Infinity and
    numbers too large for a double, which no browser's JSON.parse reads back
    as sent, and text that is not valid Unicode (a lone surrogate such as
    "\\ud800" is valid JSON but cannot be sent as UTF-8).
    """
    try:
        message = parse_json(body)
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep
        raise BadParameter(None, "the body is not valid JSON, or holds a number "
                                 "JavaScript cannot read (NaN, Infinity, 1e400)") from None
    if not isinstance(message, dict) or "data" not in message:
        raise BadParameter("data", 'send an object like {"data": "hello", "event": "news"}')
    unknown = sorted(message.keys() - {"data", "event"})
    if unknown:  # most likely a typo, which would otherwise be silently ignored
        raise BadParameter(unknown[0], f"unknown field {unknown[0]!r}: only data and event count")
    event = message.get("event")
    if event is not None:
        # A line break would start a new field.
        if not (isinstance(event, str) and 0 < len(event) <= 64 and event.isprintable()):
            raise BadParameter("event", "event must be 1 to 64 characters, none of them a "
                                        "line break or other control character")
        if event in RESERVED_EVENTS:
            raise BadParameter("event", f"the event name {event!r} is reserved: "
                                        f"{RESERVED_EVENTS[event]}")
    # Escaped JSON has no raw line breaks, so data goes out as a single data: line.
    data = json.dumps(message["data"], ensure_ascii=False)
    for param, text in (("data", data), ("event", event or "")):
        try:
            text.encode()
        except UnicodeEncodeError:
            raise BadParameter(param, f"{param} holds text that is not valid Unicode "
                                      "(a lone surrogate such as \\ud800)") from None
    return data, event


def has_bearer_token(expected):
    """True when the request carries ``Authorization: Bearer <expected>``.

    compare_digest takes as long for a near miss as for a wild guess, so the
    answer time does not give the token away one character at a time.
    """
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), expected.encode())


def create_app(config=None):
    """Create the app: defaults, then SSE_* environment variables, then ``config``."""
    app = Flask(__name__)
    settings.configure(app.config, config)
    # A proxying worker also holds one upstream connection per answer it generates.
    upstreams = app.config["CHAT_MAX_ANSWERS"] if app.config["OPENAI_API_KEY"] else 0
    app.extensions["streams"] = Streams(app.config["MAX_STREAMS"],
                                        app.config["MAX_STREAM_SECONDS"],
                                        app.config["WRITE_TIMEOUT"], RESERVED_FILES + upstreams)
    app.extensions["chat_model"] = chat.model_from_config(app.config)
    limits = {"max_answers": app.config["CHAT_MAX_ANSWERS"],
              "max_bytes": app.config["CHAT_MAX_ANSWER_BYTES"],
              "abandon_after": app.config["CHAT_ABANDON_SECONDS"],
              "keep_for": app.config["CHAT_KEEP_SECONDS"]}
    if app.config["REDIS_URL"]:  # so that any worker, or the next one, can serve a re-attach
        app.extensions["answers"] = RedisAnswers(app.config["REDIS_URL"],
                                                 app.config["CHAT_KEY_PREFIX"], **limits)
    else:
        app.extensions["answers"] = MemoryAnswers(**limits)
    history, queue_size = app.config["BROADCAST_HISTORY"], app.config["BROADCAST_QUEUE"]
    if app.config["REDIS_URL"]:  # connects on first use, not here
        app.extensions["broker"] = RedisBroker(
            app.config["REDIS_URL"], app.config["BROADCAST_STREAM"], history, queue_size)
    else:
        app.extensions["broker"] = MemoryBroker(history, queue_size)
    if n := app.config["TRUST_PROXY"]:
        # Only what the app uses: who asked, and over which scheme. Trusting
        # X-Forwarded-Prefix or -Host too would let a client rewrite the page's URLs.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=0, x_port=0,
                                x_prefix=0)
    app.register_blueprint(bp)
    return app


app = create_app()
