"""The broadcast panel in Debian's chromium, against real gunicorn."""

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def open_panel(browser, url):
    """A page in its own browser context, its broadcast stream open, its problems kept."""
    page = browser.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: page.errors.append(m.text)
            if "Content Security Policy" in m.text else None)
    page.on("response", lambda r: page.errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    page.goto(url + "/")
    expect(page.locator("#broadcast")).to_have_attribute("data-state", "open")
    return page


def test_a_message_sent_from_one_page_appears_in_both(gunicorn, browser):
    server = gunicorn()
    sender, watcher = open_panel(browser, server.url), open_panel(browser, server.url)
    sender.fill("#broadcast-input", "hello <b>both</b>")
    sender.click("#broadcast-send")
    for page in (sender, watcher):
        expect(page.locator("#broadcast-log li.message")).to_have_text(["hello <b>both</b>"])
        assert page.locator("#broadcast-log b").count() == 0  # shown as text, never as markup
        assert page.errors == []  # no script error, nothing blocked by the CSP, no 404
    expect(sender.locator("#broadcast-input")).to_have_value("")


def test_a_refused_post_is_shown_to_the_sender(gunicorn, browser):
    server = gunicorn(env={"PUBLISH_TOKEN": "s3cret"})
    page = open_panel(browser, server.url)
    page.fill("#broadcast-input", "no token")
    page.click("#broadcast-send")
    expect(page.locator("#broadcast-log li.error")).to_have_text(
        ["publishing needs the header Authorization: Bearer <PUBLISH_TOKEN>"])
    expect(page.locator("#broadcast-input")).to_have_value("no token")


def test_pages_on_two_app_instances_see_each_others_messages_through_redis(
        gunicorn, redis_server, browser):
    env = {"REDIS_URL": redis_server.url}
    sender = open_panel(browser, gunicorn(env=env).url)
    watcher = open_panel(browser, gunicorn(env=env).url)
    sender.fill("#broadcast-input", "across hosts")
    sender.click("#broadcast-send")
    for page in (sender, watcher):
        expect(page.locator("#broadcast-log li.message")).to_have_text(["across hosts"])
