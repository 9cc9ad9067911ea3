"""GET and POST /broadcast through Flask's test client, with the in-memory broker."""

import json
import time

import pytest
from conftest import FAST
from wire import blocks, next_message

from app import create_app


def publish(client, data, event=None, **kwargs):
    body = {"data": data} if event is None else {"data": data, "event": event}
    response = client.post("/broadcast", json=body, **kwargs)
    assert response.status_code == 202, response.json
    return response.json["id"]


def test_stream_sends_the_sse_headers_then_retry(client):
    response = client.get("/broadcast")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert next(blocks(response)) == "retry: 100"
    response.close()


def test_a_published_message_reaches_every_open_stream(client):
    streams = [client.get("/broadcast") for _ in range(3)]
    readers = [blocks(r) for r in streams]
    assert all(next(r) == "retry: 100" for r in readers)
    id = publish(client, {"text": "hi"}, event="news")
    for reader in readers:
        assert next_message(reader) == f'event: news\nid: {id}\ndata: {{"text": "hi"}}'
    for response in streams:
        response.close()


def test_post_answers_202_with_the_id_the_subscribers_see(client):
    stream = client.get("/broadcast")
    reader = blocks(stream)
    next(reader)
    before = time.time_ns() // 1_000_000
    response = client.post("/broadcast", json={"data": "x"})
    assert response.status_code == 202
    milliseconds, sequence = response.json["id"].split("-")  # a Redis stream id
    assert before <= int(milliseconds) <= time.time_ns() // 1_000_000 and sequence == "0"
    assert next_message(reader).split("\n")[0] == f"id: {response.json['id']}"
    stream.close()


def test_data_with_line_breaks_stays_on_one_data_line(client):
    response = client.get("/broadcast")
    reader = blocks(response)
    next(reader)
    publish(client, "one\ntwo\r\nthree")
    assert next_message(reader).split("\n")[1] == 'data: "one\\ntwo\\r\\nthree"'
    response.close()


def test_idle_stream_sends_heartbeats(client):
    response = client.get("/broadcast")
    reader = blocks(response)
    assert next(reader) == "retry: 100"
    assert next(reader) == ": heartbeat"
    response.close()


@pytest.mark.parametrize("how", ["header", "query"])
def test_last_event_id_replays_what_was_missed(client, how):
    sent = [publish(client, n) for n in range(4)]
    if how == "header":
        response = client.get("/broadcast", headers={"Last-Event-ID": sent[1]})
    else:  # a brand-new EventSource cannot set the header
        response = client.get(f"/broadcast?lastEventId={sent[1]}")
    reader = blocks(response)
    assert next(reader) == "retry: 100"
    assert [next_message(reader).split("\n")[0] for _ in range(2)] == [
        f"id: {sent[2]}", f"id: {sent[3]}"]
    response.close()


def test_an_aged_out_id_gets_a_reset_event_then_the_history():
    client = create_app({"TESTING": True, **FAST, "BROADCAST_HISTORY": 2}).test_client()
    sent = [publish(client, n) for n in range(5)]
    response = client.get("/broadcast", headers={"Last-Event-ID": sent[0]})
    reader = blocks(response)
    next(reader)
    name, data = next(reader).split("\n")
    assert name == "event: reset"
    assert json.loads(data.removeprefix("data: ")) == {
        "reason": "aged-out", "last_event_id": sent[0], "history_from": sent[3]}
    assert [next_message(reader).split("\n")[0] for _ in range(2)] == [
        f"id: {sent[3]}", f"id: {sent[4]}"]
    response.close()


def test_a_malformed_id_gets_a_reset_event(client):
    publish(client, 1)
    response = client.get("/broadcast", headers={"Last-Event-ID": "not-an-id"})
    reader = blocks(response)
    next(reader)
    name, data = next(reader).split("\n")
    assert name == "event: reset"
    notice = json.loads(data.removeprefix("data: "))
    assert (notice["reason"], notice["last_event_id"]) == ("unknown-id", None)
    response.close()


def test_closing_a_stream_unsubscribes_it(client):
    response = client.get("/broadcast")
    next(blocks(response))
    health = client.get("/healthz").json
    assert (health["broker"], health["broadcast_subscribers"], health["open_streams"]) == (
        "memory", 1, 1)
    response.close()
    health = client.get("/healthz").json
    assert (health["broadcast_subscribers"], health["open_streams"]) == (0, 0)


def test_a_client_a_whole_queue_behind_is_dropped_and_its_stream_ends():
    app = create_app({"TESTING": True, **FAST, "BROADCAST_QUEUE": 2})
    client = app.test_client()
    slow, fast = client.get("/broadcast"), client.get("/broadcast")
    slow_reader, fast_reader = blocks(slow), blocks(fast)
    next(slow_reader), next(fast_reader)
    for n in range(3):
        id = publish(client, n)
        assert next_message(fast_reader).startswith(f"id: {id}\n")
    assert app.extensions["broker"].subscribers == 1
    assert list(slow_reader) == []  # its stream ends; EventSource reconnects and replays
    slow.close()  # what the WSGI server does once a body ends
    assert client.get("/healthz").json["open_streams"] == 1
    fast.close()


