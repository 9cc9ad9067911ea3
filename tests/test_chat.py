"""/v1/chat/completions: the offline model, request checks, and the proxy to a real upstream.

Request checks use Flask's test client. Streaming is tested on real gunicorn,
read by the official openai client and by httpx-sse (never by our own parser);
proxy mode talks to a fake OpenAI that is a real HTTP server (fake_upstream.py).
"""

import json
import time

import httpx
import openai
import pytest
import wire
from conftest import FAST
from fake_upstream import TOKENS, FakeUpstream
from httpx_sse import connect_sse
from servers import free_port, start_gunicorn, wait_until

from app import create_app

URL = "/v1/chat/completions"
USER = {"role": "user", "content": "How does ChatGPT stream its answers?"}
KEY = "sk-test-0123456789abcdefSECRET"
UPSTREAM_TIMEOUT = 2  # seconds a silent upstream is given in proxy mode
ABANDON = 1  # seconds an answer nobody reads goes on in proxy mode


@pytest.fixture
def app():
    return create_app({"TESTING": True, **FAST, "CHAT_TOKEN_DELAY": 0})


def events_of(text):
    """The data of each event in a complete stream."""
    return [data for _, data in wire.events(text)]


def stream_counts(client):
    health = client.get("/healthz").json
    return health["open_streams"], health["chat_streams"]


# --- The offline model, through the test client -----------------------------------------------

def test_streamed_answer_is_chunks_then_stop_then_done(client):
    response = client.post(URL, json={"model": "any-name", "messages": [USER], "stream": True})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    *chunks, done = events_of(response.get_data(as_text=True))
    assert done == "[DONE]"
    chunks = [json.loads(c) for c in chunks]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "stop"}
    tokens = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(tokens) > 20 and all(tokens)
    whole = client.post(URL, json={"messages": [USER]}).json
    assert "".join(tokens) == whole["choices"][0]["message"]["content"]


def test_whole_answer_is_a_chat_completion_with_usage(client):
    response = client.post(URL, json={"model": "gpt-4o", "messages": [USER], "stream": False})
    assert response.status_code == 200
    body = response.json
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(USER["content"].split())
    assert usage["completion_tokens"] == len(choice["message"]["content"].split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_same_prompt_same_answer_and_the_answer_works_from_the_prompt(client):
    def answer(content):
        body = {"messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": content}]}
        return client.post(URL, json=body).json["choices"][0]["message"]["content"]

    assert answer("Tell me about heartbeats") == answer("Tell me about heartbeats")
    assert answer("Tell me about heartbeats").startswith("You asked: “Tell me about heartbeats”.")
    assert ": heartbeat" in answer("Tell me about heartbeats")
    assert "AbortController" in answer([{"type": "text", "text": "How does Stop work?"}])
    assert "text/event-stream" in answer("Hi")


def test_models_lists_the_offline_model(client):
    response = client.get("/v1/models")
    assert response.status_code == 200
    assert response.json["object"] == "list"
    assert [m["id"] for m in response.json["data"]] == ["sse-demo-offline"]


def test_closing_a_chat_stream_runs_the_cleanup(client):
    response = client.post(URL, json={"messages": [USER], "stream": True})
    next(response.iter_encoded())
    assert stream_counts(client) == (1, 1)
    response.close()
    assert stream_counts(client) == (0, 0)


def test_chat_streams_past_the_cap_get_503():
    client = create_app({**FAST, "MAX_STREAMS": 1}).test_client()
    first = client.post(URL, json={"messages": [USER], "stream": True})
    next(first.iter_encoded())
    refused = client.post(URL, json={"messages": [USER], "stream": True})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    first.close()
    assert stream_counts(client) == (0, 0)


# --- Bad input: refused before anything streams, in OpenAI's error shape ------------------------

