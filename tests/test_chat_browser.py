"""The chat panel in Debian's chromium: a conversation, answers that survive a drop, Stop, errors.

Each answer is checked against what ``POST /v1/chat/completions`` (stream
false) says for the same history: the offline model is deterministic, so
"every token once" is an exact string comparison.
"""

import json
import os
import signal

import httpx
import pytest
from fake_upstream import FakeUpstream
from playwright.sync_api import expect
from servers import wait_until

pytestmark = pytest.mark.browser

URL = "/v1/chat/completions"
SLOW = 0.05  # seconds per token: an answer of ~80 tokens takes ~4 s, time to press Stop or reload
KEY = "sk-test-browser-0123456789SECRET"
WAIT = 20_000  # ms: the bound on every wait for an answer to end


@pytest.fixture
def page_errors(page):
    """Uncaught exceptions and unhandled rejections on the page: a test ends with none."""
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    yield errors
    assert errors == []


@pytest.fixture
def sent(page):
    """The ``messages`` of every chat POST the page sends, in order."""
    bodies = []
    page.on("request", lambda request: bodies.append(json.loads(request.post_data)["messages"])
            if request.method == "POST" and request.url.endswith(URL) else None)
    return bodies


def health(server):
    return httpx.get(server.url + "/healthz").json()


