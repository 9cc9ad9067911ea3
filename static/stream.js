/**
 * The counter, random-number, ping and connection panels, fed by one EventSource on /stream.
 *
 * Read connect() top to bottom: it is the whole browser API. EventSource
 * reconnects by itself after a dropped connection; the few lines in onerror
 * cover the one case it does not (see there).
 *
 * Server text reaches the page only through textContent, so markup in an
 * event is shown as text, never parsed. Every event is parsed and checked
 * before use: a bad one becomes an error line, the page keeps going.
 */
import { backoff } from "./backoff.js";
import { drawChart } from "./chart.js";

const CHART_POINTS = 60;
const MAX_PINGS = 8;

const $ = (selector) => document.querySelector(selector);
const connection = $("#connection");
// static/wire.js opens its own connection to the same URL.
export const url = streamUrl();
const randomValues = [];

let current = null; // the newest EventSource, for the Close button
let retryTimer = null;
let lastEventId = ""; // the last id seen, on this EventSource or an earlier one
let hasOpened = false;
let reconnects = 0; // times the stream opened again after its first open
let failures = 0; // give-ups in a row: sets the next backoff

function connect() {
  close();
  // The browser's own retries send the last id in a Last-Event-ID header. A
  // new EventSource cannot set headers, so it carries the id in the URL, and
  // the server resumes after it instead of starting again at 1.
  const resumeUrl = new URL(url);
  if (lastEventId) resumeUrl.searchParams.set("lastEventId", lastEventId);
  const source = new EventSource(resumeUrl);
  current = source;
  showState("connecting", "EventSource is connecting");

  source.onopen = () => {
    if (hasOpened) reconnects += 1;
    hasOpened = true;
    failures = 0;
    showState("open");
  };

  // Events without an "event:" line. Only these carry an id (the counter).
  source.onmessage = (event) => {
    rememberId(event);
    const data = parse(event, (d) => Number.isSafeInteger(d.count));
    if (data) $("#count").textContent = data.count;
  };

  source.addEventListener("random", (event) => {
    const data = parse(event, (d) => Number.isFinite(d.value) && d.value >= 0 && d.value < 100);
    if (!data) return;
    randomValues.push(data.value);
    if (randomValues.length > CHART_POINTS) randomValues.shift();
    drawChart($("#chart"), randomValues, { capacity: CHART_POINTS });
    $("#random-value").textContent = data.value;
  });

  source.addEventListener("ping", (event) => {
    const data = parse(event, (d) => typeof d.time === "string");
    if (!data) return;
    const item = document.createElement("li");
    item.textContent = data.time;
    $("#pings").prepend(item);
    while ($("#pings").children.length > MAX_PINGS) $("#pings").lastElementChild.remove();
  });

  // A finite stream (?limit=) says it is done. Without close() here, EventSource
  // would treat the server hanging up as a drop, reconnect, and run it again.
  source.addEventListener("end", () => {
    source.close();
    showState("closed", "the stream ended (event: end)");
  });

  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // The answer was not a 200 text/event-stream (a 502 from a proxy
      // mid-deploy, a 503 from a full worker) and the browser gave up for
      // good. Only a new EventSource asks again.
      const delay = backoff(failures);
      failures += 1;
      retryTimer = setTimeout(connect, delay);
      showState("closed", `the browser gave up; next try in ${(delay / 1000).toFixed(1)} s`);
    } else {
      // CONNECTING: the connection dropped. The browser asks again by itself
      // after the server's retry: delay, sending Last-Event-ID.
      showState("connecting", "the connection dropped; EventSource retries by itself");
    }
  };
}

/** Close the EventSource and cancel a pending retry: nothing reconnects until connect(). */
function close() {
  clearTimeout(retryTimer);
  current?.close();
}

// event.lastEventId is the stream's last id so far, even on an event that
// carries none; a fresh EventSource has none until its first id arrives.
function rememberId(event) {
  if (event.lastEventId) lastEventId = event.lastEventId;
  $("#last-id").textContent = lastEventId || "–";
}

$("#close").addEventListener("click", () => {
  close();
  showState("closed", "closed by you: press Reconnect");
});
$("#reconnect").addEventListener("click", connect);

function showState(state, note = "") {
  $("#state").textContent = state;
  connection.dataset.state = state;
  $("#state-note").textContent = note;
  $("#reconnects").textContent = reconnects;
}

/** JSON.parse the event's data and check its shape; show an error line if either fails. */
function parse(event, isValid) {
  try {
    const data = JSON.parse(event.data);
    if (data !== null && typeof data === "object" && isValid(data)) return data;
  } catch {
    // shown below, like a well-formed event of the wrong shape
  }
  showError(`ignored a bad "${event.type}" event: ${event.data.slice(0, 200)}`);
  return null;
}

function showError(message) {
  $("#stream-error").textContent = message;
  $("#stream-error").hidden = false;
}

/**
 * The /stream URL, with ?interval=, ?limit= and ?ping= passed on from this
 * page's own URL (e.g. /?interval=0.1). Only obvious typos are caught here;
 * the server checks the ranges and answers 400 for the rest.
 */
function streamUrl() {
  const result = new URL(connection.dataset.streamUrl, location.href);
  const params = new URLSearchParams(location.search);
  for (const name of ["interval", "limit", "ping"]) {
    const value = params.get(name);
    if (value === null) continue;
    if (value.trim() !== "" && Number(value) >= 0) result.searchParams.set(name, value);
    else showError(`ignored ?${name}=${value.slice(0, 40)}: not a number`);
  }
  return result;
}

connect();
