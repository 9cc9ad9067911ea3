"""Chat answers that survive a dropped connection: numbered chunks, re-attach, cancel, expiry.

The first tests use Flask's test client (the answer is generated in a thread);
the last ones real gunicorn, with Redis and Nginx where the answer must
outlive its worker. Streams on real servers are read by httpx-sse.
"""

import json
import os
import signal
import threading
import time

import httpx
import pytest
import redis
from conftest import FAST
from httpx_sse import connect_sse
from servers import wait_until
from wire import blocks, events

from answers import MemoryAnswers
from app import create_app

URL = "/v1/chat/completions"
QUESTION = {"role": "user", "content": "How does a dropped stream resume?"}


def chat_app(**config):
    return create_app({"TESTING": True, **FAST, "CHAT_TOKEN_DELAY": 0.005, **config})


def post(client, messages=(QUESTION,)):
    response = client.post(URL, json={"messages": list(messages), "stream": True})
    assert response.status_code == 200, response.text
    return response


def read_chunks(response, count):
    """The first ``count`` chunk events of a streaming test-client response, as (id, JSON)."""
    got = []
    for block in blocks(response):
        if block.startswith(":"):
            continue
        [(id, data)] = events(block + "\n\n")
        got.append((int(id), json.loads(data)))
        if len(got) == count:
            return got
    raise AssertionError(f"the stream ended after {len(got)} chunks")


def content(chunks):
    return "".join(c["choices"][0]["delta"].get("content", "") for _, c in chunks)


def the_rest(text):
    """(chunks as (id, JSON), ended with [DONE]) of a complete stream."""
    found = events(text)
    done = bool(found) and found[-1] == (None, "[DONE]")
    return [(int(id), json.loads(data)) for id, data in found[:len(found) - done]], done


def whole_answer(client, messages=(QUESTION,)):
    response = client.post(URL, json={"messages": list(messages)})
    return response.json["choices"][0]["message"]["content"]


@pytest.mark.parametrize("how", ["header", "query"])
def test_a_dropped_answer_goes_on_from_the_last_event_id_with_no_gap_and_no_repeat(how):
    client = chat_app().test_client()
    first = post(client)
    before = read_chunks(first, 5)
    first.close()  # the connection drops after chunk 5
    id = before[0][1]["id"]
    assert [n for n, _ in before] == [1, 2, 3, 4, 5]
    if how == "header":
        again = client.get(f"{URL}/{id}/stream", headers={"Last-Event-ID": "5"})
    else:  # what a client that cannot set headers sends
        again = client.get(f"{URL}/{id}/stream?lastEventId=5")
    assert again.status_code == 200
    after, done = the_rest(again.get_data(as_text=True))
    assert done
    assert [n for n, _ in after] == list(range(6, 6 + len(after)))
    assert {c["id"] for _, c in before + after} == {id}  # the completion id, on every chunk
    assert content(before + after) == whole_answer(client)
    assert after[-1][1]["choices"][0]["finish_reason"] == "stop"


def test_re_attaching_without_an_id_reads_from_the_first_chunk_and_two_readers_agree():
    client = chat_app().test_client()
    first = post(client)
    [(_, role)] = read_chunks(first, 1)
    readers = [client.get(f"{URL}/{role['id']}/stream") for _ in range(2)]
    texts = [reader.get_data(as_text=True) for reader in readers]
    rest = first.get_data(as_text=True)
    assert texts[0] == texts[1]  # the same chunks, the same ids, for any number of readers
    chunks, done = the_rest(texts[0])
    assert done and chunks[0] == (1, role)
    assert the_rest(rest)[0] == chunks[1:]  # the POST itself read on from chunk 1


def test_cancelling_an_expired_answer_is_404_like_reading_it():
    client = chat_app(CHAT_KEEP_SECONDS=0.2).test_client()
    response = post(client)
    id = read_chunks(response, 1)[0][1]["id"]
    assert the_rest(response.get_data(as_text=True))[1]
    assert client.post(f"{URL}/{id}/cancel").json["status"] == "completed"
    wait_until(lambda: client.post(f"{URL}/{id}/cancel").status_code == 404, timeout=5,
               what="the kept answer to expire")


