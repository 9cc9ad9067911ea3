"""The demo page in Debian's chromium against real gunicorn: live panels, Close and
Reconnect, recovery after a restart and after a 502, server text kept as text, the
Wire panel's raw lines, and the screenshot in docs/page.png.

The page's strict CSP forbids eval, so every page.wait_for_function and
page.evaluate below passes a function expression, never a bare expression.
"""

import os
import re
import sys
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect
from servers import ROOT, Server, wait_until

pytestmark = pytest.mark.browser

# Milliseconds. Generous for a shared 2-core machine; every wait ends as soon as it holds.
TIMEOUT = 10_000
# How long a change that must not come is given to show up. The stream sends an
# event every 0.05 s and the browser retries after 0.1 s (SSE_RETRY_MS), so a
# stream that was still alive would show itself well within this.
QUIET = 1_000

ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# Records every value #count shows, so a test can prove none was skipped or repeated.
RECORD_COUNTS = """
window.countsSeen = [];
new MutationObserver((records) => {
  for (const record of records) {
    if (record.target.id !== "count") continue;
    for (const node of record.addedNodes) window.countsSeen.push(node.textContent);
  }
}).observe(document, { childList: true, subtree: true });
"""

# Console errors a browser reports by itself while a server is away or answers 502.
NETWORK_NOISE = re.compile(r"^(Failed to load resource|EventSource's response has)")


@pytest.fixture
def counts(page):
    """Return a function giving every counter value the page has shown so far."""
    page.add_init_script(RECORD_COUNTS)
    return lambda: [int(v) for v in page.evaluate("() => window.countsSeen") if v.isdigit()]


@pytest.fixture(autouse=True)
def no_page_errors(page):
    """Fail a test whose page threw, or broke the CSP (both are console errors)."""
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and not NETWORK_NOISE.match(msg.text)
            and errors.append(msg.text))
    yield
    assert errors == []


@pytest.fixture
def standin(tmp_path):
    """Start tests/standin.py on a given port (see its docstring); stop it after the test."""
    started = []

    def start(port, mode):
        url = f"http://127.0.0.1:{port}"
        log = open(tmp_path / f"standin-{mode}-{port}.log", "w")
        server = Server([sys.executable, str(ROOT / "tests" / "standin.py"), str(port), mode],
                        url, url + "/ready", log=log)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def port_of(server):
    return int(server.url.rsplit(":", 1)[1])


def log_text(server):
    server.log.flush()
    return Path(server.log.name).read_text()


def stream_requests(server):
    """The /stream requests in a server's access log (logged when each one has ended)."""
    return re.findall(r'"GET (/stream[^ ]*) HTTP', log_text(server))


def open_streams(server):
    """Open /stream connections: the page's broadcast panel holds a stream of its own."""
    health = httpx.get(server.url + "/healthz", timeout=5).json()
    return health["open_streams"] - health["broadcast_subscribers"]


def wait_for_count(page, at_least):
    page.wait_for_function(
        "n => Number(document.querySelector('#count').textContent) >= n",
        arg=at_least, timeout=TIMEOUT)
    return int(page.text_content("#count"))


def assert_counted_without_gaps(values):
    assert values, "the counter never changed"
    assert values == list(range(1, len(values) + 1)), f"skipped or repeated: {values}"


