"""The app's settings: defaults with the reason for each, then the environment, then checks.

Every setting ``NAME`` can be set as ``SSE_NAME`` in the environment; the
value is read as JSON when it parses (``SSE_HEARTBEAT=5``, ``SSE_X_ACCEL_BUFFERING=false``),
as text otherwise. A few keep the names their own tools use: ``REDIS_URL``,
``PUBLISH_TOKEN``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` and ``OPENAI_MODEL``.
A bad value stops the app at start-up with a message that names the variable.
"""

import os

DEFAULTS = {
    # Seconds of silence before a comment is sent. Below every common proxy idle
    # timeout (Nginx 60 s, AWS ALB 60 s, Cloudflare 100 s).
    "HEARTBEAT": 15,
    # Sent first on every stream: how long EventSource waits before reconnecting.
    "RETRY_MS": 2000,
    # Seconds between named ping events when the client does not ask (?ping=).
    "PING_INTERVAL": 5,
    # Bounds on ?interval=: the low one stops one client from asking for a flood.
    "MIN_INTERVAL": 0.02,
    "MAX_INTERVAL": 3600,
    # Open streams per worker before new ones get 503. Keep it below gunicorn's
    # worker_connections, so the worker can still accept and answer the 503; it
    # is lowered by itself to what the open-file limit allows.
    "MAX_STREAMS": 9000,
    # Seconds a write may make no progress (a client that stopped reading, a
    # vanished network) before its stream is cut off. Linux only.
    "WRITE_TIMEOUT": 30,
    # Seconds a request body (POST /broadcast, chat) may take to arrive in full.
    # A client dripping a byte at a time would otherwise hold its greenlet and
    # its connection for ever; it gets 408 instead.
    "BODY_TIMEOUT": 10,
    # Origins allowed to read the streams from other sites, comma-separated.
    # Empty means same-origin only: CORS stays off unless you name someone.
    "CORS_ORIGINS": "",
    # How many proxies in front of the app set X-Forwarded-For and -Proto. 0
    # trusts none, because without a proxy any client could forge those headers.
    "TRUST_PROXY": 0,
    # Send "X-Accel-Buffering: no" so Nginx passes each event on at once.
    # Only the buffering test turns it off, to prove the header matters.
    "X_ACCEL_BUFFERING": True,
    # Seconds between the offline chat model's tokens: about a hosted model's
    # pace, so the typewriter effect looks real. At most HEARTBEAT.
    "CHAT_TOKEN_DELAY": 0.03,
    # Largest chat request body in bytes; a bigger one gets 413 unread.
    "CHAT_MAX_BODY": 64 * 1024,
    # Seconds the upstream model may stay silent (connecting, or between two
    # reads) before its stream ends with an error event.
    "CHAT_UPSTREAM_TIMEOUT": 60,
    # Seconds a streamed answer goes on being generated with nobody attached
    # (the page may re-attach after a dropped connection); then it is cancelled.
    "CHAT_ABANDON_SECONDS": 30,
    # Seconds a finished answer can still be re-read from its first chunk.
    "CHAT_KEEP_SECONDS": 300,
    # Answers a worker keeps (generating, or finished and kept); at the cap the
    # one finished longest ago that nobody reads makes room, else a new streamed chat gets
    # 503. With CHAT_MAX_ANSWER_BYTES it bounds their memory: about 100 x 340 KiB
    # = 34 MiB at most (each chunk is a string of its own; an offline answer
    # takes about 22 KiB, docs/chat.md).
    "CHAT_MAX_ANSWERS": 100,
    # Bytes of chunks one answer may hold; a longer one ends with
    # finish_reason "length", as OpenAI's does at its token limit.
    "CHAT_MAX_ANSWER_BYTES": 256 * 1024,
    # Seconds a stopping worker (a reload) goes on generating the answers it
    # started, for readers that re-attached to another worker (with REDIS_URL).
    # Keep it below gunicorn's timeout (30 s), past which the master kills it.
    "CHAT_DRAIN_SECONDS": 20,
    # Prefix of the Redis keys of chat answers (with REDIS_URL).
    "CHAT_KEY_PREFIX": "sse:chat:",
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

# Read without the SSE_ prefix: the names the OpenAI SDK, Redis tools and hosts use.
UNPREFIXED = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "REDIS_URL", "PUBLISH_TOKEN")

