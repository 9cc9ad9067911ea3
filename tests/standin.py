"""What a browser meets on the app's port while the app is away: a real HTTP server.

    python tests/standin.py PORT 502       every request answers 502, like a proxy mid-deploy
    python tests/standin.py PORT hostile   /stream sends markup in an id, in data and in JSON

``GET /ready`` answers 200 in both modes, so a test knows when it listens.
Each request is logged to stderr, so a test can count the browser's tries.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Every string here would create an element with an "injected-" id if the
# page ever parsed server text as HTML.
HOSTILE = (
    "retry: 100\n\n"
    "id: <img id=injected-id src=x>\n"
    "data: <img id=injected-data src=x>\n\n"
    "event: ping\n"
    'data: {"time": "<img id=injected-ping src=x>"}\n\n'
)


class Handler(BaseHTTPRequestHandler):
    mode = "502"

    def do_GET(self):
        if self.path == "/ready":
            self.answer(200, "text/plain", "ready\n")
        elif self.mode == "502":
            self.answer(502, "text/html", "<h1>502 Bad Gateway</h1>\n")
        elif self.path.startswith("/stream"):
            self.answer(200, "text/event-stream", HOSTILE)
            self.rfile.read()  # hold the stream open until the browser leaves
        else:
            self.answer(404, "text/plain", "not found\n")

    def answer(self, status, content_type, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        if content_type != "text/event-stream":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def main(port, mode):
    Handler.mode = mode
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    server.daemon_threads = True  # a held stream must not keep the process alive
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(*sys.argv[1:])