@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
        ({"messages": [USER, {"role": "user"}]}, "messages[1].content"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages[0].content"),
        ({"messages": [USER], "model": 4}, "model"),
        ({"messages": [USER], "stream": "true"}, "stream"),
    ],
)
def test_bad_chat_request_gets_400_naming_the_parameter(client, body, param):
    response = client.post(URL, json={"stream": True, **body})
    assert response.status_code == 400
    assert response.json["error"]["param"] == param
    assert param in response.json["error"]["message"]
    assert response.json["error"]["type"] == "invalid_request_error"
    assert stream_counts(client) == (0, 0)


# json.dumps writes a lone surrogate as the escape \ud800: valid JSON, but no UTF-8 can carry it.
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
        ({"messages": [USER, {"role": "user", "content": "a\udfffb"}]}, "messages[1].content"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d"},
                                                     {"type": "text", "text": "\ude00"}]}]},
         "messages[0].content"),  # half a pair in each part: joined, they are still two halves
        ({"messages": [USER], "model": "gpt-\ud800"}, "model"),
        ({"messages": [{**USER, "name": "\ud800"}]}, "messages[0]"),  # forwarded upstream too
    ],
)
def test_text_that_utf8_cannot_encode_gets_400_naming_the_parameter(client, body, param):
    response = client.post(URL, data=json.dumps({"stream": True, **body}),
                           content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"]["param"] == param
    assert param in response.json["error"]["message"]
    assert "not valid Unicode" in response.json["error"]["message"]
    assert response.json["error"]["type"] == "invalid_request_error"
    assert stream_counts(client) == (0, 0)


def test_an_escaped_surrogate_pair_is_one_character_and_welcome(client):
    body = json.dumps({"messages": [{"role": "user", "content": "Hi 😀"}]})
    assert "\\ud83d\\ude00" in body
    response = client.post(URL, data=body, content_type="application/json")
    assert response.status_code == 200
    assert "“Hi 😀”" in response.json["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"messages": [}', b"", b'{"messages": "\xff"}', b"[" * 5000],
    ids=["truncated", "malformed", "empty", "bad-utf8", "too-deep"],
)
def test_body_that_is_not_json_gets_400(client, raw):
    response = client.post(URL, data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"]["message"] == "the request body is not valid JSON"


# Python's json reads these, but no JSON encoder writes them back: httpx refuses to send
# them upstream, and no browser's JSON.parse reads them.
@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ('{"messages": [{"role": "user", "content": "hi", "x": NaN}]}', "NaN"),
        ('{"messages": [{"role": "user", "content": "hi", "name": 1e400}]}', "1e400"),
        ('{"messages": [{"role": "user", "content": "hi"}], "temperature": -Infinity}',
         "-Infinity"),
        ('{"messages": [{"role": "user", "content": "hi"}], "seed": 1' + "0" * 400 + "}",
         "1000000000"),
    ],
    ids=["nan", "overflowing-float", "infinity", "overflowing-integer"],
)
def test_a_number_json_cannot_carry_gets_400_saying_which(client, raw, named):
    response = client.post(URL, data=raw.replace("{", '{"stream": true, ', 1),
                           content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"]["message"].startswith("the request body is not standard JSON: ")
    assert named in response.json["error"]["message"]
    assert response.json["error"]["type"] == "invalid_request_error"
    assert stream_counts(client) == (0, 0)


def test_body_that_is_not_an_object_gets_400(client):
    response = client.post(URL, json=[USER])
    assert response.status_code == 400
    assert "JSON object" in response.json["error"]["message"]


def test_body_over_the_limit_gets_413():
    client = create_app({**FAST, "CHAT_MAX_BODY": 1000}).test_client()
    big = {"messages": [{"role": "user", "content": "x" * 1000}], "stream": True}
    response = client.post(URL, json=big)
    assert response.status_code == 413
    assert "1000 bytes" in response.json["error"]["message"]
    assert stream_counts(client) == (0, 0)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_gets_415(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(URL, data=json.dumps({"messages": [USER]}), headers=headers)
    assert response.status_code == 415
    assert response.json["error"]["message"] == "Content-Type must be application/json"


def test_get_gets_405_in_json(client):
    response = client.get(URL)
    assert response.status_code == 405
    assert response.json["error"]["type"] == "invalid_request_error"


def unreachable_upstream_client():
    config = {**FAST, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    return create_app(config).test_client()


def test_unreachable_upstream_gets_502_without_streaming():
    response = unreachable_upstream_client().post(URL, json={"messages": [USER]})
    assert response.status_code == 502
    assert "ConnectError" in response.json["error"]["message"]


def test_unreachable_upstream_becomes_an_error_event_when_streaming():
    client = unreachable_upstream_client()
    response = client.post(URL, json={"messages": [USER], "stream": True})
    [event] = events_of(response.get_data(as_text=True))
    assert json.loads(event)["error"]["message"] == (
        "the connection to the upstream model failed: ConnectError")
    assert stream_counts(client) == (0, 0)


# --- The offline model on real gunicorn ---------------------------------------------------------

def test_openai_client_streams_from_the_app(gunicorn):
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": "0.001"})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="anything", max_retries=0)
    stream = client.chat.completions.create(model="gpt-4o", messages=[USER], stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    whole = client.chat.completions.create(model="gpt-4o", messages=[USER])
    assert streamed == whole.choices[0].message.content
    assert whole.usage.completion_tokens == len(chunks) - 2
    assert [m.id for m in client.models.list()] == ["sse-demo-offline"]


def test_tokens_arrive_one_by_one_at_the_configured_pace(gunicorn):
    delay = 0.01
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": str(delay)})
    with httpx.Client(timeout=10) as client:
        body = {"messages": [USER], "stream": True}
        with connect_sse(client, "POST", server.url + URL, json=body) as source:
            arrivals = [time.monotonic() for _ in source.iter_sse()]
    assert len(arrivals) > 30
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - 3) * delay, "tokens came in a burst"


def test_chunked_body_over_the_limit_gets_413_on_gunicorn(gunicorn):
    server = gunicorn(env={"SSE_CHAT_MAX_BODY": "1000"})
    pieces = iter([b'{"messages": [{"role": "user", "content": "', b"x" * 2000, b'"}]}'])
    response = httpx.post(server.url + URL, content=pieces,
                          headers={"Content-Type": "application/json"})
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert response.status_code == 413


def test_text_that_utf8_cannot_encode_gets_400_on_gunicorn_and_the_next_chat_streams(gunicorn):
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": "0.001"})
    bad = json.dumps({"messages": [{"role": "user", "content": "\ud800"}], "stream": True})
    response = httpx.post(server.url + URL, content=bad,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content"
    events = chat_events(server, "How does Stop work?")
    assert events[-1] == "[DONE]"
    assert "AbortController" in content_of(events)


# --- Proxy mode: real gunicorn in front of a fake OpenAI on loopback ---------------------------

@pytest.fixture(scope="module")
def upstream():
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    env = {f"SSE_{key}": str(value) for key, value in FAST.items()}
    env.update({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.url,
                "OPENAI_MODEL": "fake-model", "SSE_CHAT_UPSTREAM_TIMEOUT": str(UPSTREAM_TIMEOUT),
                "SSE_CHAT_ABANDON_SECONDS": str(ABANDON)})
    server = start_gunicorn(tmp_path_factory.mktemp("proxy"), env=env)
    yield server
    server.stop()


def chat_events(server, prompt, on_event=None):
    """POST a one-message chat to the app and return the data of every event it streams."""
    events = []
    with httpx.Client(timeout=10) as client:
        body = {"model": "whatever", "messages": [{"role": "user", "content": prompt}],
                "stream": True}
        with connect_sse(client, "POST", server.url + URL, json=body) as source:
            assert source.response.status_code == 200
            for event in source.iter_sse():
                events.append(event.data)
                if on_event:
                    on_event(event)
    return events


def content_of(events):
    return "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                   for e in events if e != "[DONE]" and "choices" in e)


def chat_streams(server):
    return httpx.get(server.url + "/healthz").json()["chat_streams"]


def test_openai_client_streams_through_the_proxy(proxy, upstream):
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="not-the-real-key", max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ok"}]
    stream = client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "".join(TOKENS)
    headers, body = upstream.requests[-1]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert body == {"model": "fake-model", "messages": messages, "stream": True}


def test_proxy_forwards_each_chunk_as_it_arrives(proxy, upstream):
    received = []

    def on_event(event):
        received.append(time.monotonic())
        upstream.go.put("next")  # only now does the upstream send the next chunk

    upstream.sent.clear()
    events = chat_events(proxy, "lockstep", on_event)
    assert content_of(events) == "".join(TOKENS)
    assert events[-1] == "[DONE]"
    # received[0] is the role chunk; token k left the upstream at sent[k].
    for sent, got in zip(upstream.sent, received[1:len(TOKENS) + 1], strict=True):
        assert got - sent < 0.5, "a chunk was held back"
    while not upstream.go.empty():
        upstream.go.get()


def test_upstream_refusal_becomes_an_error_event_without_the_key(proxy):
    [event] = chat_events(proxy, "refuse")
    message = json.loads(event)["error"]["message"]
    assert message.startswith("the upstream model answered 401: Incorrect API key provided")
    assert KEY not in message and "sk-abc" not in message
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "refuse"}], stream=True)
    with pytest.raises(openai.APIError, match="answered 401"):
        list(stream)
    assert KEY not in proxy.output_hint()  # nor in gunicorn's logs


@pytest.mark.parametrize(
    ("scenario", "stream", "shown"),
    [
        ("leak-chunk", True, ['"content": "Your key is ***."', '"content": " Again: ***."',
                              '"content": " Another: sk-***."']),
        ("leak-error", True, ['"message": "quota exceeded for ***, or sk-***"']),
        ("refuse", True, ["answered 401: Incorrect API key provided: ***, or sk-***"]),
        ("leak-whole", False, ['"content": "Your key is ***."', '"system_fingerprint": "***"']),
        ("refuse", False, ["answered 401: Incorrect API key provided: ***, or sk-***"]),
    ],
)
def test_the_key_reaches_neither_the_client_nor_the_log(proxy, upstream, scenario, stream, shown):
    body = {"messages": [{"role": "user", "content": scenario}], "stream": stream}
    response = httpx.post(proxy.url + URL, json=body, timeout=10)
    if scenario == "leak-error":  # first, so a failure below leaves no report for other tests
        gone_scenario, _ = upstream.gone.get(timeout=5)
        assert gone_scenario == scenario
    assert response.status_code == (502 if scenario == "refuse" and not stream else 200)
    raw = response.text
    datas = ([line.removeprefix("data: ") for line in raw.split("\n") if line.startswith("data: ")]
             if stream else [raw])
    # Parsed, a JSON escape such as \u0073 is the letter it stands for: check that text too.
    texts = [json.dumps(json.loads(data), ensure_ascii=False) for data in datas if data != "[DONE]"]
    for text in [raw, *texts]:
        assert KEY not in text and "sk-abc" not in text and "Other_key" not in text
    for piece in shown:  # the leak was there, and the client got it scrubbed, in valid JSON
        assert any(piece in text for text in texts), piece
    if scenario == "leak-chunk":
        assert datas[-1] == "[DONE]"
    assert KEY not in proxy.output_hint()


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("bad-json", "the upstream model sent an event that is not a JSON object"),
        ("error-event", "overloaded"),
        ("reset", "the connection to the upstream model failed: ReadError"),
        ("silent", f"the upstream model sent nothing for {UPSTREAM_TIMEOUT} s"),
    ],
)
def test_upstream_failure_mid_stream_ends_with_an_error_event(proxy, upstream, scenario, message):
    started = time.monotonic()
    events = chat_events(proxy, scenario)
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(events[-1])["error"]["message"] == message
    assert "[DONE]" not in events
    if scenario == "silent":
        assert time.monotonic() - started >= UPSTREAM_TIMEOUT
    if scenario != "reset":  # the app hangs up on an upstream that is still connected
        gone_scenario, _ = upstream.gone.get(timeout=5)
        assert gone_scenario == scenario
    wait_until(lambda: chat_streams(proxy) == 0, timeout=5, what="the chat stream to end")


