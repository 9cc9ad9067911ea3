"""Publish a message once, deliver it to every subscriber: in memory, or through Redis.

Two brokers with the same methods; create_app picks one:

- ``MemoryBroker``: this process only. Right for one worker (and the tests).
  With several gunicorn workers each has its own, and a message reaches only
  the clients of the worker that took the POST.
- ``RedisBroker``: a Redis stream that every worker of every app instance reads.

What both offer::

    id = broker.publish(data, event=None)   # data: JSON text; raises BrokerUnavailable
    with broker.subscribe(last_event_id, wake) as sub:  # raises BrokerUnavailable
        sub.take()         # the waiting messages as bytes, b"" if none; wake() runs on arrival
        sub.pending        # True when take() has something
        sub.dropped        # True when it fell a whole queue behind: end its stream
    broker.subscribers     # how many are open in this process

Ids are Redis stream ids, ``<milliseconds>-<sequence>``, for both brokers: they
order messages, and they are what a client sends back as Last-Event-ID. A
client whose id is still in the history gets exactly what it missed. Any other
id (aged out, from before a restart, malformed) gets a ``reset`` event, then
the whole kept history, then live messages.

A subscriber that falls a whole queue behind is dropped: its stream ends, its
EventSource reconnects with Last-Event-ID and catches up from the history.
Nobody waits for it, and it never holds more than its queue.
"""

import collections
import heapq
import logging
import re
import threading
import time

from sse import format_event

log = logging.getLogger(__name__)

# Entries one XREAD or XRANGE may return: bounds the memory of one read (the
# reader's, or one replay's page of the history) to 100 x BROADCAST_MAX_BYTES.
READ_BATCH = 100
# How long one XREAD blocks in Redis before it is asked again.
READ_BLOCK_MS = 5000
# The reader's wait after a Redis error, doubling up to the maximum.
RETRY_FIRST, RETRY_MAX = 0.1, 2.0
# Redis connections per worker for publishing and replay (the reader has its
# own). A reconnect storm of thousands of clients queues here instead of
# opening thousands of connections to Redis.
POOL_SIZE = 10

# [0-9], not \d: \d also matches other scripts' digits.
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
# Bytes one write may carry from a subscriber's queue or replay.
CHUNK_BYTES = 64 * 1024
_UNSEEN = object()  # an entry this worker has not formatted yet


class BrokerUnavailable(Exception):
    """The broker cannot publish or replay right now (Redis is unreachable)."""


def parse_id(text):
    """Return an id as a comparable pair, or None when it is not ``<ms>-<seq>``.

    >>> parse_id("1700000000000-3"), parse_id("42"), parse_id(None)
    ((1700000000000, 3), None, None)
    """
    match = _STREAM_ID.fullmatch(text.strip()) if text else None
    if match is None:
        return None
    key = int(match[1]), int(match[2])
    return key if max(key) < 2**64 else None  # Redis ids are two 64-bit numbers


def format_id(key):
    """Return a pair as an id: ``format_id((1700000000000, 3))`` is ``'1700000000000-3'``."""
    return f"{key[0]}-{key[1]}"


def reset_event(key, history):
    """The event for a client whose Last-Event-ID cannot be found in ``history``.

    It says what was lost: everything after ``last_event_id`` and before
    ``history_from``, the oldest message still kept, which comes next.
    """
    oldest = history[0][0] if history else None
    aged_out = key is not None and oldest is not None and key < oldest
    notice = {"reason": "aged-out" if aged_out else "unknown-id",
              "last_event_id": format_id(key) if key else None,
              "history_from": format_id(oldest) if oldest else None}
    # No id: if the client drops now, it comes back with its old id and gets this again.
    return format_event(json=notice, event="reset")


