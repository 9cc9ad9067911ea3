"""The chat panel in Debian's chromium: the answer streams in, Stop halts it, errors show."""

import httpx
import pytest
from fake_upstream import FakeUpstream
from playwright.sync_api import expect
from servers import wait_until

pytestmark = pytest.mark.browser

DELAY = 0.05  # seconds per token: an answer of ~80 tokens takes ~4 s, time enough to press Stop
KEY = "sk-test-browser-0123456789SECRET"


@pytest.fixture
def page_errors(page):
    """Uncaught exceptions and unhandled rejections on the page: a test ends with none."""
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    yield errors
    assert errors == []


def health(server):
    return httpx.get(server.url + "/healthz").json()


def whole_answer(server, prompt):
    body = {"messages": [{"role": "user", "content": prompt}]}
    response = httpx.post(server.url + "/v1/chat/completions", json=body)
    return response.json()["choices"][0]["message"]["content"]


def answer_longer_than(page, length):
    page.wait_for_function(
        "n => document.getElementById('answer').textContent.length > n", arg=length)


def test_answer_streams_in_and_stop_halts_it(gunicorn, page, page_errors):
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": str(DELAY)})
    page.goto(server.url)
    answer = page.locator("#answer")
    page.fill("#prompt", "Show me SSE at work")
    page.click("#send")
    expect(answer).to_have_attribute("data-state", "streaming")
    answer_longer_than(page, 10)
    seen = len(answer.text_content())
    answer_longer_than(page, seen)  # it grows while we watch
    assert health(server)["chat_streams"] == 1

    page.click("#stop")
    expect(answer).to_have_attribute("data-state", "stopped")
    wait_until(lambda: health(server)["chat_streams"] == 0, timeout=5,
               what="the server's chat generator to end")
    stopped = answer.text_content()
    full = whole_answer(server, "Show me SSE at work")
    assert full.startswith(stopped) and len(stopped) < len(full)
    page.wait_for_timeout(10 * DELAY * 1000)  # ten more token periods: nothing arrives
    assert answer.text_content() == stopped
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#chat-error")).to_be_hidden()


def test_whole_answer_arrives_and_ends_at_done(gunicorn, page, page_errors):
    server = gunicorn(env={"SSE_CHAT_TOKEN_DELAY": "0.005"})
    page.goto(server.url)
    page.fill("#prompt", "Why use a <b>heartbeat</b>?")
    page.click("#send")
    answer = page.locator("#answer")
    expect(answer).to_have_attribute("data-state", "done")
    assert answer.text_content() == whole_answer(server, "Why use a <b>heartbeat</b>?")
    assert answer.locator("b").count() == 0  # the prompt's markup came back as text
    assert health(server)["chat_streams"] == 0


def test_refused_request_shows_the_error(gunicorn, page, page_errors):
    server = gunicorn(env={"SSE_CHAT_MAX_BODY": "200"})
    page.goto(server.url)
    page.fill("#prompt", "x" * 300)
    page.click("#send")
    expect(page.locator("#answer")).to_have_attribute("data-state", "error")
    expect(page.locator("#chat-error")).to_have_text(
        "the request body must be at most 200 bytes")


def test_upstream_error_event_shows_the_error_and_never_the_key(gunicorn, page, page_errors):
    upstream = FakeUpstream()
    try:
        server = gunicorn(env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream.url})
        page.goto(server.url)
        page.fill("#prompt", "refuse")
        page.click("#send")
        expect(page.locator("#answer")).to_have_attribute("data-state", "error")
        expect(page.locator("#chat-error")).to_contain_text("the upstream model answered 401")
        assert KEY not in page.content()
    finally:
        upstream.close()
