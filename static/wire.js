/**
 * The Wire panel: the raw text of /stream, line by line, as it arrives.
 *
 * EventSource never shows the text it parses, so this panel opens a second
 * connection to the same URL, reads it with fetch and a stream reader, and
 * shows every line with its field. The blank line is the one to watch: it is
 * what makes the browser dispatch the event built from the lines above it.
 *
 * It starts only when asked. Each tab reading it holds one more connection,
 * and over HTTP/1.1 a browser allows six per host for all its tabs together:
 * two tabs of this page, each with its two EventSources and this fetch, would
 * leave none for a POST, and the broadcast panel's Send would hang.
 *
 * fetch does not reconnect by itself, unlike EventSource: when the response
 * ends or the connection drops, the panel says so and waits for Resume.
 * Server text is shown with textContent only, so markup stays text.
 */
import { url } from "./stream.js";
import { fieldOf, splitLines } from "./wire-lines.js";

// Enough to scroll back through a few seconds of a fast stream; older lines
// are dropped, so a page left open all day does not grow without end.
const MAX_LINES = 300;

const panel = document.getElementById("wire");
const list = document.getElementById("wire-lines");
const pauseButton = document.getElementById("wire-pause");
const resumeButton = document.getElementById("wire-resume");
const lineCount = document.getElementById("wire-count");

let controller = null; // aborts the fetch now reading
let lastId = ""; // the last id line seen, so Resume carries on after it
let hasData = false; // a data line since the last blank line: the blank line dispatches an event

async function read() {
  controller = new AbortController();
  const { signal } = controller;
  const requestUrl = new URL(url);
  if (lastId) requestUrl.searchParams.set("lastEventId", lastId);
  hasData = false;
  setState("reading");
  append([meta(`→ GET ${requestUrl.pathname}${requestUrl.search} (fetch)`)]);
  try {
    const response = await fetch(requestUrl, {
      headers: { Accept: "text/event-stream" }, cache: "no-store", signal,
    });
    const type = response.headers.get("Content-Type") ?? "";
    append([meta(`← ${response.status}, Content-Type: ${type}`)]);
    if (!response.ok || !type.startsWith("text/event-stream")) {
      await response.body?.cancel();
      return stop("not an event stream: EventSource gives up on such an answer. Resume asks again");
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder(); // UTF-8; a character cut between chunks waits for its rest
    let state = {};
    for (;;) {
      const { value, done } = await reader.read();
      if (signal.aborted) return;
      state = splitLines(done ? decoder.decode() : decoder.decode(value, { stream: true }), state);
      append(state.lines.map(line));
      if (done) break;
    }
    if (state.rest) append([meta(`unfinished line, ignored: ${state.rest}`)]);
    stop("the server ended the response; fetch does not reconnect: press Resume");
  } catch (error) {
    if (signal.aborted) return; // Pause: already said so
    stop(`the connection dropped (${error.message}); fetch does not reconnect: press Resume`);
  }
}

/** One line from the server, as an element classed by its field. */
function line(text) {
  const field = fieldOf(text);
  const item = document.createElement("li");
  item.className = field;
  if (field === "blank") {
    item.textContent = hasData ? "⏎ (blank line: dispatch)" : "⏎ (blank line: no data, no event)";
    hasData = false;
    return item;
  }
  const colon = text.indexOf(":");
  if (field === "comment" || field === "unknown" || colon === -1) {
    item.textContent = text;
  } else {
    const name = document.createElement("span");
    name.className = "field";
    name.textContent = text.slice(0, colon + 1);
    item.append(name, text.slice(colon + 1)); // a string argument becomes a text node
  }
  const value = colon === -1 ? "" : text.slice(colon + 1).replace(/^ /, "");
  if (field === "data") hasData = true;
  if (field === "id" && !value.includes("\0")) lastId = value;
  return item;
}

/** A line the page adds, about the connection: not part of the stream. */
function meta(text) {
  const item = document.createElement("li");
  item.className = "meta";
  item.textContent = text;
  return item;
}

function append(items) {
  if (!items.length) return;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(...items);
  while (list.childElementCount > MAX_LINES) list.firstElementChild.remove();
  lineCount.textContent = list.childElementCount;
  if (atBottom) list.scrollTop = list.scrollHeight; // follow the stream, unless scrolled back
}

function stop(why) {
  append([meta(`— ${why} —`)]);
  setState("ended");
}

function setState(state) {
  panel.dataset.state = state;
  document.getElementById("wire-state").textContent = state;
  pauseButton.disabled = state !== "reading";
  resumeButton.disabled = state === "reading";
  if (state !== "idle") resumeButton.textContent = "Resume";
}

pauseButton.addEventListener("click", () => {
  controller.abort();
  append([meta("— paused: this fetch is aborted, and the server sees its client leave —")]);
  setState("paused");
});
resumeButton.addEventListener("click", read);
document.getElementById("wire-clear").addEventListener("click", () => {
  list.replaceChildren();
  lineCount.textContent = 0;
});

setState("idle");