def whole_answer(server, messages):
    response = httpx.post(server.url + URL, json={"messages": messages}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def last_answer(page):
    return page.locator("#conversation li.turn[data-role=assistant]").last


def answer_text(page):
    return last_answer(page).locator(".text")


def answer_longer_than(page, length):
    page.wait_for_function(
        """n => {
          const answers = document.querySelectorAll('#conversation li[data-role=assistant] .text');
          return answers.length > 0 && answers[answers.length - 1].textContent.length > n;
        }""", arg=length, timeout=WAIT)


def ask(page, prompt):
    page.fill("#prompt", prompt)
    page.click("#send")


def test_a_three_turn_conversation_sends_the_history_and_shows_every_answer_in_order(
        gunicorn, page, page_errors, sent):
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": "0.005"})
    page.goto(server.url)
    prompts = ["What is a heartbeat?", "Why use a <b>proxy</b> & nginx?", "How do I reconnect?"]
    history = []
    for n, prompt in enumerate(prompts, start=1):
        ask(page, prompt)
        history.append({"role": "user", "content": prompt})
        expect(page.locator("#conversation li.turn")).to_have_count(2 * n)
        expect(last_answer(page)).to_have_attribute("data-state", "done", timeout=WAIT)
        answer = whole_answer(server, history)
        assert answer_text(page).text_content() == answer
        assert sent[-1] == history  # the whole conversation, exactly as shown
        history.append({"role": "assistant", "content": answer})
    assert len(sent) == 3
    assert "“What is a heartbeat?”" in history[3]["content"]  # the model saw the earlier turns
    assert "question 3" in history[5]["content"]
    turns = page.locator("#conversation li.turn")
    assert [turns.nth(i).get_attribute("data-role") for i in range(6)] == [
        "user", "assistant"] * 3
    assert [turns.nth(i).locator(".text").text_content() for i in range(6)] == [
        turn["content"] for turn in history]
    assert page.locator("#conversation b").count() == 0  # the prompt's markup shown as text
    expect(page.locator("#prompt")).to_have_value("")
    expect(page.locator("#chat-state")).to_have_text("done")
    expect(page.locator("#chat-error")).to_be_hidden()
    assert health(server)["chat_streams"] == 0


def test_a_deploy_mid_answer_behind_nginx_costs_a_re_attach_and_not_a_token(
        gunicorn, nginx, redis_server, page, page_errors):
    upstream = gunicorn(env={"REDIS_URL": redis_server.url, "WEB_CONCURRENCY": "2",
                             "SSE_CHAT_TOKEN_DELAY": str(SLOW)})
    proxy = nginx(upstream)
    page.goto(proxy.url)
    prompt = "Does a deploy lose my answer?"
    ask(page, prompt)
    answer_longer_than(page, 40)
    assert last_answer(page).get_attribute("data-state") == "streaming"  # the deploy is mid-answer
    os.kill(upstream.pid, signal.SIGHUP)  # gunicorn replaces every worker, as a deploy does
    expect(last_answer(page)).to_have_attribute("data-state", "done", timeout=WAIT)
    assert int(last_answer(page).get_attribute("data-reconnects")) >= 1
    assert answer_text(page).text_content() == whole_answer(
        proxy, [{"role": "user", "content": prompt}])  # every token, once
    assert len(answers_in(redis_server)) == 1  # generated once, however many re-attaches
    expect(page.locator("#chat-error")).to_be_hidden()


def answers_in(redis_server):
    """The ids of the answers kept in Redis (answers.py: one stream key per answer)."""
    import redis

    keys = redis.Redis.from_url(redis_server.url).scan_iter("sse:chat:*")
    ids = {key.decode().removeprefix("sse:chat:") for key in keys}
    return {id for id in ids if ":" not in id}  # not the :alive, :attached or :cancel keys


def test_a_reload_mid_answer_shows_the_conversation_and_re_attaches_to_the_answer(
        gunicorn, page, page_errors):
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": str(SLOW)})
    page.goto(server.url)
    prompt = "What happens if I reload?"
    ask(page, prompt)
    answer_longer_than(page, 40)
    page.reload()
    expect(page.locator("#conversation li.turn[data-role=user] .text")).to_have_text(prompt)
    expect(last_answer(page)).to_have_attribute("data-state", "done", timeout=WAIT)
    assert last_answer(page).get_attribute("data-reconnects") == "1"
    assert answer_text(page).text_content() == whole_answer(
        server, [{"role": "user", "content": prompt}])
    assert health(server)["chat_answers"] == 1  # the reload started no second generation
    page.reload()  # a finished conversation is kept too, and not asked again
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    assert health(server)["chat_answers"] == 1


def test_stop_cancels_the_answer_and_the_conversation_goes_on(gunicorn, page, page_errors, sent):
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": str(SLOW)})
    page.goto(server.url)
    prompt = "Show me SSE at work"
    ask(page, prompt)
    answer_longer_than(page, 10)
    seen = len(answer_text(page).text_content())
    answer_longer_than(page, seen)  # it grows while we watch
    assert health(server)["chat_streams"] == 1

    with page.expect_request(lambda request: request.url.endswith("/cancel"),
                             timeout=5000) as cancel:
        page.click("#stop")
    expect(last_answer(page)).to_have_attribute("data-state", "stopped")
    assert cancel.value.response().json()["status"] == "cancelled"
    wait_until(lambda: health(server)["chat_streams"] == 0, timeout=5,
               what="the server's chat stream to end")
    stopped = answer_text(page).text_content()
    full = whole_answer(server, [{"role": "user", "content": prompt}])
    assert full.startswith(stopped) and len(stopped) < len(full)
    # The server really stopped generating: what it kept ends with a cancelled chunk.
    id = last_answer(page).get_attribute("data-id")
    kept = httpx.get(f"{server.url}{URL}/{id}/stream", timeout=5).text
    assert '"finish_reason":"cancelled"' in kept and kept.endswith("data: [DONE]\n\n")
    # Ten more token periods: had the page kept reading, ten tokens would have come.
    page.wait_for_timeout(10 * SLOW * 1000)
    assert answer_text(page).text_content() == stopped
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#chat-error")).to_be_hidden()

    ask(page, "And now?")  # the stopped answer is part of the conversation, as shown
    expect(last_answer(page)).to_have_attribute("data-state", "done", timeout=WAIT)
    history = [{"role": "user", "content": prompt}, {"role": "assistant", "content": stopped},
               {"role": "user", "content": "And now?"}]
    assert sent[-1] == history
    assert answer_text(page).text_content() == whole_answer(server, history)


def test_new_chat_clears_the_history(gunicorn, page, page_errors, sent):
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": "0.005"})
    page.goto(server.url)
    ask(page, "What is a heartbeat?")
    expect(last_answer(page)).to_have_attribute("data-state", "done", timeout=WAIT)
    page.click("#new-chat")
    expect(page.locator("#conversation li")).to_have_count(0)
    expect(page.locator("#conversation")).to_have_attribute("data-state", "idle")
    ask(page, "And Nginx?")
    expect(last_answer(page)).to_have_attribute("data-state", "done", timeout=WAIT)
    assert sent[-1] == [{"role": "user", "content": "And Nginx?"}]
    answer = answer_text(page).text_content()
    assert answer == whole_answer(server, sent[-1])
    assert "Before that you asked" not in answer  # the model saw no earlier question
    page.reload()  # the cleared conversation stays cleared
    expect(page.locator("#conversation li.turn")).to_have_count(2)


def test_new_chat_mid_answer_cancels_it(gunicorn, page, page_errors):
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": str(SLOW)})
    page.goto(server.url)
    ask(page, "Show me SSE at work")
    answer_longer_than(page, 10)
    with page.expect_request(lambda request: request.url.endswith("/cancel"), timeout=5000):
        page.click("#new-chat")
    expect(page.locator("#conversation li")).to_have_count(0)
    wait_until(lambda: health(server)["chat_streams"] == 0, timeout=5,
               what="the server's chat stream to end")
    expect(page.locator("#send")).to_be_enabled()


def test_refused_request_shows_the_error_and_keeps_the_question_out_of_the_history(
        gunicorn, page, page_errors):
    server = gunicorn(env={"SSE_CHAT_MAX_BODY": "200"})
    page.goto(server.url)
    ask(page, "x" * 300)
    expect(page.locator("#conversation")).to_have_attribute("data-state", "error")
    expect(page.locator("#chat-error")).to_have_text(
        "the request body must be at most 200 bytes")
    expect(page.locator("#conversation li")).to_have_count(0)
    expect(page.locator("#prompt")).to_have_value("x" * 300)  # to shorten and send again
    ask(page, "short")
    expect(last_answer(page)).to_have_attribute("data-state", "done", timeout=WAIT)
    expect(page.locator("#chat-error")).to_be_hidden()


def test_an_answer_lost_to_a_restart_without_redis_says_so_and_keeps_its_text(
        gunicorn, page, page_errors):
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": str(SLOW)})
    port = int(server.url.rsplit(":", 1)[1])
    page.goto(server.url)
    ask(page, "Will this survive?")
    answer_longer_than(page, 40)
    server.stop()  # the answer lived in that process only
    expect(last_answer(page)).to_have_attribute("data-state", "reconnecting")
    shown = answer_text(page).text_content()  # the body has ended: nothing more can arrive
    gunicorn(env={"SSE_CHAT_TOKEN_DELAY": str(SLOW)}, port=port)
    expect(last_answer(page)).to_have_attribute("data-state", "error", timeout=WAIT)
    expect(page.locator("#chat-error")).to_have_text(
        "the answer was lost (a restart without Redis?)")
    assert answer_text(page).text_content() == shown


def test_upstream_error_event_shows_the_error_and_never_the_key(gunicorn, page, page_errors):
    upstream = FakeUpstream()
    try:
        server = gunicorn(env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.url})
        page.goto(server.url)
        ask(page, "refuse")
        expect(last_answer(page)).to_have_attribute("data-state", "error")
        expect(page.locator("#chat-error")).to_contain_text("the upstream model answered 401")
        assert KEY not in page.content()
    finally:
        upstream.close()
