"""/stream, /healthz and the page through Flask's test client (no server, no sleeps)."""

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import FAST
from wire import read_blocks as read_events

from app import create_app, utc_now


def test_stream_sends_the_sse_headers(client):
    response = client.get("/stream")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    response.close()


def test_stream_starts_with_retry_then_counter_and_random(client):
    response = client.get("/stream?interval=0.05")
    retry, counter, rand = read_events(response, 3)
    response.close()
    assert retry == "retry: 100"
    id_line, data_line = counter.split("\n")
    assert id_line == "id: 1"
    payload = json.loads(data_line.removeprefix("data: "))
    assert payload["count"] == 1 and payload["time"].endswith("Z")
    name, data = rand.split("\n")
    assert name == "event: random"
    assert 0 <= json.loads(data.removeprefix("data: "))["value"] <= 99


def test_ping_events_are_named_and_carry_utc_time(client):
    response = client.get("/stream?interval=5&ping=0.02")
    blocks = read_events(response, 4)
    response.close()
    ping = blocks[3]
    assert ping.startswith("event: ping\ndata: ")
    assert json.loads(ping.split("data: ")[1])["time"].endswith("Z")


def test_finite_stream_ends_with_a_named_end_event(client):
    response = client.get("/stream?interval=0.02&limit=3&ping=0")
    body = response.get_data(as_text=True)
    ids = [line for line in body.split("\n") if line.startswith("id: ")]
    assert ids == ["id: 1", "id: 2", "id: 3"]
    assert body.endswith('event: end\ndata: {"reason": "limit", "limit": 3}\n\n')


@pytest.mark.parametrize(
    ("headers", "query", "first_id"),
    [
        ({"Last-Event-ID": "41"}, "", 42),
        ({}, "&lastEventId=9", 10),
        ({"Last-Event-ID": "5"}, "&lastEventId=9", 6),  # the reconnect header wins
        ({"Last-Event-ID": "not-a-number"}, "", 1),  # malformed: fresh, never refused
        ({"Last-Event-ID": "-3"}, "", 1),
    ],
)
def test_last_event_id_resumes_the_counter(client, headers, query, first_id):
    response = client.get(f"/stream?interval=0.05{query}", headers=headers)
    assert response.status_code == 200
    _, counter = read_events(response, 2)
    response.close()
    assert counter.startswith(f"id: {first_id}\n")


def test_resuming_past_the_limit_ends_at_once(client):
    response = client.get("/stream?limit=3", headers={"Last-Event-ID": "3"})
    body = response.get_data(as_text=True)
    assert body == 'retry: 100\n\nevent: end\ndata: {"reason": "limit", "limit": 3}\n\n'


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("interval=abc", "interval"),
        ("interval=0", "interval"),
        ("interval=-1", "interval"),
        ("interval=nan", "interval"),
        ("interval=inf", "interval"),
        ("interval=100000", "interval"),
        ("limit=0", "limit"),
        ("limit=2.5", "limit"),
        ("limit=ten", "limit"),
        ("ping=0.0001", "ping"),
        ("ping=x", "ping"),
        # Only plain ASCII digits: float() and int() would take every one of these.
        ("interval=1_000", "interval"),
        ("interval=%EF%BC%91", "interval"),  # fullwidth digit one
        ("interval=%D9%A1", "interval"),  # Arabic-Indic digit one
        ("interval=1e3", "interval"),
        ("interval=%201", "interval"),
        ("limit=%D9%A1%D9%A2", "limit"),
        ("limit=+5", "limit"),
        ("ping=" + "9" * 400, "ping"),
    ],
)
def test_bad_query_parameters_get_400_naming_the_parameter(client, app, query, param):
    response = client.get(f"/stream?{query}")
    assert response.status_code == 400
    assert response.json["error"]["param"] == param
    assert param in response.json["error"]["message"]
    assert app.extensions["streams"].count == 0


def test_ticks_missed_while_a_stream_was_held_up_are_skipped_not_bunched(client):
    response = client.get("/stream?interval=0.05&ping=0")
    chunks = response.iter_encoded()
    assert next(chunks).startswith(b"retry:")
    assert next(chunks).startswith(b"id: 1\n")
    time.sleep(0.3)  # the stimulus, not a wait: six ticks fall due while nobody reads
    late = next(chunks)
    late_at = time.monotonic()
    following = next(chunks)
    gap = time.monotonic() - late_at
    response.close()
    assert late.startswith(b"id: 2\n") and following.startswith(b"id: 3\n")  # no gap in ids
    assert gap > 0.04, f"tick 3 came {gap:.3f} s after tick 2, bunched"  # 0.05 s, less jitter


def test_idle_stream_sends_heartbeat_comments(client):
    response = client.get("/stream?interval=3600&ping=0")
    _, _, _, heartbeat = read_events(response, 4)
    response.close()
    assert heartbeat == ": heartbeat"


