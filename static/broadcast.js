// The broadcast panel: one EventSource on /broadcast, and a form that POSTs to the same URL.
// Every message arrives through the stream, our own included, so every tab shows the same list.

const panel = document.getElementById("broadcast");
const url = panel.dataset.url;
const form = document.getElementById("broadcast-form");
const input = document.getElementById("broadcast-input");
const send = document.getElementById("broadcast-send");
const log = document.getElementById("broadcast-log");

// How long to wait before replacing an EventSource that gave up.
const RESTART_MS = 2000;

function show(text, kind) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text; // server text is never parsed as HTML
  log.append(item);
}

let lastId = "";

function connect() {
  // EventSource resends Last-Event-ID by itself when a stream drops. A new
  // EventSource cannot set headers, so it resumes through the query string.
  const source = new EventSource(lastId ? `${url}?lastEventId=${encodeURIComponent(lastId)}` : url);
  source.onopen = () => {
    panel.dataset.state = "open";
  };
  source.onmessage = (event) => {
    lastId = event.lastEventId;
    const data = JSON.parse(event.data);
    show(typeof data === "string" ? data : event.data, "message");
  };
  source.addEventListener("reset", () => {
    show("Some messages were missed and are no longer kept; here is what is.", "notice");
  });
  source.onerror = () => {
    panel.dataset.state = "connecting";
    // After an HTTP error (503: too many streams, broker down) EventSource
    // gives up for good; after a dropped stream it retries by itself.
    if (source.readyState === EventSource.CLOSED) {
      panel.dataset.state = "closed";
      setTimeout(connect, RESTART_MS);
    }
  };
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  send.disabled = true;
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ data: input.value }),
    });
    if (response.ok) {
      input.value = "";
    } else {
      const body = await response.json().catch(() => null);
      show(body?.error?.message ?? `HTTP ${response.status}`, "error");
    }
  } catch (error) {
    show(`Not sent: ${error.message}`, "error");
  } finally {
    send.disabled = false;
  }
});

connect();
