"""The Python consumer example resumes across a server restart without a gap."""

import threading

from servers import wait_until

from examples.consume import consume


def test_consumer_resumes_after_restart_without_gap_or_duplicate(gunicorn):
    server = gunicorn()
    port = int(server.url.rsplit(":", 1)[1])
    ids = []
    reader = threading.Thread(
        target=consume,
        args=(server.url + "/stream?interval=0.05&limit=40&ping=0",),
        kwargs={"on_event": lambda name, id, data: name == "message" and ids.append(data["count"])},
        daemon=True,
    )
    reader.start()
    wait_until(lambda: len(ids) >= 10, timeout=10, what="the first ten events")
    server.stop()
    gunicorn(port=port)
    reader.join(timeout=30)
    assert not reader.is_alive(), "the consumer did not reach the end event"
    assert ids == list(range(1, 41))
