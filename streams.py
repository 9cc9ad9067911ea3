"""The machinery under every event stream: a cap, a clock, and the ways a stream ends.

app.py's generators read like the lesson; this module is what lets ten
thousand of them run in one gevent worker and end cleanly:

- ``Streams`` (one per app): how many streams this worker may hold, sized to
  the open-file limit, and ``stop()`` for a worker that is shutting down.
- ``Stream`` (one per response): ``sleep_until(deadline)``, ``wait_until()``
  and ``wake()``, and ``ended``: the worker is stopping, the stream's lifetime
  is up, or its client has gone.
- ``event_stream(make_events)``: the response, with the generator already
  started, so whatever it takes (a slot, a subscription) is given back on
  every path, HEAD included.

Under gunicorn's gevent worker a stream also watches its socket: a client
that closes is noticed at once (not at the next write), and one that stops
reading is cut off after ``WRITE_TIMEOUT`` seconds without progress.
"""

import _socket
import collections
import contextlib
import errno
import functools
import itertools
import logging
import math
import random
import socket
import threading
import time

from flask import Response, current_app, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

# File descriptors kept for everything that is not a stream: the listening
# socket, logs, Redis connections (up to 21 per worker: broadcast and chat),
# and the connections a full worker still accepts in order to answer 503.
# (create_app adds one per chat answer a proxying worker may keep.)
RESERVED_FILES = 64
# Wake-ups are rounded up to this grid (seconds), so streams due at nearly the
# same moment share one timer and one turn of the event loop.
GRAIN = 0.01
# Seconds the event loop spends resuming woken streams before it looks at
# sockets again: a fan-out to thousands does not keep new requests waiting.
BUSY_TURN = 0.005
# Kernel send buffer per stream (bytes; Linux doubles it). Bounds what a
# client that stopped reading can hold, instead of the ~4 MiB autotuning allows.
SEND_BUFFER = 64 * 1024


class TooManyStreams(Exception):
    """This worker holds as many streams as it may: answer 503 with Retry-After."""


class BodyTimeout(Exception):
    """A request body did not arrive in time: answer 408."""


class BodyUnreadable(Exception):
    """A request body could not be read, e.g. its chunked framing is broken: answer 400."""


@contextlib.contextmanager
def body_deadline(seconds):
    """Raise BodyTimeout if the block (reading a request body) takes longer than ``seconds``.

    A timeout on each read would not do: a client dripping one byte every few
    seconds never trips it. Under gevent the deadline covers the whole body;
    elsewhere (Flask's test client, flask run) the body is already read.
    After a timeout the connection stops reading, so the server closes it
    instead of waiting for the rest of the body.
    """
    if not gevent_is_running():
        yield
        return
    import gevent

    try:
        with gevent.Timeout(seconds, BodyTimeout):
            yield
    except BodyTimeout:
        stop_reading(request.environ.get("gunicorn.socket"))
        raise


def read_body(request):
    """Return the request body; raise BodyUnreadable if the server cannot read it.

    The trap: a chunked body with broken framing (a chunk longer than its size
    says, a size that is not hexadecimal) makes the server's reader raise its
    own error, which the app cannot name without importing gunicorn, and which
    would be a 500 with a traceback. So whatever the read itself raises becomes
    BodyUnreadable, logged in one line; a 408 (BodyTimeout) and a 413 pass as
    they are. The connection then stops reading: where a broken body ends, and
    so where a next request would start, cannot be told.
    """
    try:
        return request.get_data(cache=False)
    except (BodyTimeout, HTTPException):
        raise
    except Exception as exc:  # e.g. gunicorn's InvalidChunkSize, a reset connection
        log.info("a request body could not be read: %s: %s", type(exc).__name__, exc)
        stop_reading(request.environ.get("gunicorn.socket"))
        raise BodyUnreadable(str(exc)) from None


def stop_reading(sock):
    """Shut the reading side of a client's socket, so the server hears no next request.

    On the file descriptor itself: a TLS socket's own shutdown() would also
    drop its TLS state, and what is written after (the end of a stream, a 408)
    would go out unencrypted.
    """
    if sock is None:
        return
    try:
        raw = _socket.socket(fileno=sock.fileno())
    except OSError:  # closed already
        return
    try:
        raw.shutdown(socket.SHUT_RD)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
    finally:
        raw.detach()  # the socket is the server's: never close it here