def test_closing_the_response_runs_the_cleanup(client, app):
    response = client.get("/stream?interval=0.05")
    read_events(response, 2)
    assert client.get("/healthz").json["open_streams"] == 1
    response.close()
    assert client.get("/healthz").json["open_streams"] == 0


def test_streams_past_the_cap_get_503_with_retry_after():
    client = create_app({**FAST, "MAX_STREAMS": 2}).test_client()
    open_ones = [client.get("/stream"), client.get("/stream")]
    refused = client.get("/stream")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"].isdigit()
    assert "too many open streams" in refused.json["error"]["message"]
    for response in open_ones:
        read_events(response, 1)
        response.close()
    assert client.get("/stream").status_code == 200


def test_head_sends_the_headers_and_holds_no_stream_slot():
    # Werkzeug answers HEAD without ever starting the body, so a slot taken
    # for it would never be given back: three of these used to fill this cap.
    client = create_app({**FAST, "MAX_STREAMS": 1}).test_client()
    for _ in range(3):
        response = client.head("/stream")
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert response.data == b""
        response.close()
    assert client.get("/healthz").json["open_streams"] == 0


def test_healthz_reports_every_kind_of_open_stream():
    client = create_app({**FAST, "MAX_STREAMS": 5}).test_client()
    assert client.get("/healthz").json == {
        "status": "ok", "pid": os.getpid(), "open_streams": 0, "max_streams": 5,
        "broker": "memory", "broadcast_subscribers": 0, "chat_streams": 0, "chat_answers": 0}
    opened = [client.get("/stream"), client.get("/broadcast"),
              client.post("/v1/chat/completions", json={
                  "messages": [{"role": "user", "content": "hi"}], "stream": True})]
    body = client.get("/healthz").json
    assert (body["open_streams"], body["broadcast_subscribers"], body["chat_streams"],
            body["chat_answers"]) == (3, 1, 1, 1)
    for response in opened:
        response.close()
    body = client.get("/healthz").json
    assert (body["open_streams"], body["broadcast_subscribers"], body["chat_streams"]) == (0, 0, 0)


def test_cross_origin_is_off_by_default(client):
    response = client.get("/healthz", headers={"Origin": "https://elsewhere.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_allow_listed_origin_gets_cors_and_its_preflight_passes():
    client = create_app({**FAST, "CORS_ORIGINS": "https://a.example, https://b.example"}).test_client()
    preflight = client.options("/stream", headers={
        "Origin": "https://b.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id",
    })
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://b.example"
    assert "Last-Event-ID" in preflight.headers["Access-Control-Allow-Headers"]
    other = client.get("/healthz", headers={"Origin": "https://c.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Origin" in other.headers["Vary"]


def test_unknown_path_answers_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json["error"]["type"] == "invalid_request_error"


def test_wrong_method_answers_json_405_with_allow(client):
    response = client.post("/stream")
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    assert response.json["error"]["message"]


def test_page_only_runs_its_own_scripts_and_no_shared_cache_keeps_it(client):
    response = client.get("/")
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["Cache-Control"] == "private, no-cache"


def test_a_forwarded_prefix_never_reaches_the_page_even_behind_a_trusted_proxy():
    client = create_app({**FAST, "TRUST_PROXY": 1}).test_client()
    page = client.get("/", headers={"X-Forwarded-Prefix": "//evil.example"}).text
    assert "evil.example" not in page
    assert 'src="/static/stream.js"' in page


def test_utc_now_is_iso_8601_utc_with_milliseconds():
    before = datetime.now(UTC)
    stamp = utc_now()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    parsed = datetime.fromisoformat(stamp)
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= parsed <= after


def test_the_core_runs_without_the_optional_packages():
    # redis, httpx and httpx-sse are imported only where they are used: with
    # REDIS_URL and with OPENAI_API_KEY. Here importing any of them fails.
    code = """if True:
        import sys
        for name in ("redis", "httpx", "httpx_sse"):
            sys.modules[name] = None
        import app
        client = app.app.test_client()
        assert client.get("/stream?limit=1").status_code == 200
        chat = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "stream": True})
        assert b"[DONE]" in chat.data
        assert client.post("/broadcast", json={"data": 1}).status_code == 202
        print("ok")
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SSE_", "OPENAI_")) and k != "REDIS_URL"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**env, "SSE_CHAT_TOKEN_DELAY": "0"}, timeout=60,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_app_runs_where_python_has_no_resource_module():
    # README: on Windows "Flask's threaded development server still streams". Windows
    # Python has no resource module (Unix only); here importing it fails, as it does there.
    code = """if True:
        import sys
        sys.modules["resource"] = None
        import app
        client = app.app.test_client()
        assert client.get("/stream?limit=1").status_code == 200
        print("ok")
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SSE_", "OPENAI_")) and k != "REDIS_URL"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