class Subscription:
    """One client: what to replay first, then a bounded queue of live messages.

    ``wake()`` is called whenever a message arrives (the stream sleeping on it
    wakes up); use it as a context manager to unsubscribe on the way out.
    Thousands are open at once, so they are small: no __dict__, a list for
    the queue (it holds one message nearly always), a backlog only to replay.
    """

    __slots__ = ("_subscribers", "_queue_size", "_wake", "_queue", "_backlog", "after",
                 "dropped")

    def __init__(self, subscribers, queue_size, wake=None):
        self._subscribers = subscribers
        self._queue_size = queue_size
        self._wake = wake or (lambda: None)
        self._queue = []  # (key, text) of live messages, oldest first
        self._backlog = None  # while replaying: a deque of texts sent before any live message
        self.after = (0, 0)  # live messages up to this id were already replayed
        self.dropped = False  # a whole queue behind: its stream should end

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._subscribers.discard(self)

    @property
    def pending(self):
        """True when there is something to do: take() has messages, or it was dropped."""
        return bool(self._backlog or self._queue) or self.dropped

    def replay(self, entries, reset=None):
        """Send ``reset``, then these (key, text) entries, first; skip them if they come live."""
        self._backlog = collections.deque([reset] if reset else [])
        self._backlog.extend(text for _, text in entries)
        if entries:
            self.after = entries[-1][0]

    def offer(self, message):
        """Queue a live (key, text) message without waiting; False when the queue is full."""
        if len(self._queue) >= self._queue_size:
            return False
        self._queue.append(message)
        self._wake()
        return True

    def drop(self):
        """Free what is queued and mark the stream for ending (it reconnects and replays)."""
        self.dropped = True
        self._queue, self._backlog = [], None
        self._wake()

    def take(self, max_bytes=CHUNK_BYTES):
        """Return what is waiting, in id order, as one chunk of bytes (b"" when nothing is).

        One write for a burst, instead of one per message; at most about
        ``max_bytes``, so a long replay is written a piece at a time.
        """
        if not self._backlog and len(self._queue) == 1:  # nearly always: one message
            key, text = self._queue.pop()
            if key <= self.after:  # came live after the replay had it
                return b""
            self.after = key
            return text  # the very object every subscriber shares: no copy
        parts, size = [], 0
        while size < max_bytes:
            if self._backlog:
                text = self._backlog.popleft()
            elif self._queue:
                key, text = self._queue.pop(0)
                if key <= self.after:  # came live after the replay had it
                    continue
                self.after = key
            else:
                break
            parts.append(text)
            size += len(text)
        return parts[0] if len(parts) == 1 else b"".join(parts)


class Subscribers:
    """This process's subscriptions, and a fan-out that never waits for one of them."""

    def __init__(self, queue_size):
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._open = set()

    def __len__(self):
        return len(self._open)

    def add(self, wake=None):
        subscription = Subscription(self, self._queue_size, wake)
        with self._lock:
            self._open.add(subscription)
        return subscription

    def discard(self, subscription):
        with self._lock:
            self._open.discard(subscription)

    def send(self, key, text):
        """Queue one formatted message for everyone; drop whoever has no room left."""
        message = (key, text)  # one tuple for all: ten thousand would keep the GC busy
        with self._lock:
            too_slow = []
            for subscription in self._open:  # offer(), inlined: this runs for everyone
                if len(subscription._queue) < subscription._queue_size:
                    subscription._queue.append(message)
                    subscription._wake()
                else:
                    too_slow.append(subscription)
            for subscription in too_slow:
                self._open.discard(subscription)
                subscription.drop()
        if too_slow:
            log.info("dropped %d broadcast subscriber(s) a whole queue behind", len(too_slow))