def test_the_stream_cap_applies_to_broadcast_streams():
    client = create_app({"TESTING": True, **FAST, "MAX_STREAMS": 1}).test_client()
    first = client.get("/broadcast")
    next(blocks(first))
    refused = client.get("/broadcast")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    first.close()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "param"),
    [
        ('{"data": 1}', "text/plain", 415, None),
        ("data=1", "application/x-www-form-urlencoded", 415, None),
        ("{not json", "application/json", 400, None),
        ('{"data": NaN}', "application/json", 400, None),
        ("[" * 5000 + "]" * 5000, "application/json", 400, None),
        (b'{"data": "\xff"}', "application/json", 400, None),
        ('[1, 2]', "application/json", 400, "data"),
        ('{"event": "news"}', "application/json", 400, "data"),
        ('{"data": 1, "evnt": "news"}', "application/json", 400, "evnt"),
        ('{"data": 1, "event": ""}', "application/json", 400, "event"),
        ('{"data": 1, "event": "a\\nb"}', "application/json", 400, "event"),
        ('{"data": 1, "event": "a\\rb"}', "application/json", 400, "event"),
        ('{"data": 1, "event": "' + "x" * 65 + '"}', "application/json", 400, "event"),
        ('{"data": 1, "event": 7}', "application/json", 400, "event"),
        ('{"data": 1, "event": "reset"}', "application/json", 400, "event"),
        # EventSource fires these itself: a message named so would pass for a failed
        # or a new connection on every page.
        ('{"data": 1, "event": "error"}', "application/json", 400, "event"),
        ('{"data": 1, "event": "open"}', "application/json", 400, "event"),
        # Numbers JavaScript cannot read back as sent.
        ('{"data": 1e400}', "application/json", 400, None),
        ('{"data": [-1e309]}', "application/json", 400, None),
        ('{"data": ' + "9" * 400 + "}", "application/json", 400, None),
        ('{"data": Infinity}', "application/json", 400, None),
        # Valid JSON, but text that cannot be sent as UTF-8.
        ('{"data": "\\ud800"}', "application/json", 400, "data"),
        ('{"data": {"k": ["a\\udfffb"]}}', "application/json", 400, "data"),
        ('{"data": 1, "event": "a\\ud800"}', "application/json", 400, "event"),
        ('{"data": "' + "x" * 16384 + '"}', "application/json", 413, None),
    ],
)
def test_bad_posts_answer_with_a_json_error_and_publish_nothing(
        client, app, body, content_type, status, param):
    response = client.post("/broadcast", data=body, content_type=content_type)
    assert response.status_code == status
    assert response.json["error"]["param"] == param
    assert response.json["error"]["type"] == "invalid_request_error"
    stream = client.get("/broadcast", headers={"Last-Event-ID": "0-0"})
    reader = blocks(stream)
    next(reader)
    assert json.loads(next(reader).split("data: ")[1])["history_from"] is None  # nothing kept
    stream.close()


@pytest.mark.parametrize("data", [1e308, -2.5e-300, 10**300, "\ud83d\ude00", "\u2028"])
def test_numbers_a_double_holds_and_any_valid_text_are_accepted(client, data):
    response = client.post("/broadcast", json={"data": data})
    assert response.status_code == 202


def test_the_largest_allowed_message_is_accepted():
    client = create_app({"TESTING": True, **FAST, "BROADCAST_MAX_BYTES": 100}).test_client()
    body = '{"data": "' + "x" * (100 - len('{"data": ""}')) + '"}'
    assert len(body) == 100
    assert client.post("/broadcast", data=body, content_type="application/json").status_code == 202
    response = client.post("/broadcast", data=body + " ", content_type="application/json")
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer wrong", 401),
        ("Basic s3cret", 401),
        ("Bearer s3cret-and-more", 401),
        ("Bearer s3cret", 202),
        ("bearer s3cret", 202),
    ],
)
def test_publish_token_guards_post(monkeypatch, authorization, status):
    monkeypatch.setenv("PUBLISH_TOKEN", "s3cret")
    client = create_app({"TESTING": True, **FAST}).test_client()
    headers = {"Authorization": authorization} if authorization else {}
    response = client.post("/broadcast", json={"data": 1}, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json["error"]["type"] == "invalid_request_error"


def test_the_stream_needs_no_token(monkeypatch):
    monkeypatch.setenv("PUBLISH_TOKEN", "s3cret")
    client = create_app({"TESTING": True, **FAST}).test_client()
    response = client.get("/broadcast")
    assert response.status_code == 200
    response.close()


def test_the_page_carries_the_broadcast_panel(client):
    page = client.get("/").get_data(as_text=True)
    for id in ("broadcast-form", "broadcast-input", "broadcast-send", "broadcast-log"):
        assert f'id="{id}"' in page
    assert 'data-url="/broadcast"' in page
    assert 'src="/static/broadcast.js"' in page