def stream_limit(configured, reserved=RESERVED_FILES):
    """The streams this process can really hold: ``configured``, or fewer if open files run out.

    ``reserved`` files are kept for everything that is not a stream.

    Every stream is a socket, so a process allowed 256 open files cannot hold
    9,000 streams: past the limit accept() fails and new clients hang instead
    of getting a 503.
    """
    try:
        import resource  # Unix only: elsewhere (Windows, flask run) trust the setting
    except ImportError:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft - reserved >= configured:
        return configured
    limit = max(0, soft - reserved)
    log.warning("the open-file limit is %d: this worker holds at most %d streams, not "
                "SSE_MAX_STREAMS=%d (raise the limit with ulimit -n)", soft, limit, configured)
    return limit


class Streams:
    """This worker's open streams: the cap, the clock they sleep on, and the stop signal."""

    def __init__(self, max_streams, max_seconds=0, write_timeout=30, reserved=RESERVED_FILES):
        self.limit = stream_limit(max_streams, reserved)
        self.max_seconds, self.write_timeout = max_seconds, write_timeout
        self.open = set()
        self.kinds = collections.Counter()  # open streams by kind, for /healthz
        self.stopping = False
        self._clock = None  # made on first use: importing app.py must not touch gevent's hub

    @property
    def count(self):
        return len(self.open)

    def start(self, environ=None, lifetime=True, kind="stream"):
        """Open a stream for this request; raise TooManyStreams past the cap."""
        if len(self.open) >= self.limit:
            raise TooManyStreams()
        if self._clock is None:
            self._clock = GeventClock() if gevent_is_running() else ThreadClock()
        ends_at = math.inf
        if lifetime and self.max_seconds:
            # A random 80-100 %, so clients that connected together (after a
            # restart) do not all come back at once.
            ends_at = time.monotonic() + self.max_seconds * random.uniform(0.8, 1.0)
        stream = Stream(self, self._clock, ends_at, kind)
        self.open.add(stream)
        self.kinds[kind] += 1
        if isinstance(self._clock, GeventClock):
            stream.watch(http1_socket(environ))
        return stream

    def stop(self):
        """End every stream now (the worker is stopping): each client reconnects elsewhere."""
        self.stopping = True
        for stream in list(self.open):
            stream.wake()


class Stream:
    """One open stream: its sleep, its wake-up, and whether it has ended."""

    __slots__ = ("_streams", "_clock", "ends_at", "kind", "gone", "waiter", "sleepers", "index",
                 "wake_pending", "_sock", "_watcher")

    def __init__(self, streams, clock, ends_at, kind):
        self._streams, self._clock, self.ends_at, self.kind = streams, clock, ends_at, kind
        self.gone = False  # the client closed, or stopped reading for too long
        self.waiter = clock.new_waiter()  # what a sleeping stream waits on; the clock's own
        self.sleepers = self.index = None  # the clock's: the list it sleeps in, and where
        self.wake_pending = False  # the clock's: a wake-up is on its way
        self._sock = self._watcher = None

    @property
    def ended(self):
        """True once the worker is stopping, the lifetime is up, or the client has gone."""
        return (self.gone or self._streams.stopping
                or (self.ends_at != math.inf and time.monotonic() >= self.ends_at))

    def sleep_until(self, deadline):
        """Sleep until ``deadline`` (a time.monotonic() value) and return the time then.

        Returns sooner only if the stream has ended, so check ``ended`` after it.
        """
        deadline = min(deadline, self.ends_at)
        while (now := time.monotonic()) < deadline and not self.ended:
            self._clock.wait(self, deadline)
        return now

    def wait_until(self, deadline):
        """Sleep until ``deadline`` or until ``wake()``; may also return early for no reason."""
        if self.gone:
            return
        if self._streams.stopping:
            # The stop woke every stream asleep then; one that sleeps after it
            # looks again each second (a chat answer may go on being read).
            deadline = min(deadline, time.monotonic() + 1)
        self._clock.wait(self, min(deadline, self.ends_at))

    def wake(self):
        """End a wait_until() now, from any greenlet (or, without gevent, any thread)."""
        if not self.wake_pending:  # once is enough, however often it is woken till then
            self.wake_pending = True
            self._clock.wake(self)

    def watch(self, sock):
        """Notice at once when the client closes; cut it off when it stops reading.

        A client that only shuts its sending side counts as gone too: EventSource
        and fetch never do that, and a read cannot tell it from a close.
        """
        if sock is None:
            return
        self._sock = sock
        # Unacknowledged data, or data the client's full window keeps back, for
        # this long makes the kernel drop the connection (ETIMEDOUT): a write
        # that makes no progress ends the stream. Linux only; not on a unix socket.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                            int(self._streams.write_timeout * 1000))
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._watcher = self._clock.watch_readable(sock.fileno(), self._readable)
        self._clock.send_faster(sock)

    def _readable(self):
        """The socket has something to read: end of file (the client left), an error, or data."""
        try:
            # The C socket, not gevent's: a callback in the event loop must not block.
            peek = _socket.socket(fileno=self._sock.fileno())
        except OSError:
            self._gone()
            return
        try:
            data = peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:  # ETIMEDOUT (stopped reading), ECONNRESET
            data = b""
        finally:
            peek.detach()  # the socket is gunicorn's: never close it here
        if data:
            # A pipelined request: not ours to read, and the watcher would
            # fire for ever. Writes still notice a gone client, just later.
            self._stop_watching()
        else:
            self._gone()

    def _gone(self):
        self.gone = True
        self._stop_watching()
        self.wake()

    def _stop_watching(self):
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    def __iter__(self):
        return self

    def __next__(self):
        """The end of the body (see _Body): close, and yield nothing."""
        self.close()
        raise StopIteration

    def close(self):
        """Give the slot back. A stopping worker also stops reading, so keep-alive ends."""
        if self in self._streams.open:
            self._streams.open.discard(self)
            self._streams.kinds[self.kind] -= 1
        self._stop_watching()
        if self._streams.stopping:
            # Otherwise gunicorn would wait on this connection for the client's
            # next request (up to its keepalive) before the worker may exit.
            stop_reading(self._sock)