def test_an_unknown_or_expired_answer_is_404_in_json():
    client = chat_app(CHAT_KEEP_SECONDS=0.3).test_client()
    missing = client.get(f"{URL}/chatcmpl-nope/stream")
    assert missing.status_code == 404
    assert missing.json["error"]["message"] == (
        "no chat completion 'chatcmpl-nope' here: it is unknown, or expired")
    assert client.post(f"{URL}/chatcmpl-nope/cancel").status_code == 404
    response = post(client)
    id = read_chunks(response, 1)[0][1]["id"]
    assert the_rest(response.get_data(as_text=True))[1]  # finished
    response.close()
    assert client.get(f"{URL}/{id}/stream").status_code == 200  # kept a while
    wait_until(lambda: client.get(f"{URL}/{id}/stream").status_code == 404, timeout=5,
               what="the answer to expire")


def test_cancel_ends_the_answer_for_every_reader_with_a_last_chunk_and_done():
    client = chat_app(CHAT_TOKEN_DELAY=0.05).test_client()  # slow enough to cancel mid-answer
    response = post(client)
    id = read_chunks(response, 2)[0][1]["id"]
    cancelled = client.post(f"{URL}/{id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json == {"id": id, "object": "chat.completion", "status": "cancelled"}
    rest, done = the_rest(response.get_data(as_text=True))
    assert done and rest[-1][1]["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "cancelled"}
    assert len(content(rest)) < len(whole_answer(client))  # it did stop early
    assert client.post(f"{URL}/{id}/cancel").json["status"] == "completed"


def test_an_answer_nobody_reads_is_cancelled_after_the_abandon_time():
    app = chat_app(CHAT_TOKEN_DELAY=0.05, CHAT_ABANDON_SECONDS=0.2)
    client = app.test_client()
    response = post(client)
    id = read_chunks(response, 1)[0][1]["id"]
    response.close()
    answer = app.extensions["answers"].get(id)
    wait_until(lambda: answer.end is not None, timeout=10, what="the abandoned answer to end")
    chunks, done = the_rest(client.get(f"{URL}/{id}/stream").get_data(as_text=True))
    assert done and chunks[-1][1]["choices"][0]["finish_reason"] == "cancelled"
    assert len(content(chunks)) < len(whole_answer(client))  # long before its natural end


def test_answers_past_the_workers_cap_get_503():
    client = chat_app(CHAT_TOKEN_DELAY=0.05, CHAT_MAX_ANSWERS=1).test_client()
    kept = post(client)
    read_chunks(kept, 1)
    refused = client.post(URL, json={"messages": [QUESTION], "stream": True})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert "as many chat answers" in refused.json["error"]["message"]
    kept.close()


def test_finished_answers_nobody_reads_make_room_for_another_clients_question():
    # One client asks CHAT_MAX_ANSWERS questions and reads none. Their answers finish and
    # are kept for a re-attach (SSE_CHAT_KEEP_SECONDS: 300 s); another client's question
    # must not wait for them to expire: the one finished longest ago nobody reads makes room.
    app = chat_app(CHAT_MAX_ANSWERS=3)
    client = app.test_client()
    ids = []
    for _ in range(3):
        response = post(client)
        ids.append(read_chunks(response, 1)[0][1]["id"])
        response.close()
    answers = app.extensions["answers"]
    wait_until(lambda: all(answers.get(id).end for id in ids), what="the answers to finish")
    finished = {id: answers.get(id).finished_at for id in ids}
    reading = client.get(f"{URL}/{ids[0]}/stream")  # the oldest, but someone reads it
    assert reading.status_code == 200
    text = post(client).get_data(as_text=True)
    assert text.endswith("data: [DONE]\n\n")
    reading.close()
    assert client.get(f"{URL}/{ids[0]}/stream").status_code == 200
    # Of the two unread, the one that finished first made room (they run in parallel).
    first, last = sorted(ids[1:], key=lambda id: finished[id])
    assert client.get(f"{URL}/{first}/stream").status_code == 404
    assert client.get(f"{URL}/{last}/stream").status_code == 200


def test_a_cancel_after_the_models_last_chunk_adds_no_second_last_chunk():
    # A real model sends its finish_reason chunk, then [DONE] a moment later. A Stop in
    # between finds the answer complete: it closes the model, and appends nothing.
    answers = MemoryAnswers()
    closed = threading.Event()

    def model():
        try:
            yield {"object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
            yield {"object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            while True:  # the upstream has not sent [DONE] yet
                time.sleep(0.01)
                yield None
        finally:
            closed.set()

    answer = answers.start(model(), "chatcmpl-" + "0" * 32, "offline")
    wait_until(lambda: len(answer.chunks) == 2, what="the model's last chunk")
    assert answers.cancel(answer.id) == "completed"
    assert closed.wait(5), "the model was not closed"
    wait_until(lambda: answer.end is not None, what="the answer to end")
    assert answer.end == "done"
    reasons = [json.loads(c)["choices"][0]["finish_reason"] for c in answer.chunks]
    assert reasons == [None, "stop"]


def chunk(content=None, finish_reason=None):
    delta = {} if content is None else {"content": content}
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def model_until(event, *then):
    """A model that says "Hi", waits for ``event``, then says ``then`` and stops."""
    yield chunk("Hi")
    while not event.wait(0.01):
        yield None
    yield from then
    yield chunk(finish_reason="stop")


def test_the_answer_that_makes_room_is_the_one_finished_longest_ago():
    # A long answer whose page dropped mid-answer is old by its start, but has only just
    # finished: its page is about to re-attach. The one finished longest ago goes first.
    answers = MemoryAnswers(max_answers=2)
    long_one, short_one = threading.Event(), threading.Event()
    first = answers.start(model_until(long_one), "chatcmpl-" + "1" * 32, "offline")
    second = answers.start(model_until(short_one), "chatcmpl-" + "2" * 32, "offline")
    short_one.set()
    wait_until(lambda: second.end is not None, what="the second answer to finish")
    long_one.set()
    wait_until(lambda: first.end is not None, what="the first answer to finish")
    answers.start(model_until(threading.Event()), "chatcmpl-" + "3" * 32, "offline")
    assert answers.get(first.id) is first
    assert answers.get(second.id) is None


def test_nothing_comes_after_the_models_last_chunk_not_even_a_length_cut():
    answers = MemoryAnswers(max_bytes=600)

    def after_the_end():
        yield chunk("Hi")
        yield chunk(finish_reason="stop")
        yield chunk("x" * 400)  # what an upstream may send after: it does not fit

    answer = answers.start(after_the_end(), "chatcmpl-" + "5" * 32, "offline")
    wait_until(lambda: answer.end is not None, what="the answer to end")
    assert answer.end == "done"
    assert [json.loads(c)["choices"][0]["finish_reason"] for c in answer.chunks] == [None, "stop"]


def test_a_stop_sent_the_moment_a_reader_sees_the_last_chunk_says_completed():
    # The reader is woken as the last chunk is appended, and may cancel at once (with
    # Redis the append also waits on Redis, so other greenlets run in between).
    answers = MemoryAnswers()
    said = []
    release = threading.Event()
    answer = answers.start(model_until(release), "chatcmpl-" + "6" * 32, "offline")

    def wake():
        if len(answer.chunks) == 2 and not said:
            said.append(answers.cancel(answer.id))

    with answers.attach(answer.id, wake):
        release.set()
        wait_until(lambda: answer.end is not None, what="the answer to end")
    assert said == ["completed"]
    assert [json.loads(c)["choices"][0]["finish_reason"] for c in answer.chunks] == [None, "stop"]


def test_an_answer_past_its_size_bound_ends_with_finish_reason_length():
    client = chat_app(CHAT_MAX_ANSWER_BYTES=2000).test_client()
    # Quoted back in every answer: three bytes a character in UTF-8, one in len().
    question = {"role": "user", "content": "“é” ✓ " * 3}
    chunks, done = the_rest(post(client, [question]).get_data(as_text=True))
    assert done and chunks[-1][1]["choices"][0]["finish_reason"] == "length"
    sent = sum(len(json.dumps(c, ensure_ascii=False, separators=(",", ":")).encode())
               for _, c in chunks[:-1])
    assert 1500 < sent <= 2000  # bytes, as on the wire


def test_the_offline_model_answers_in_the_context_of_the_conversation():
    client = chat_app().test_client()
    first = {"role": "user", "content": "What is a heartbeat?"}
    answer = whole_answer(client, [first])
    turns = [first, {"role": "assistant", "content": answer},
             {"role": "user", "content": "And Nginx?"}]
    second = whole_answer(client, turns)
    assert second == whole_answer(client, turns)  # the same conversation, the same answer
    assert "“What is a heartbeat?”" in second and "question 2" in second
    assert "Nginx" in second and second != answer


# --- Real gunicorn ---------------------------------------------------------------------------

def chat_post(client, url, messages=(QUESTION,)):
    return connect_sse(client, "POST", url + URL, json={"messages": list(messages),
                                                        "stream": True})


def collect(events, into, stop_after=None):
    """Read chunk events into ``into`` as (id, JSON); stop after ``stop_after`` of them.

    True when the answer ended with [DONE]. ``events`` is an ``iter_sse()`` iterator.
    """
    for event in events:
        if event.data == "[DONE]":
            return True
        if event.data:
            into.append((int(event.id), json.loads(event.data)))
            if stop_after is not None and len(into) >= stop_after:
                return False
    return False


def test_a_re_attach_mid_answer_on_gunicorn_gets_exactly_the_rest(gunicorn):
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": "0.02"})
    chunks = []
    with httpx.Client(timeout=10) as client:
        with chat_post(client, server.url) as source:
            events = source.iter_sse()
            assert not collect(events, chunks, stop_after=7)  # then the connection drops
        id = chunks[0][1]["id"]
        headers = {"Last-Event-ID": str(chunks[-1][0])}
        with connect_sse(client, "GET", f"{server.url}{URL}/{id}/stream",
                         headers=headers) as source:
            assert collect(source.iter_sse(), chunks)
        whole = client.post(server.url + URL, json={"messages": [QUESTION]}).json()
    assert [n for n, _ in chunks] == list(range(1, len(chunks) + 1))
    assert content(chunks) == whole["choices"][0]["message"]["content"]


def test_with_redis_another_instance_serves_the_re_attach_and_the_cancel(gunicorn, redis_server):
    env = {"REDIS_URL": redis_server.url, "SSE_CHAT_TOKEN_DELAY": "0.05"}
    first, second = gunicorn(env=env), gunicorn(env=env)
    chunks = []
    with httpx.Client(timeout=10) as client:
        with chat_post(client, first.url) as source:
            collect(source.iter_sse(), chunks, stop_after=3)
        id = chunks[0][1]["id"]
        with connect_sse(client, "GET", f"{second.url}{URL}/{id}/stream",
                         headers={"Last-Event-ID": "3"}) as source:
            events = source.iter_sse()
            collect(events, chunks, stop_after=6)
            cancelled = client.post(f"{second.url}{URL}/{id}/cancel")  # not where it runs
            assert collect(events, chunks)
    assert cancelled.json()["status"] == "cancelled"
    assert [n for n, _ in chunks] == list(range(1, len(chunks) + 1))
    assert chunks[-1][1]["choices"][0]["finish_reason"] == "cancelled"
    assert httpx.get(first.url + "/healthz").json()["chat_answers"] == 1  # generated once, there
    assert httpx.get(second.url + "/healthz").json()["chat_answers"] == 0


def test_a_reload_mid_answer_behind_nginx_loses_no_chunk(gunicorn, nginx, redis_server):
    upstream = gunicorn(env={"REDIS_URL": redis_server.url, "WEB_CONCURRENCY": "2",
                             "SSE_CHAT_TOKEN_DELAY": "0.03"})
    proxy = nginx(upstream)
    chunks, reloaded_at = [], None
    with httpx.Client(timeout=10) as client:
        with chat_post(client, proxy.url) as source:
            events = source.iter_sse()
            assert not collect(events, chunks, stop_after=5)
            os.kill(upstream.pid, signal.SIGHUP)  # every worker is replaced
            reloaded_at = time.monotonic()
            # The stream ends at once (without [DONE]): the client comes back elsewhere.
            assert not collect(events, chunks)
        assert time.monotonic() - reloaded_at < 2, "the stream was held, not ended"
        id = chunks[0][1]["id"]

        def re_attach():  # as the page does: a 503 from a stopping worker means try again
            headers = {"Last-Event-ID": str(chunks[-1][0])}
            with connect_sse(client, "GET", f"{proxy.url}{URL}/{id}/stream",
                             headers=headers) as source:
                if source.response.status_code == 503:
                    return False
                assert source.response.status_code == 200
                return collect(source.iter_sse(), chunks)

        wait_until(re_attach, timeout=15, interval=0.1, what="the answer to complete")
        whole = client.post(proxy.url + URL, json={"messages": [QUESTION]}).json()
    assert [n for n, _ in chunks] == list(range(1, len(chunks) + 1))  # no gap, no repeat
    assert content(chunks) == whole["choices"][0]["message"]["content"]


def test_without_redis_a_reload_mid_answer_lets_the_old_worker_finish_it(gunicorn):
    # docs/chat.md: without Redis "the reader keeps the worker up to gunicorn's graceful_timeout
    # (5 s), and an answer that ends by then arrives whole". This one needs about 2 s.
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": "0.02"})
    ids, data, reloaded_at = [], [], None
    body = {"messages": [QUESTION], "stream": True}
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", server.url + URL, json=body) as response:
            for line in response.iter_lines():  # heartbeat lines come even when chunks do not
                if reloaded_at is not None:
                    assert time.monotonic() - reloaded_at < 5, (
                        f"no [DONE] 5 s after the reload; the chunks stopped at {ids[-1]}")
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                elif line.startswith("data: "):
                    data.append(line[6:])
                if len(ids) == 5 and reloaded_at is None:
                    os.kill(server.pid, signal.SIGHUP)  # every worker is replaced
                    reloaded_at = time.monotonic()
        whole = client.post(server.url + URL, json={"messages": [QUESTION]}).json()
    assert data[-1] == "[DONE]"
    assert ids == list(range(1, len(ids) + 1))
    chunks = [(n, json.loads(text)) for n, text in zip(ids, data, strict=False)]
    assert content(chunks) == whole["choices"][0]["message"]["content"]


def test_a_reader_elsewhere_never_gets_one_chunk_under_another_chunks_id(redis_server):
    # Redis restarted empty mid-answer (no persistence): the chunks written before are gone,
    # the generating worker writes on from chunk n. A reader elsewhere must not be handed chunk
    # n as the chunk after its Last-Event-ID: that skips text without a word, and every id it
    # keeps after that is wrong, so its next re-attach repeats text.
    here = chat_app(REDIS_URL=redis_server.url, CHAT_TOKEN_DELAY=0.02)
    elsewhere = chat_app(REDIS_URL=redis_server.url)
    response = post(here.test_client())
    id = read_chunks(response, 3)[0][1]["id"]
    answer = here.extensions["answers"].get(id)
    wait_until(lambda: len(answer.chunks) >= 10, what="ten chunks")
    redis_server.stop()
    redis_server.start()
    restarted_at = len(answer.chunks)
    wait_until(lambda: answer.end is not None, timeout=20, what="the answer to end")
    response.close()
    text = elsewhere.test_client().get(f"{URL}/{id}/stream", headers={"Last-Event-ID": "3"})
    assert text.status_code == 200
    wire = events(text.get_data(as_text=True))
    got = [(int(n), chunk) for n, chunk in wire if n]
    assert restarted_at > 4, "the test needs chunks lost between 3 and the restart"
    for n, chunk in got:
        assert chunk == answer.chunks[n - 1], f"chunk {n} is another chunk's text"
    # Chunk 4 is gone: the reader is told the answer was lost, and nothing after the gap.
    assert got == []
    assert json.loads(wire[-1][1])["error"]["message"].startswith("the answer was lost")


def test_with_redis_a_keep_time_in_fractions_of_a_second_still_expires_the_answer(redis_server):
    # SSE_CHAT_KEEP_SECONDS is "seconds, >= 0" (docs/configuration.md); 1.5 is a valid value.
    app = chat_app(REDIS_URL=redis_server.url, CHAT_KEEP_SECONDS=1.5)
    text = post(app.test_client()).get_data(as_text=True)
    assert text.endswith("data: [DONE]\n\n")
    store = redis.Redis.from_url(redis_server.url)
    [key] = [k for k in store.scan_iter("sse:chat:*") if not k.endswith((b":alive", b":attached"))]
    assert 0 < store.pttl(key) <= 1500, "the answer's Redis stream never expires"


@pytest.mark.parametrize("suffix", [":alive", ":attached"])
def test_with_redis_an_id_naming_another_key_of_an_answer_is_404(redis_server, suffix):
    # The id comes from the URL: "<id>:alive" is no answer, though its Redis key exists.
    app = chat_app(REDIS_URL=redis_server.url, CHAT_TOKEN_DELAY=0.05)
    response = post(app.test_client())
    id = read_chunks(response, 1)[0][1]["id"]
    elsewhere = chat_app(REDIS_URL=redis_server.url).test_client()
    elsewhere.get(f"{URL}/{id}/stream").close()  # a reader elsewhere marks it attached
    assert elsewhere.post(f"{URL}/{id}{suffix}/cancel").status_code == 404
    assert elsewhere.get(f"{URL}/{id}{suffix}/stream").status_code == 404
    response.close()


def test_with_redis_questions_refused_while_redis_was_down_hold_no_answer_slot(redis_server):
    app = chat_app(REDIS_URL=redis_server.url, CHAT_MAX_ANSWERS=2)
    client = app.test_client()
    redis_server.stop()
    for _ in range(3):
        refused = client.post(URL, json={"messages": [QUESTION], "stream": True})
        assert refused.status_code == 503
        assert "store of chat answers is unavailable" in refused.json["error"]["message"]
    redis_server.start()
    assert client.get("/healthz").json["chat_answers"] == 0
    text = post(client).get_data(as_text=True)  # Redis is back: so are chat answers
    assert text.endswith("data: [DONE]\n\n")


def test_a_reader_elsewhere_does_not_log_a_warning_per_poll_while_redis_is_down(
        redis_server, caplog):
    # Every reader elsewhere polls Redis 20 times a second: one warning per poll is 20 lines
    # a second per reader while Redis is down (a thousand readers: 20,000 lines a second).
    here = chat_app(REDIS_URL=redis_server.url, CHAT_TOKEN_DELAY=0.2)
    response = post(here.test_client())
    id = read_chunks(response, 1)[0][1]["id"]
    reader = chat_app(REDIS_URL=redis_server.url).test_client().get(f"{URL}/{id}/stream")
    chunks = reader.iter_encoded()
    next(chunks)
    redis_server.stop()
    caplog.clear()
    until = time.monotonic() + 2
    while time.monotonic() < until:  # heartbeats every 0.2 s keep the stream moving
        next(chunks)
    reader.close()
    response.close()
    polls = [r for r in caplog.records if "reading Redis failed" in r.getMessage()]
    assert len(polls) <= 5, f"{len(polls)} warnings in 2 s from one reader"


def test_the_worker_generating_an_answer_warns_once_while_redis_is_down_not_per_chunk(
        redis_server, caplog):
    # Each chunk is written to Redis, and the generator looks at Redis 5 times a second:
    # a line for each while Redis is down is thousands of lines a second with 100 answers.
    app = chat_app(REDIS_URL=redis_server.url, CHAT_TOKEN_DELAY=0.01)
    response = post(app.test_client())
    id = read_chunks(response, 1)[0][1]["id"]
    answer = app.extensions["answers"].get(id)
    redis_server.stop()
    caplog.clear()
    written = len(answer.chunks)
    wait_until(lambda: len(answer.chunks) >= written + 40 or answer.end, timeout=20,
               what="forty chunks while Redis is down")
    assert len(answer.chunks) >= written + 20, "the test needs chunks generated meanwhile"
    warnings = [r for r in caplog.records if r.name == "answers" and r.levelname == "WARNING"]
    assert len(warnings) <= 2, [r.getMessage() for r in warnings]
    response.close()
