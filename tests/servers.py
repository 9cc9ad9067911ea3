"""Start the real servers the integration tests talk to, on free loopback ports.

Each helper waits for a condition (a port answering, a health check passing)
with a deadline, never for a fixed sleep, and every process is stopped by the
PID it was started with.
"""

import asyncio
import concurrent.futures
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def need(program):
    """Return the path of ``program``; skip without it (in CI a skip fails: ci_skips.py)."""
    path = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/usr/bin/{program}") if os.path.exists(p)), None)
    if path is None:
        pytest.skip(f"{program} is not installed (make test installs nothing system-wide)")
    return path


def free_port():
    """A port nobody listens on right now (someone may take it before we bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout=10.0, interval=0.02, what="condition"):
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def answers(url):
    """True when ``url`` answers 200."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def run_async(coroutine):
    """asyncio.run() in a thread of its own; use it instead of asyncio.run() in tests.

    Once a browser test has run, Playwright's sync API keeps an event loop
    running in the main thread, and asyncio.run() there refuses to start.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class Server:
    """A process we started, its URL, and how to stop it."""

    def __init__(self, args, url, ready_url, env=None, cwd=ROOT, log=None, open_files=None):
        self.args, self.url = args, url
        self.log = log
        self.proc = subprocess.Popen(
            args, cwd=cwd, env={**os.environ, **(env or {})},
            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
            preexec_fn=open_files and (lambda: resource.setrlimit(
                resource.RLIMIT_NOFILE, (open_files, open_files))))
        try:
            wait_until(lambda: self.proc.poll() is not None or answers(ready_url),
                       timeout=20, what=f"{args[0]} to answer {ready_url}")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, args))} exited with {self.proc.returncode}"
                               f"{self.output_hint()}")

    @property
    def pid(self):
        return self.proc.pid

    def send(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGINT, timeout=10):
        """Stop the process (SIGINT: gunicorn and nginx both stop at once) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output_hint(self):
        if self.log is None:
            return ""
        self.log.flush()
        return "; output:\n" + Path(self.log.name).read_text()[-3000:]


def start_gunicorn(log_dir, env=None, args=(), port=None, open_files=None):
    """Run ``gunicorn app:app`` from the repo with our gunicorn.conf.py on a free port.

    ``open_files`` lowers its open-file limit, soft and hard, as ``ulimit -n`` would.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(Path(log_dir) / f"gunicorn-{port}.log", "w")
    cmd = [sys.executable, "-m", "gunicorn", "app:app", "--bind", f"127.0.0.1:{port}",
           "--access-logfile", "-", *args]
    return Server(cmd, url, url + "/healthz", env=env, log=log, open_files=open_files)


# The README's (and the Makefile's) command for a local self-signed certificate,
# run from the nginx prefix.
OPENSSL_CERT = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "365", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout", ".nginx/localhost.key", "-out", ".nginx/localhost.crt"]


def shipped_nginx_conf(upstream_port, http_port, https_port, replace=()):
    """The repository's nginx.conf, with only its ports and the given (old, new) lines changed.

    Every other path in it is relative to the prefix nginx runs from, so the
    tests run the file we ship. A line to change must be there, so an edit to
    nginx.conf cannot silently turn a substitution into a no-op.
    """
    text = (ROOT / "nginx.conf").read_text()
    for old, new in [
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{http_port};"),
        ("listen 127.0.0.1:8443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        *replace,
    ]:
        if old not in text:
            raise AssertionError(f"nginx.conf no longer contains {old!r}")
        text = text.replace(old, new)
    return text


def start_nginx(prefix, upstream_url, replace=()):
    """Run the shipped nginx.conf from ``prefix`` in front of ``upstream_url``.

    Returns a Server with ``url`` (HTTP/1.1) and ``https_url`` (HTTP/2 over TLS).
    """
    nginx = need("nginx")
    prefix = Path(prefix)
    (prefix / ".nginx").mkdir(parents=True, exist_ok=True)
    if not (prefix / "static").exists():
        (prefix / "static").symlink_to(ROOT / "static", target_is_directory=True)
    if not (prefix / ".nginx/localhost.crt").exists():
        subprocess.run([need("openssl"), *OPENSSL_CERT[1:]], cwd=prefix, check=True,
                       capture_output=True)
    upstream_port = int(upstream_url.rsplit(":", 1)[1])
    # Root's workers run as nobody, who cannot enter pytest's private temp dirs.
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    for _ in range(3):  # a free port may be taken before nginx binds it
        http_port, https_port = free_port(), free_port()
        (prefix / "nginx.conf").write_text(
            shipped_nginx_conf(upstream_port, http_port, https_port, replace))
        log = open(prefix / f"nginx-{http_port}.log", "w")
        url = f"http://127.0.0.1:{http_port}"
        try:
            server = Server([nginx, "-p", str(prefix), "-c", "nginx.conf", "-g", directives],
                            url, url + "/healthz", cwd=prefix, log=log)
        except RuntimeError as exc:
            if "Address already in use" in str(exc):
                continue
            raise
        server.https_url = f"https://127.0.0.1:{https_port}"
        return server
    raise RuntimeError("nginx found no free port in three tries")


class RedisServer:
    """A throwaway redis-server on a free loopback port: no persistence, restartable.

    ``stop()`` then ``start()`` brings it back on the same port, empty, as a
    Redis without persistence comes back after a crash.
    """

    def __init__(self, directory):
        self.program = need("redis-server")
        self.directory = Path(directory)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self):
        log = open(self.directory / f"redis-{self.port}.log", "a")
        self.proc = subprocess.Popen(
            [self.program, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.proc.poll() is not None or self.ping(), timeout=10,
                   what=f"redis-server on port {self.port}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {log.name}")

    def ping(self):
        """True when the server answers PING (spoken by hand: no client library needed)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        """Stop at once (SIGTERM: with nothing to save, redis exits right away) and reap it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