class MemoryBroker:
    """Broadcast within this process, with the last ``history`` messages kept for replay."""

    name = "memory"

    def __init__(self, history=1000, queue_size=100):
        self._history = collections.deque(maxlen=history)  # (key, text), oldest first
        self._subscribers = Subscribers(queue_size)
        self._lock = threading.Lock()  # one id order, one history, one fan-out order
        self._last = (0, 0)

    @property
    def subscribers(self):
        return len(self._subscribers)

    def publish(self, data, event=None):
        with self._lock:
            now = time.time_ns() // 1_000_000
            # Like Redis: milliseconds, then a sequence number within the same millisecond
            # (or after the clock stepped back), so ids keep rising across restarts.
            key = (now, 0) if now > self._last[0] else (self._last[0], self._last[1] + 1)
            text = format_event(data, event=event, id=format_id(key))  # once, for everyone
            self._history.append((key, text))
            self._last = key
            self._subscribers.send(key, text)
        return format_id(key)

    def subscribe(self, last_event_id=None, wake=None):
        # Under the lock, no message can fall between the replay and the queue.
        with self._lock:
            subscription = self._subscribers.add(wake)
            if last_event_id:
                key = parse_id(last_event_id)
                history = list(self._history)
                keys = [k for k, _ in history]
                if key in keys:
                    subscription.replay(history[keys.index(key) + 1:])
                else:
                    subscription.replay(history, reset=reset_event(key, history))
        return subscription

    def unsubscribe(self, subscription):
        self._subscribers.discard(subscription)