# Numeric settings and the smallest value each accepts.
_NUMBERS = {"HEARTBEAT": 0.01, "PING_INTERVAL": 0.01, "MIN_INTERVAL": 0.001,
            "MAX_INTERVAL": 0.001, "MAX_STREAMS": 0, "WRITE_TIMEOUT": 0.01,
            "BODY_TIMEOUT": 0.01, "TRUST_PROXY": 0, "CHAT_TOKEN_DELAY": 0, "CHAT_MAX_BODY": 1,
            "CHAT_UPSTREAM_TIMEOUT": 0.01, "MAX_STREAM_SECONDS": 0, "CHAT_ABANDON_SECONDS": 0,
            "CHAT_KEEP_SECONDS": 0, "CHAT_DRAIN_SECONDS": 0}
# Whole-number settings and the smallest value each accepts.
_COUNTS = {"RETRY_MS": 0, "BROADCAST_HISTORY": 1, "BROADCAST_QUEUE": 1, "BROADCAST_MAX_BYTES": 1,
           "CHAT_MAX_ANSWERS": 1, "CHAT_MAX_ANSWER_BYTES": 1}


def configure(config, overrides=None):
    """Fill a Flask ``config``: defaults, then the environment, then ``overrides``; then check."""
    config.from_mapping(DEFAULTS)
    config.from_prefixed_env("SSE")  # SSE_HEARTBEAT=5 sets HEARTBEAT, parsed as JSON
    config.from_mapping({name: os.environ[name] for name in UNPREFIXED if os.environ.get(name)})
    config.from_mapping(overrides or {})
    check(config)


def check(config):
    """Fail at start-up, naming the variable, rather than misbehave later."""
    for key, low in _NUMBERS.items():
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
            raise ValueError(f"SSE_{key} must be a number >= {low}, got {value!r}")
    for key, low in _COUNTS.items():
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"SSE_{key} must be a whole number >= {low}, got {value!r}")
    if config["MIN_INTERVAL"] > config["MAX_INTERVAL"]:
        raise ValueError("SSE_MIN_INTERVAL must not exceed SSE_MAX_INTERVAL")
    if config["CHAT_TOKEN_DELAY"] > config["HEARTBEAT"]:
        raise ValueError("SSE_CHAT_TOKEN_DELAY must not exceed SSE_HEARTBEAT")
    if not isinstance(config["X_ACCEL_BUFFERING"], bool):
        raise ValueError("SSE_X_ACCEL_BUFFERING must be true or false")
    for key in ("CORS_ORIGINS", "PUBLISH_TOKEN", "OPENAI_API_KEY", "OPENAI_BASE_URL",
                "OPENAI_MODEL"):
        if not isinstance(config[key], str):
            name = key if key in UNPREFIXED else f"SSE_{key}"
            raise ValueError(f"{name} must be a string")
    if not config["OPENAI_BASE_URL"].startswith(("http://", "https://")):
        raise ValueError("OPENAI_BASE_URL must start with http:// or https://")
    url = config["REDIS_URL"]
    if not isinstance(url, str) or (url and not url.startswith(("redis://", "rediss://", "unix://"))):
        # Not echoed: the URL may hold a password.
        raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
    for key in ("BROADCAST_STREAM", "CHAT_KEY_PREFIX"):
        if not isinstance(config[key], str) or not config[key]:
            raise ValueError(f"SSE_{key} must be a non-empty Redis key")