def http1_socket(environ):
    """The client's socket, under gunicorn over HTTP/1.x only: over HTTP/2 it is shared."""
    if not environ or not environ.get("SERVER_PROTOCOL", "").startswith("HTTP/1"):
        return None
    return environ.get("gunicorn.socket")


def gevent_is_running():
    """True under gunicorn's gevent worker, which patches threading before the app loads."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("threading")


class GeventClock:
    """Sleeps and wake-ups for greenlets, with one timer per GRAIN slot, not one per sleep.

    gevent's own sleep makes, starts and stops a libev timer for every call,
    and every wait with a timeout (a queue's get, an Event's wait) does the
    same. Here a sleeping stream joins the list of its slot, and the slot's
    one timer resumes them all. A stream woken sooner leaves its list at once
    (the last one in it takes its place), so a list never holds the stale.
    """

    def __init__(self):
        from gevent import get_hub, getcurrent

        self._hub = get_hub()
        self._loop = self._hub.loop
        self._current = getcurrent
        self._slots = {}  # slot number -> the streams sleeping until then
        self._waking = collections.deque()  # woken by wake(), not resumed yet
        self._wake_scheduled = False

    def new_waiter(self):
        return None  # while it sleeps, a stream's waiter is its greenlet

    def wait(self, stream, deadline):
        slot = math.ceil(deadline / GRAIN)
        sleepers = self._slots.get(slot)
        if sleepers is None:
            sleepers = self._slots[slot] = []
            self._loop.update_now()  # the loop's clock is stale after a busy turn
            timer = self._loop.timer(max(0.0, slot * GRAIN - time.monotonic()))
            timer.start(self._ring, slot, timer)
        stream.sleepers, stream.index = sleepers, len(sleepers)
        sleepers.append(stream)
        stream.waiter = self._current()
        try:
            self._hub.switch()  # back to the event loop, until it switches back here
        finally:
            stream.waiter = None
            if stream.sleepers is not None:  # woken before its slot: leave the list
                last = sleepers.pop()
                if last is not stream:
                    sleepers[stream.index] = last
                    last.index = stream.index
                stream.sleepers = None

    def _ring(self, slot, timer):
        timer.close()
        sleepers = self._slots.pop(slot, ())
        for stream in sleepers:
            stream.sleepers = None  # the list is done with: nobody leaves it now
        for stream in sleepers:
            greenlet = stream.waiter
            if greenlet is not None:  # not if it was woken, or has gone, meanwhile
                stream.waiter = None
                greenlet.switch()

    def wake(self, stream):
        """Resume ``stream`` soon, in the event loop (Stream.wake calls this once per sleep).

        Streams woken together (a broadcast wakes every subscriber) are resumed
        by one callback, not one each: ten thousand callbacks per message would
        cost their own CPU and keep the garbage collector busy.
        """
        self._waking.append(stream)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.run_callback(self._resume_woken)

    def _resume_woken(self, timer=None):
        if timer is not None:
            timer.close()
        started, waking = time.perf_counter(), self._waking
        while waking:
            stream = waking.popleft()
            stream.wake_pending = False
            greenlet = stream.waiter
            if greenlet is not None:  # it may be running, or gone: then it has seen the news
                stream.waiter = None
                greenlet.switch()
            if len(waking) % 32 == 0 and waking and time.perf_counter() - started > BUSY_TURN:
                # Let the loop look at new requests before the rest.
                timer = self._loop.timer(0)
                timer.start(self._resume_woken, timer)
                return
        self._wake_scheduled = False

    def watch_readable(self, fd, callback):
        watcher = self._loop.io(fd, 1)  # 1: EV_READ
        watcher.start(callback)
        return watcher

    def send_faster(self, sock):
        """Give a streaming socket a sendall that costs one send() when the data fits."""
        if type(sock) is self._streaming_socket.__base__:
            sock.__class__ = self._streaming_socket

    @functools.cached_property
    def _streaming_socket(self):
        from gevent.socket import socket

        class StreamingSocket(socket):
            """gevent's socket, whose sendall() first tries one plain send().

            gevent's own sendall asks the kernel for the send buffer's size
            (a getsockopt call) and slices a memoryview twice before it sends,
            on every call: for an event of a hundred bytes, that is most of the
            cost. An event nearly always fits the buffer, so try it whole
            first, and leave anything that did not fit to gevent.
            """

            __slots__ = ()

            def sendall(self, data, flags=0):
                try:
                    sent = self._sock.send(data, flags)
                except BlockingIOError:
                    sent = 0
                if sent < len(data):
                    socket.sendall(self, memoryview(data)[sent:], flags)

        return StreamingSocket


class ThreadClock:
    """The same for plain threads (Flask's test client, flask run): an Event per stream."""

    def new_waiter(self):
        return threading.Event()

    def wait(self, stream, deadline):
        stream.waiter.wait(max(0.0, deadline - time.monotonic()))
        stream.waiter.clear()

    def wake(self, stream):
        stream.wake_pending = False  # an Event keeps the news by itself
        stream.waiter.set()

    def watch_readable(self, fd, callback):
        return None

    def send_faster(self, sock):
        pass


class _Body(itertools.chain):
    """A started generator as a WSGI body: its first chunk, the rest, then the stream's close.

    A subclass of chain, so each chunk reaches the server from C code with no
    Python frame in between (every paused frame costs each idle stream memory).
    The stream is the last of the three: iterated, it closes itself and yields
    nothing, so it closes when the events run out, or at close() if they never do.
    """

    __slots__ = ("_events", "_stream")

    def __new__(cls, first, events, stream):
        body = super().__new__(cls, (first,), events, stream)  # a Stream iterates as nothing
        body._events, body._stream = events, stream
        return body

    def close(self):
        """Called by the server however the response ends (PEP 3333), and for HEAD."""
        try:
            self._events.close()  # runs the generator's finally blocks
        finally:
            self._stream.close()


def event_stream(make_events, lifetime=True, kind="stream"):
    """Answer with ``make_events(stream)``, a generator of bytes, as a text/event-stream.

    The generator is run up to its first event here, in the view, so that
    what it takes first (a subscription, a broker that may be down) is taken
    while an error can still be an HTTP status; its ``finally`` then runs
    however the response ends. A request whose body never starts (HEAD)
    closes it at once: nothing it took stays taken. ``lifetime=False`` keeps
    SSE_MAX_STREAM_SECONDS from ending this stream; ``kind`` is how /healthz counts it.
    """
    stream = current_app.extensions["streams"].start(request.environ, lifetime, kind)
    events = make_events(stream)
    try:
        first = next(events)
    except StopIteration:
        first = b""
    except BaseException:
        stream.close()
        raise
    # direct_passthrough hands the body to the WSGI server as it is: without it
    # Werkzeug wraps it in two more layers that touch every event.
    response = Response(_Body(first, events, stream), mimetype="text/event-stream",
                        direct_passthrough=True)
    response.headers["Cache-Control"] = "no-cache"
    if current_app.config["X_ACCEL_BUFFERING"]:
        response.headers["X-Accel-Buffering"] = "no"  # Nginx: pass each event on at once
    return response
