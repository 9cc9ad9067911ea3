"""gunicorn settings for long-lived event streams. gunicorn reads this file by itself.

Every value can be changed from the environment, e.g. ``BIND=0.0.0.0:9000 gunicorn app:app``.
"""

import gc
import logging
import os
import resource
import signal

from gunicorn.http import wsgi

# Loopback by default: put Nginx (nginx.conf) in front before exposing it.
bind = os.environ.get("BIND", "127.0.0.1:8000")

# A stream holds its connection for minutes, so a sync worker (one request at a
# time) would serve one client. gevent runs each connection in a greenlet; the
# worker patches the standard library before it loads the app.
worker_class = "gevent"

# One gevent worker holds thousands of streams; add workers for more CPU. With
# more than one, set REDIS_URL so a broadcast reaches every worker's clients.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))

# Connections one worker accepts at once. gunicorn's default of 1000 is meant
# for short requests; past it, stream number 1001 hangs unanswered. Keep the
# app's SSE_MAX_STREAMS below this, so the worker can still answer a 503.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "10000"))

# Seconds a worker may go without telling the master it is alive. The gevent
# worker does that from its own loop, so long streams do not trip it.
timeout = int(os.environ.get("TIMEOUT", "30"))

# Seconds a stopping worker (restart, reload, SIGTERM) waits for open requests
# before cutting them. Streams end by themselves when told to (post_worker_init
# below), so this only bounds how long other requests may take to finish.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "5"))

# Seconds an idle keep-alive connection stays open between requests. The gevent
# worker also gives a request's headers this long to arrive, and with 0 it would
# wait for them for ever (a client could trickle a header a minute): at least 1.
keepalive = max(1, int(os.environ.get("KEEPALIVE", "5")))

# HTTP/1.1 only (gunicorn 27's default, said out loud): its HTTP/2 serves one
# connection's requests one after another, so a second event stream on a
# connection would never start. Nginx speaks HTTP/2 to browsers (nginx.conf).
http_protocols = "h1"

# No WSGI variables from request headers. By default gunicorn takes SCRIPT_NAME
# from any client in forwarded_allow_ips (loopback), which could rewrite the page's
# URLs or turn "/" into a 500; the app needs none (ProxyFix, in app.py, trusts only
# X-Forwarded-For and -Proto). Empty: headers with "_" in the name are dropped.
forwarder_headers = ""

# Never preload with gevent: the app would be imported before the worker
# patches the standard library, and its sockets and locks would block.
preload_app = False

# gunicorn 27's control socket lives at one path per user; two instances on a
# machine (tests, several apps) would take it from each other. We do not use it.
control_socket_disable = True

# One line per request on stdout; ACCESS_LOG= (empty) turns it off, as a busy
# server or a benchmark may want. gunicorn itself would take "" as a file name.
accesslog = os.environ.get("ACCESS_LOG", "-") or None
errorlog = "-"