def test_panels_show_counter_chart_pings_and_open_state(gunicorn, page, counts):
    server = gunicorn()
    page.goto(server.url + "/?interval=0.02")
    expect(page.locator("#state")).to_have_text("open")
    page.wait_for_function(
        "() => Number(document.querySelector('#chart').dataset.points) > 0", timeout=TIMEOUT)
    early_points = int(page.get_attribute("#chart", "data-points"))

    wait_for_count(page, 70)
    expect(page.locator("#chart")).to_have_attribute("data-points", "60")  # the last 60 only
    assert early_points < 60
    expect(page.locator("#random-value")).to_have_text(re.compile(r"^\d\d?$"))
    expect(page.locator("#pings li").first).to_have_text(ISO_TIME)
    expect(page.locator("#pings li")).to_have_count(8)  # one ping every 0.1 s, capped at 8
    expect(page.locator("#last-id")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#reconnects")).to_have_text("0")
    expect(page.locator("#stream-error")).to_be_hidden()
    assert_counted_without_gaps(counts())


def test_close_stops_the_stream_and_reconnect_resumes_after_the_last_id(gunicorn, page, counts):
    server = gunicorn()
    page.goto(server.url + "/?interval=0.05")
    wait_for_count(page, 3)

    page.click("#close")
    expect(page.locator("#state")).to_have_text("closed")
    wait_until(lambda: open_streams(server) == 0, timeout=5, what="the server to drop the stream")
    stopped_at = int(page.text_content("#count"))
    with pytest.raises(PlaywrightTimeoutError):
        page.wait_for_function(
            "n => document.querySelector('#count').textContent !== n", arg=str(stopped_at),
            timeout=QUIET)
    expect(page.locator("#state")).to_have_text("closed")
    assert open_streams(server) == 0

    page.click("#reconnect")
    expect(page.locator("#state")).to_have_text("open")
    wait_for_count(page, stopped_at + 3)
    expect(page.locator("#reconnects")).to_have_text("1")
    assert_counted_without_gaps(counts())  # a new EventSource, resumed by ?lastEventId=


def test_finite_stream_ends_and_the_page_does_not_run_it_again(gunicorn, page, counts):
    server = gunicorn()
    page.goto(server.url + "/?interval=0.02&limit=5")
    expect(page.locator("#count")).to_have_text("5")
    expect(page.locator("#state")).to_have_text("closed")
    expect(page.locator("#state-note")).to_contain_text("ended")
    with pytest.raises(PlaywrightTimeoutError):
        page.wait_for_function(
            "() => document.querySelector('#state').textContent !== 'closed'", timeout=QUIET)
    wait_until(lambda: stream_requests(server), timeout=5, what="the access log line")
    assert stream_requests(server) == ["/stream?interval=0.02&limit=5"]
    assert counts() == [1, 2, 3, 4, 5]


def test_page_resumes_by_itself_after_a_restart_on_the_same_port(gunicorn, page, counts):
    server = gunicorn()
    page.goto(server.url + "/?interval=0.05")
    wait_for_count(page, 3)

    server.stop()
    expect(page.locator("#state")).to_have_text("connecting")  # EventSource retries by itself
    stopped_at = int(page.text_content("#count"))
    gunicorn(port=port_of(server))

    expect(page.locator("#state")).to_have_text("open", timeout=TIMEOUT)
    wait_for_count(page, stopped_at + 3)
    expect(page.locator("#reconnects")).to_have_text("1")
    assert_counted_without_gaps(counts())


def test_page_recovers_after_a_502_made_eventsource_give_up(gunicorn, standin, page, counts):
    server = gunicorn()
    port = port_of(server)
    page.goto(server.url + "/?interval=0.05")
    wait_for_count(page, 3)

    server.stop()
    proxy = standin(port, "502")
    # A 502 makes EventSource give up for good (readyState CLOSED); only the
    # page's own recovery can ask again, so a second request proves it does.
    expect(page.locator("#state")).to_have_text("closed", timeout=TIMEOUT)
    expect(page.locator("#state-note")).to_contain_text("next try")
    wait_until(lambda: len(stream_requests(proxy)) >= 2, timeout=10,
               what="the page to try again after the 502")
    stopped_at = int(page.text_content("#count"))
    proxy.stop()
    gunicorn(port=port)

    # The backoff has grown to about 1-2 s by now; on a busy machine the
    # stand-in may have answered a few more tries, each doubling it (up to 30 s).
    # The page says how long it waits: allow that on top of the usual timeout.
    note = page.text_content("#state-note")
    announced = re.search(r"next try in ([0-9.]+) s", note)
    waiting_ms = float(announced[1]) * 1000 if announced else 0
    expect(page.locator("#state"), f"after {note!r}").to_have_text(
        "open", timeout=TIMEOUT + waiting_ms)
    wait_for_count(page, stopped_at + 3)
    # A new EventSource cannot send Last-Event-ID: no gap means ?lastEventId= worked.
    assert_counted_without_gaps(counts())


def test_server_text_is_shown_as_text_never_parsed_as_html(gunicorn, standin, page):
    # /stream only sends JSON the app builds from numbers and clock times, so no
    # hostile text can pass through it. A stand-in on the same port plays a
    # broken or compromised upstream: its events carry markup (tests/standin.py).
    server = gunicorn()
    page.goto(server.url + "/?interval=0.05")
    wait_for_count(page, 1)
    server.stop()
    standin(port_of(server), "hostile")

    expect(page.locator("#pings li").first).to_have_text("<img id=injected-ping src=x>",
                                                        timeout=TIMEOUT)
    expect(page.locator("#stream-error")).to_have_text(
        'ignored a bad "message" event: <img id=injected-data src=x>')
    expect(page.locator("#last-id")).to_have_text("<img id=injected-id src=x>")
    expect(page.locator("[id^=injected]")).to_have_count(0)


def test_page_parameters_pass_to_the_stream_and_a_typo_is_reported(gunicorn, page):
    server = gunicorn(env={"SSE_PING_INTERVAL": "3600"})
    page.goto(server.url + "/?interval=fast&ping=0.1")
    expect(page.locator("#stream-error")).to_have_text("ignored ?interval=fast: not a number")
    expect(page.locator("#state")).to_have_text("open")
    expect(page.locator("#pings li").first).to_have_text(ISO_TIME)  # only ?ping=0.1 sends one


# --- The Wire panel: its own fetch of /stream, one element per line -------------------------

WIRE_BOUND = 300  # MAX_LINES in static/wire.js


def wire_lines(page, field=None):
    return page.locator("#wire-lines li" + (f".{field}" if field else ""))


def start_wire(page):
    page.click("#wire-resume")
    expect(page.locator("#wire-state")).to_have_text("reading")


def wire_ids(page):
    return [int(text.removeprefix("id: ")) for text in wire_lines(page, "id").all_text_contents()]


def test_wire_panel_waits_for_start_so_a_tab_holds_one_stream_until_asked(gunicorn, page):
    # Over HTTP/1.1 a browser gives a host six connections for all its tabs; two
    # tabs each reading the wire as well would leave none for a POST.
    server = gunicorn()
    page.goto(server.url + "/?interval=0.05")
    wait_for_count(page, 3)
    expect(page.locator("#wire-state")).to_have_text("idle")
    expect(wire_lines(page)).to_have_count(0)
    assert open_streams(server) == 1

    start_wire(page)
    expect(page.locator("#wire-resume")).to_have_text("Resume")
    expect(wire_lines(page, "data")).not_to_have_count(0, timeout=TIMEOUT)
    assert open_streams(server) == 2


def test_wire_panel_shows_each_line_styled_by_its_field(gunicorn, page):
    server = gunicorn()
    # Ticks and pings further apart than the heartbeat (0.2 s), so comments show too.
    page.goto(server.url + "/?interval=0.3&ping=1")
    start_wire(page)
    # The page says what it fetched: the same URL as EventSource's.
    expect(wire_lines(page).first).to_have_text("→ GET /stream?interval=0.3&ping=1 (fetch)")
    expect(wire_lines(page, "retry").first).to_have_text("retry: 100", timeout=TIMEOUT)
    expect(wire_lines(page, "id").first).to_have_text("id: 1")
    expect(wire_lines(page, "data").first).to_have_text(re.compile(r'^data: \{"count": 1, '))
    expect(wire_lines(page, "event").filter(has_text="event: random").first).to_be_visible()
    expect(wire_lines(page, "event").filter(has_text="event: ping").first).to_be_visible()
    expect(wire_lines(page, "comment").first).to_have_text(": heartbeat", timeout=TIMEOUT)
    # Each field name is set apart from its value.
    expect(wire_lines(page, "id").first.locator(".field")).to_have_text("id:")
    # The blank line is shown, and says whether it dispatches an event.
    expect(wire_lines(page, "blank").first).to_have_text("⏎ (blank line: no data, no event)")
    expect(wire_lines(page, "blank").nth(1)).to_have_text("⏎ (blank line: dispatch)")
    count = wire_lines(page).count()
    assert count > 10
    assert int(page.text_content("#wire-count")) >= count


def test_wire_pause_stops_new_lines_and_resume_carries_on_after_the_last_id(gunicorn, page):
    server = gunicorn()
    page.goto(server.url + "/?interval=0.05")
    start_wire(page)
    expect(wire_lines(page, "id")).not_to_have_count(0, timeout=TIMEOUT)
    page.wait_for_function("() => document.querySelectorAll('#wire-lines li.id').length >= 5",
                           timeout=TIMEOUT)

    page.click("#wire-pause")
    expect(page.locator("#wire-state")).to_have_text("paused")
    expect(page.locator("#wire-resume")).to_be_enabled()
    last_id = wire_ids(page)[-1]
    paused_at = wire_lines(page).count()
    with pytest.raises(PlaywrightTimeoutError):
        page.wait_for_function(
            "n => document.querySelectorAll('#wire-lines li').length !== n", arg=paused_at,
            timeout=QUIET)
    # Pause aborted the fetch: the server's only /stream left is EventSource's.
    wait_until(lambda: open_streams(server) == 1, timeout=5, what="the server to drop the fetch")
    expect(page.locator("#count")).not_to_have_text(str(last_id))  # EventSource went on

    page.click("#wire-resume")
    expect(wire_lines(page, "meta").filter(has_text=f"lastEventId={last_id}")).to_have_count(1)
    expect(wire_lines(page, "id").filter(has_text=f"id: {last_id + 1}")).to_have_count(
        1, timeout=TIMEOUT)
    ids = wire_ids(page)
    assert ids == list(range(ids[0], ids[0] + len(ids))), f"skipped or repeated: {ids}"


def test_wire_clear_empties_the_panel_and_reading_goes_on(gunicorn, page):
    server = gunicorn()
    page.goto(server.url + "/?interval=0.05")
    start_wire(page)
    expect(wire_lines(page, "retry")).to_have_count(1, timeout=TIMEOUT)

    page.click("#wire-clear")
    # retry: and the request line came first, once: after Clear they are gone for good.
    expect(wire_lines(page, "retry")).to_have_count(0)
    expect(wire_lines(page, "meta")).to_have_count(0)
    cleared = page.evaluate("() => document.querySelectorAll('#wire-lines li').length")
    assert cleared < 20
    page.wait_for_function("() => document.querySelectorAll('#wire-lines li.data').length >= 5",
                           timeout=TIMEOUT)
    expect(page.locator("#wire-state")).to_have_text("reading")


# Records the most lines the Wire panel ever held once a batch was appended.
RECORD_MOST_LINES = """() => {
  const list = document.querySelector('#wire-lines');
  window.mostLines = list.childElementCount;
  new MutationObserver(() => {
    window.mostLines = Math.max(window.mostLines, list.childElementCount);
  }).observe(list, { childList: true });
}"""


def test_wire_keeps_only_the_last_lines(gunicorn, page):
    server = gunicorn()
    page.goto(server.url + "/?interval=0.02")
    start_wire(page)
    page.wait_for_function(
        "n => document.querySelectorAll('#wire-lines li').length === n", arg=WIRE_BOUND,
        timeout=TIMEOUT)
    page.evaluate(RECORD_MOST_LINES)
    newest = wire_ids(page)[-1]
    page.wait_for_timeout(QUIET)  # about 250 more lines arrive meanwhile

    assert page.evaluate("() => window.mostLines") == WIRE_BOUND
    expect(wire_lines(page)).to_have_count(WIRE_BOUND)
    expect(page.locator("#wire-count")).to_have_text(str(WIRE_BOUND))
    assert wire_ids(page)[-1] > newest  # still reading: the oldest lines went instead
    expect(wire_lines(page, "retry")).to_have_count(0)  # the first lines were dropped


def test_wire_shows_hostile_server_text_as_text(gunicorn, standin, page):
    # As in test_server_text_is_shown_as_text_never_parsed_as_html: a stand-in
    # on the app's port sends markup in an id and in data.
    server = gunicorn()
    page.goto(server.url + "/?interval=0.05")
    start_wire(page)
    expect(wire_lines(page, "id")).not_to_have_count(0, timeout=TIMEOUT)
    server.stop()
    expect(page.locator("#wire-state")).to_have_text("ended")  # fetch does not reconnect
    standin(port_of(server), "hostile")

    page.click("#wire-resume")
    expect(wire_lines(page, "id").last).to_have_text("id: <img id=injected-id src=x>",
                                                     timeout=TIMEOUT)
    expect(wire_lines(page, "data").filter(has_text="injected-data").last).to_have_text(
        "data: <img id=injected-data src=x>")
    expect(wire_lines(page, "data").last).to_have_text(
        'data: {"time": "<img id=injected-ping src=x>"}')
    expect(page.locator("[id^=injected]")).to_have_count(0)
    expect(page.locator("#wire-lines img")).to_have_count(0)


def test_screenshot_of_the_page_with_every_panel_live(gunicorn, page, tmp_path):
    """Every panel at work at once, 1280 px wide: the README's picture of the page.

    Saved as docs/page.png only with UPDATE_SCREENSHOT=1 (``make screenshot``),
    so an ordinary test run leaves the committed picture alone.
    """
    server = gunicorn(env={"SSE_PING_INTERVAL": "1",  # pings a second apart, like a real clock
                           "SSE_CHAT_TOKEN_DELAY": "0.005"})
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(server.url + "/?interval=0.25")  # slower than the 0.2 s heartbeat: one shows
    start_wire(page)
    response = httpx.post(server.url + "/broadcast", json={"data": "Hello from another tab!"},
                          timeout=5)
    assert response.status_code == 202
    expect(page.locator("#broadcast-log li")).to_have_text(["Hello from another tab!"])
    page.fill("#prompt", "How does a dropped answer resume?")
    page.click("#send")
    expect(page.locator("#conversation")).to_have_attribute("data-state", "done", timeout=TIMEOUT)
    wait_for_count(page, 16)
    page.wait_for_function(
        "() => Number(document.querySelector('#chart').dataset.points) >= 16", timeout=TIMEOUT)
    expect(page.locator("#pings li")).to_have_count(3, timeout=TIMEOUT)
    expect(wire_lines(page, "comment")).not_to_have_count(0)
    expect(page.locator("#state")).to_have_text("open")
    # The Wire panel from its first line, where retry: and the first event are.
    page.evaluate("() => { document.querySelector('#wire-lines').scrollTop = 0; }")

    update = os.environ.get("UPDATE_SCREENSHOT") == "1"
    path = ROOT / "docs" / "page.png" if update else tmp_path / "page.png"
    page.screenshot(path=path, full_page=True)
    assert path.stat().st_size < 400_000
