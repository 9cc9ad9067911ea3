"""The page's scripts, read as text: properties a refactor could lose without a test failing."""

from servers import ROOT

STATIC = ROOT / "static"


def test_stream_js_shows_the_eventsource_api_itself():
    # The lesson is the browser API, in plain sight, not a wrapper that hides it.
    source = (STATIC / "stream.js").read_text()
    for call in ["new EventSource(", ".onmessage =", 'addEventListener("random"',
                 'addEventListener("ping"', 'addEventListener("end"', ".close()",
                 "EventSource.CLOSED", "lastEventId"]:
        assert call in source, call


def test_no_script_parses_server_text_as_html():
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"]:
            assert sink not in text, f"{script.name} uses {sink}"
