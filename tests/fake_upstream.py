"""A fake OpenAI chat API: a real HTTP server on loopback that streams what a test asks for.

The last user message names the scenario (``"ok"``, ``"lockstep"``, ...),
so one server serves every test. It records each request, and when and how
the app went away, so tests can check what the app did to its upstream.
"""

import json
import queue
import select
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKENS = ["Hello", " from", " the", " upstream", " ✓"]


class FakeUpstream:
    """Start the server in a thread; ``url`` is its ``/v1`` base URL."""

    def __init__(self):
        self.requests = []  # (headers, body) of each request, in order
        self.go = queue.Queue()  # lockstep: the test puts one item per chunk it has received
        self.sent = []  # lockstep: when each chunk left
        self.gone = queue.Queue()  # (scenario, seconds from our last byte until the app left)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.fake = self
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def chunk(delta, finish_reason=None):
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
            "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        """Quiet: pytest shows failures, not every request."""

    def do_POST(self):
        fake = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fake.requests.append((dict(self.headers), body))
        scenario = body["messages"][-1]["content"]
        # The leak-* scenarios quote the key the app sent, as a careless upstream might.
        key = self.headers["Authorization"].removeprefix("Bearer ")
        if scenario == "refuse":
            return self.send_json(401, {"error": {
                "message": f"Incorrect API key provided: {key}, or sk-abc***xyz",
                "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
        if not body["stream"]:
            leak = scenario == "leak-whole"
            return self.send_json(200, {
                "object": "chat.completion", "model": body["model"],
                "system_fingerprint": key if leak else None,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant",
                                         "content": f"Your key is {key}." if leak else scenario}}]})
        self.start_stream()
        self.event(chunk({"role": "assistant", "content": ""}))
        if scenario == "ok":
            for token in TOKENS:
                self.event(chunk({"content": token}))
            self.event(chunk({}, "stop"))
            self.send_text("data: [DONE]\n\n")
            self.end_stream()
        elif scenario == "lockstep":
            for token in TOKENS:
                fake.go.get(timeout=10)  # the test received the previous chunk
                fake.sent.append(time.monotonic())
                self.event(chunk({"content": token}))
            self.send_text("data: [DONE]\n\n")
            self.end_stream()
        elif scenario == "bad-json":
            self.event(chunk({"content": "fine"}))
            self.send_text("data: {not json\n\n")
            self.wait_until_gone(scenario, timeout=10)
        elif scenario == "error-event":
            self.event(chunk({"content": "fine"}))
            self.event({"error": {"message": "overloaded", "type": "server_error",
                                  "param": None, "code": None}})
            self.wait_until_gone(scenario, timeout=10)
        elif scenario == "leak-chunk":
            self.event(chunk({"content": f"Your key is {key}."}))
            # The same key with every character a JSON escape: only the parsed text shows it.
            escaped = "".join(f"\\u{ord(c):04x}" for c in key)
            again = json.dumps(chunk({"content": " Again: KEY."})).replace("KEY", escaped)
            self.send_text(f"data: {again}\n\n")
            self.event(chunk({"content": " Another: sk-proj-Other_key-123."}))
            self.event(chunk({}, "stop"))
            self.send_text("data: [DONE]\n\n")
            self.end_stream()
        elif scenario == "leak-error":
            self.event(chunk({"content": "fine"}))
            self.event({"error": {"message": f"quota exceeded for {key}, or sk-abc***xyz",
                                  "type": "server_error", "param": None, "code": None}})
            self.wait_until_gone(scenario, timeout=10)
        elif scenario == "reset":
            self.event(chunk({"content": "fine"}))
            # SO_LINGER 0: close() sends RST, as a crashed or killed server does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
        elif scenario == "silent":
            self.wait_until_gone(scenario, timeout=10)
        elif scenario == "think":  # silent for a while, then the answer, as a reasoning model
            time.sleep(1)
            for token in TOKENS:
                self.event(chunk({"content": token}))
            self.event(chunk({}, "stop"))
            self.send_text("data: [DONE]\n\n")
            self.end_stream()
        elif scenario == "drip":
            last = time.monotonic()
            try:
                for n in range(1000):
                    self.event(chunk({"content": f" {n}"}))
                    last = time.monotonic()
                    time.sleep(0.02)
            except OSError:  # the app closed the connection: writes fail
                fake.gone.put((scenario, time.monotonic() - last))
        self.close_connection = True

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_text(self, text):
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))  # wfile is unbuffered

    def event(self, payload):
        self.send_text(f"data: {json.dumps(payload, ensure_ascii=False)}\n\n")

    def end_stream(self):
        self.wfile.write(b"0\r\n\r\n")

    def wait_until_gone(self, scenario, timeout):
        """Send nothing more; report how long the app took to close the connection."""
        since = time.monotonic()
        readable, _, _ = select.select([self.connection], [], [], timeout)
        if readable and self.connection.recv(1) == b"":
            self.server.fake.gone.put((scenario, time.monotonic() - since))