@pytest.mark.parametrize("scenario", ["drip", "silent"])
def test_an_answer_nobody_reads_goes_on_until_the_abandon_time_then_the_upstream_closes(
        proxy, upstream, scenario):
    body = {"messages": [{"role": "user", "content": scenario}], "stream": True}
    with httpx.stream("POST", proxy.url + URL, json=body, timeout=10) as response:
        lines = response.iter_lines()  # kept: a dropped iterator would close the connection
        assert next(line for line in lines if line.startswith("data: "))
        assert chat_streams(proxy) == 1
    left = time.monotonic()
    gone_scenario, _ = upstream.gone.get(timeout=ABANDON + 5)
    took = time.monotonic() - left
    assert gone_scenario == scenario
    # Not at once: the answer waits for a re-attach. Then it is cancelled, well before
    # the upstream timeout (2 s) would end it. 0.1 s below: the clocks of two processes.
    assert ABANDON - 0.1 < took < UPSTREAM_TIMEOUT, f"the upstream closed after {took:.2f} s"
    wait_until(lambda: chat_streams(proxy) == 0, timeout=5, what="the chat stream to end")


def test_cancel_closes_the_upstream_at_once_and_every_reader_gets_the_end(proxy, upstream):
    body = {"messages": [{"role": "user", "content": "drip"}], "stream": True}
    with httpx.Client(timeout=10) as client:
        with connect_sse(client, "POST", proxy.url + URL, json=body) as source:
            events = source.iter_sse()
            first = next(events)
            id = json.loads(first.data)["id"]
            with connect_sse(client, "GET", f"{proxy.url}{URL}/{id}/stream") as second:
                second_events = second.iter_sse()
                next(second_events)  # a second reader, attached from the first chunk
                cancelled = client.post(f"{proxy.url}{URL}/{id}/cancel")
                asked = time.monotonic()
                rest = [e.data for e in events]
                other = [e.data for e in second_events]
    assert cancelled.status_code == 200
    assert cancelled.json() == {"id": id, "object": "chat.completion", "status": "cancelled"}
    gone_scenario, _ = upstream.gone.get(timeout=5)
    assert gone_scenario == "drip"
    assert time.monotonic() - asked < 1, "the upstream stayed connected after the cancel"
    for stream in (rest, other):  # both end with the same last chunk, then [DONE]
        assert stream[-1] == "[DONE]"
        assert json.loads(stream[-2])["choices"][0]["finish_reason"] == "cancelled"
    again = httpx.post(f"{proxy.url}{URL}/{id}/cancel")
    assert again.json()["status"] == "completed"  # nothing left to cancel


def test_the_openai_client_reads_through_a_model_that_thinks_in_silence(proxy, upstream):
    # Chunks carry ids, and the app sends heartbeats while the model is silent: a
    # heartbeat with a blank line after it would make this client fail on an empty event.
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "think"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "".join(TOKENS)


def test_whole_answer_through_the_proxy(proxy):
    response = httpx.post(proxy.url + URL, json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert response.json()["model"] == "fake-model"
    assert response.json()["choices"][0]["message"]["content"] == "hi"


@pytest.mark.parametrize("stream", [False, True])
def test_a_number_json_cannot_carry_gets_400_through_the_proxy_and_is_never_sent(
        proxy, upstream, stream):
    asked = len(upstream.requests)
    raw = json.dumps({"messages": [{"role": "user", "content": "ok", "x": float("nan")}],
                      "stream": stream})  # Python writes NaN, as a careless client would
    response = httpx.post(proxy.url + URL, content=raw,
                          headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "the request body is not standard JSON: NaN is not a number JSON can carry")
    assert len(upstream.requests) == asked  # the upstream was never asked