def on_starting(server):
    """Raise the soft open-file limit to the hard one before workers are forked.

    Every stream is a file descriptor, and many systems start processes with a
    soft limit of 1024; Python, unlike Node, does not raise it by itself. At the
    limit, accept() fails with EMFILE and new clients hang.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    except (ValueError, OSError):  # macOS refuses more than its own cap, 10240
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(target, 10240)), hard))
    server.log.info("open-file limit: %s", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    if server.cfg.workers > 1 and not os.environ.get("REDIS_URL"):
        server.log.warning("%d workers and no REDIS_URL: a message POSTed to /broadcast reaches "
                           "only the clients of the worker that took the POST, and a chat "
                           "answer can be re-attached only on the worker that generates it",
                           server.cfg.workers)


def post_fork(server, worker):
    """Send the app's own log lines (a dropped subscriber, a lowered stream cap) to the error log.

    gunicorn configures only its own loggers; this runs in the new worker before
    it loads the app, so even what app.py logs on import comes out in this format.
    """
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] "
                        "%(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S %z")


def post_worker_init(worker):
    """Make a graceful stop (reload or SIGTERM) end this worker's open streams at once.

    On a reload (kill -HUP) or a graceful stop (kill -TERM), the master sends
    each worker SIGTERM. The worker stops accepting and waits up to
    graceful_timeout for its requests to finish, but a stream never finishes by
    itself, and no hook runs on SIGTERM: the stream would be cut at the end of
    the wait. So we chain the worker's own handler with one that ends every
    stream (streams.py: Streams.stop). Each ends cleanly within a moment, and
    EventSource reconnects, with Last-Event-ID, to a new worker.
    """
    import gevent

    streams = worker.wsgi.extensions["streams"]
    gunicorn_handler = signal.getsignal(signal.SIGTERM)

    def stop_streams_too(sig, frame):
        gunicorn_handler(sig, frame)
        # In a greenlet of its own, as gunicorn does with its own handlers: a
        # signal handler may interrupt any greenlet, in the middle of anything.
        gevent.spawn(streams.stop)

    signal.signal(signal.SIGTERM, stop_streams_too)
    # signal.signal() makes the signal interrupt system calls again; gunicorn
    # turns that off so that a stop does not break a write in progress.
    signal.siginterrupt(signal.SIGTERM, False)
    logging.getLogger("gunicorn.error").addFilter(one_line_for_stalled_clients)
    wsgi.Response = chunk_writing_response(wsgi.Response)
    # Everything loaded so far lives as long as the worker: keep it out of the
    # garbage collector's full passes, which otherwise scan it again and again
    # (hundreds of milliseconds with thousands of streams open).
    gc.freeze()


def chunk_writing_response(base):
    """gunicorn's HTTP/1 response, with a short path for each chunk of a streaming body.

    For every event a stream yields, gunicorn's write() goes through five
    calls (send_headers, _emit_body, util.write, write_chunk, sendall) and
    builds a list to frame ten bytes: a third of what the server spends on a
    broadcast delivery outside the kernel. Once the headers are out and the
    body is chunked, this frames and sends the chunk in one step; the same
    bytes (tests/test_limits.py checks), and anything else goes the usual way.
    """

    class ChunkWritingResponse(base):
        def write(self, arg):
            if self.headers_sent and self.chunked and type(arg) is bytes and arg \
                    and not self._omits_body:
                self.sent += len(arg)
                self.sock.sendall(b"%X\r\n%s\r\n" % (len(arg), arg))
            else:
                super().write(arg)

    return ChunkWritingResponse


def one_line_for_stalled_clients(record):
    """Log a client cut off for not reading (SSE_WRITE_TIMEOUT) in one line, not a traceback.

    The kernel ends such a connection with ETIMEDOUT (streams.py sets
    TCP_USER_TIMEOUT), and gunicorn logs any socket error other than a reset
    or a broken pipe with its traceback: thousands of them when a network drops.
    """
    if record.exc_info and isinstance(record.exc_info[1], TimeoutError):
        record.msg, record.args = "closed a connection whose client stopped reading: %s", (
            record.exc_info[1],)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


def worker_exit(server, worker):
    """Let the chat answers this worker started finish before it goes (with REDIS_URL).

    Their readers ended when the worker was told to stop and re-attached to
    another worker, which reads the chunks from Redis as this one writes them.
    Without Redis nobody else could read them, so there is nothing to wait for.
    On a reload (HUP) the master lets this run for CHAT_DRAIN_SECONDS; on a
    full stop (TERM) it kills the worker after graceful_timeout, cutting them.
    """
    app = getattr(worker, "wsgi", None)
    if app is None or not app.extensions["streams"].stopping:
        return  # a quick stop (SIGINT, SIGQUIT), or it never started: no waiting
    answers = app.extensions["answers"]
    if answers.shared:
        answers.drain(app.config["CHAT_DRAIN_SECONDS"])
