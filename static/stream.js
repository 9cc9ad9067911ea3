/**
 * The counter, random-number, ping and connection panels, fed by one /stream.
 *
 * Server text reaches the page only through textContent, so markup in an
 * event is shown as text, never parsed. Every event is parsed and checked
 * before use: a bad one becomes an error line, the page keeps going.
 */
import { drawChart } from "./chart.js";
import { ResilientEventSource } from "./resilient-source.js";

const CHART_POINTS = 60;
const MAX_PINGS = 8;

const $ = (selector) => document.querySelector(selector);
const connection = $("#connection");
const randomValues = [];

const stream = new ResilientEventSource(streamUrl(), {
  onmessage(event) {
    const data = parse(event, (d) => Number.isSafeInteger(d.count));
    if (data) $("#count").textContent = data.count;
    showConnection(stream);
  },
  events: {
    random(event) {
      const data = parse(event, (d) => Number.isFinite(d.value) && d.value >= 0 && d.value < 100);
      if (!data) return;
      randomValues.push(data.value);
      if (randomValues.length > CHART_POINTS) randomValues.shift();
      drawChart($("#chart"), randomValues, { capacity: CHART_POINTS });
      $("#random-value").textContent = data.value;
    },
    ping(event) {
      const data = parse(event, (d) => typeof d.time === "string");
      if (!data) return;
      const item = document.createElement("li");
      item.textContent = data.time;
      $("#pings").prepend(item);
      while ($("#pings").children.length > MAX_PINGS) $("#pings").lastElementChild.remove();
    },
    // A finite stream says it is done. Closing here stops EventSource from
    // reconnecting when the server hangs up, which would run the stream again.
    end() {
      stream.close();
      $("#state-note").textContent = "the stream ended (event: end)";
    },
  },
  onstatechange: showConnection,
});

$("#close").addEventListener("click", () => {
  stream.close();
  $("#state-note").textContent = "closed by you: press Reconnect";
});
$("#reconnect").addEventListener("click", () => stream.reconnect());

function showConnection({ state, retryInMs, lastEventId, reconnects }) {
  $("#state").textContent = state;
  connection.dataset.state = state;
  $("#state-note").textContent =
    retryInMs !== null ? `the browser gave up; next try in ${(retryInMs / 1000).toFixed(1)} s`
    : state === "connecting" ? "EventSource is connecting; it retries by itself" : "";
  $("#last-id").textContent = lastEventId || "–";
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
  const url = new URL(connection.dataset.streamUrl, location.href);
  const params = new URLSearchParams(location.search);
  for (const name of ["interval", "limit", "ping"]) {
    const value = params.get(name);
    if (value === null) continue;
    if (value.trim() !== "" && Number(value) >= 0) url.searchParams.set(name, value);
    else showError(`ignored ?${name}=${value.slice(0, 40)}: not a number`);
  }
  return url;
}