class RedisBroker:
    """Broadcast through a Redis stream, to every worker of every app instance.

    Publishing is XADD with an exact MAXLEN, so the stream is the replay
    history and its entry ids are the SSE ids. Each worker process runs one
    reader, started by its first subscriber, that blocks in XREAD and hands
    each entry to the local subscribers: one reading connection per worker
    however many clients listen. When Redis goes away the reader retries with
    backoff and reads on from the last id it saw.

    Each entry is formatted once per worker, for the reader and every replay
    alike, and kept for the newest ``history`` ids: a thousand clients that
    replay the whole history hold one copy of it between them, not a thousand.
    """

    name = "redis"

    def __init__(self, url, stream="sse:broadcast", history=1000, queue_size=100):
        import redis  # only a Redis deployment needs the package
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # Neither client connects before its first command: importing app.py stays quiet.
        # One retry replaces a pooled connection that died with a Redis restart; more
        # would hold a POST for seconds while Redis is down.
        # Both clients return bytes: anything may write to the stream, and a value
        # that is not UTF-8 would fail a decoding client's whole reply (and kill the
        # reader). _entries decodes each entry on its own and skips a bad one.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=5,
            socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 1))
        self._redis = redis.Redis(connection_pool=pool)
        # The reader's socket timeout must outlast its blocking XREAD. Its own
        # loop does the retrying, with backoff.
        self._reader = redis.Redis.from_url(
            url, socket_connect_timeout=2,
            socket_timeout=READ_BLOCK_MS / 1000 + 5, retry=Retry(NoBackoff(), 0))
        self._stream = stream
        self._history = history
        self._subscribers = Subscribers(queue_size)
        self._start_lock = threading.Lock()
        self._reading = False
        self._closed = threading.Event()
        # This worker's formatted entries: {key: SSE text, or None for one to skip},
        # and the same keys in a heap, to forget the oldest first.
        self._texts = {}
        self._text_keys = []
        self._texts_lock = threading.Lock()

    @property
    def subscribers(self):
        return len(self._subscribers)

    def publish(self, data, event=None):
        from redis import RedisError

        fields = {"data": data} if event is None else {"data": data, "event": event}
        try:
            entry_id = self._redis.xadd(self._stream, fields, maxlen=self._history,
                                        approximate=False)
        except RedisError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        return entry_id.decode()

    def subscribe(self, last_event_id=None, wake=None):
        from redis import RedisError

        try:
            self._start_reader()
            # Join the fan-out before reading the history: a message published in
            # between arrives both ways, and Subscription.after lets through one copy.
            subscription = self._subscribers.add(wake)
            try:
                if last_event_id:
                    self._fill_replay(subscription, parse_id(last_event_id))
            except Exception:  # Redis, or a history that moved on faster than it was read
                self._subscribers.discard(subscription)
                raise
        except RedisError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        return subscription

    def unsubscribe(self, subscription):
        self._subscribers.discard(subscription)

    def close(self):
        """Stop the reader (within one blocking read) and release the connections."""
        self._closed.set()
        self._redis.close()

    def _fill_replay(self, subscription, key):
        if key is not None:
            since = self._read_history(after=format_id(key).encode())
            if since is not None:  # its id is still kept: it missed exactly the rest
                subscription.after = key
                subscription.replay(since)
                return
        history = self._read_history()
        if history is None:
            raise BrokerUnavailable("the history moved on faster than it could be read")
        subscription.replay(history, reset=reset_event(key, history))

    def _read_history(self, after=None):
        """Return the kept (key, text) entries after the id ``after``, or all of them.

        Read in pages of READ_BATCH, so that a replay never holds the whole
        history's reply at once. Each page starts at the last entry of the page
        before: finding it again proves nothing between them was trimmed while
        we read. None when ``after`` is not kept, or was trimmed while we read.
        """
        entries = []
        while True:
            page = self._redis.xrange(self._stream, min=after or b"-", count=READ_BATCH)
            if after is not None and (not page or page[0][0] != after):
                return None
            entries += self._entries(page if after is None else page[1:])
            if len(page) < READ_BATCH:
                return entries
            after = page[-1][0]

    def _start_reader(self):
        """Start this process's one reader at the newest entry, unless it runs already."""
        with self._start_lock:
            if self._reading:
                return
            newest = self._redis.xrevrange(self._stream, count=1)
            position = newest[0][0] if newest else b"0-0"
            # Under gevent's patching (gunicorn's gevent worker) this thread is a greenlet.
            threading.Thread(target=self._read_forever, args=(position,),
                             name="broadcast-reader", daemon=True).start()
            self._reading = True

    def _read_forever(self, position):
        from redis import RedisError

        delay = RETRY_FIRST
        while not self._closed.is_set():
            try:
                reply = self._reader.xread({self._stream: position}, count=READ_BATCH,
                                           block=READ_BLOCK_MS)
            except RedisError as exc:
                if self._closed.is_set():
                    break
                log.warning("broadcast reader: %s; reading again from %s in %.1f s",
                            exc, position.decode(), delay)
                self._closed.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            for _, entries in reply or []:
                for key, text in self._entries(entries):
                    self._subscribers.send(key, text)
                position = entries[-1][0]
        self._reader.close()

    def _entries(self, raw):
        """Turn XRANGE/XREAD entries into (key, SSE text), skipping any not written by publish.

        The text for a key is this worker's one copy: formatted by whoever
        meets the entry first, the reader or a replay, and shared after that.
        """
        entries = []
        for entry_id, fields in raw:
            key = parse_id(entry_id.decode())  # Redis makes ids, always ASCII <ms>-<seq>
            with self._texts_lock:
                text = self._texts.get(key, _UNSEEN)
            if text is _UNSEEN:  # formatted outside the lock: it may take a while
                text = self._keep(key, _format_entry(entry_id, fields))
            if text is not None:
                entries.append((key, text))
        return entries

    def _keep(self, key, text):
        """Keep ``text`` for ``key``, and the newest ``history`` keys; return the kept text."""
        with self._texts_lock:
            if key in self._texts:  # a replay or the reader formatted it meanwhile
                return self._texts[key]
            self._texts[key] = text
            heapq.heappush(self._text_keys, key)
            # Like the stream: the oldest go first, whatever order they were read in.
            while len(self._text_keys) > self._history:
                del self._texts[heapq.heappop(self._text_keys)]
        return text


def _format_entry(entry_id, fields):
    """Return a stream entry as SSE text, or None (with a warning) when publish did not write it."""
    try:
        event = fields.get(b"event")
        return format_event(fields[b"data"].decode(), id=entry_id.decode(),
                            event=None if event is None else event.decode())
    except Exception as exc:  # one bad entry must never end the reader or a replay
        log.warning("skipping stream entry %s: %r", entry_id.decode(), exc)
        return None
