// The chat panel, as ChatGPT does it: each question is a POST carrying the
// whole conversation in `messages`, and the answer is read from the response
// body with fetch as it streams. Not EventSource: it can only GET, with no
// body and no headers of our own.
//
// The server generates the answer whatever happens to the connection, and
// numbers its chunks with SSE ids. When the body ends before [DONE] (a
// dropped network, a deploy, a reload) the page re-attaches with
// GET .../<id>/stream and Last-Event-ID, and gets exactly the chunks after
// the last one it showed. Stop asks the server to cancel the answer.
import {
  applyEvent, askAgainAfter, clear, history, inFlight, load, LOST, newAnswer, reattachDelay,
  reattachVerdict, save,
} from "./conversation.js";
import { SSEParser } from "./sse-parser.js";

const $ = (selector) => document.querySelector(selector);
const form = $("#chat-form");
const promptBox = $("#prompt");
const list = $("#conversation");
const url = form.dataset.url; // POST here; an answer's own URLs are below it, by its id

let turns = load(sessionStorage);
let reading = null; // the AbortController of the answer being read: its fetch, or its wait

form.addEventListener("submit", (event) => {
  event.preventDefault();
  ask(promptBox.value);
});
promptBox.addEventListener("keydown", (event) => {
  // Enter sends, as in ChatGPT; Shift+Enter starts a new line.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});
$("#stop").addEventListener("click", stop);
$("#new-chat").addEventListener("click", () => {
  stop();
  turns = [];
  clear(sessionStorage);
  draw("idle");
  promptBox.focus();
});

draw(turns.findLast((turn) => turn.role === "assistant")?.state ?? "idle");
if (inFlight(turns.at(-1))) follow(turns.at(-1), begin()); // a reload mid-answer: re-attach

async function ask(content) {
  if (!content.trim() || reading) return;
  const messages = [...history(turns), { role: "user", content }];
  const answer = newAnswer();
  turns.push({ role: "user", content }, answer);
  const controller = begin();
  draw("streaming");
  let response;
  try {
    for (let attempt = 0; ; attempt++) {
      response = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ messages, stream: true }),
        signal: controller.signal,
      });
      const wait = askAgainAfter(response.status, response.headers.get("Retry-After"), attempt);
      if (wait === null) break;
      await sleep(wait, controller.signal); // a worker restarting: the next one will answer
    }
  } catch {
    if (controller.signal.aborted) return finish(answer, controller, { state: "stopped" });
    return refused(answer, controller, "the server could not be reached");
  }
  if (!response.ok) return refused(answer, controller, await errorMessage(response));
  promptBox.value = "";
  await follow(answer, controller, response);
}

// Read the answer until [DONE], an error or Stop; re-attach each time the body ends before that.
async function follow(answer, controller, response = null) {
  const { signal } = controller;
  let failures = 0; // attempts in a row that brought no chunk: how long to wait
  for (;;) {
    let end = null;
    try {
      if (!response) {
        answer.reconnects += 1;
        show(answer, "reconnecting");
        response = await fetch(`${url}/${encodeURIComponent(answer.id)}/stream`, {
          headers: { Accept: "text/event-stream", "Last-Event-ID": String(answer.last) },
          signal,
        });
      }
      const verdict = reattachVerdict(response.status);
      if (verdict === "read") {
        const before = answer.last;
        show(answer, "streaming");
        end = await read(response.body, answer);
        if (answer.last > before) failures = 0;
      } else if (verdict === "lost") {
        end = { state: "error", message: LOST };
      } else if (verdict === "error") {
        end = { state: "error", message: await errorMessage(response) };
      }
    } catch {
      if (signal.aborted) return finish(answer, controller, { state: "stopped" });
      // Otherwise the network failed (the connection dropped, or never opened): try again.
    }
    if (end) return finish(answer, controller, end);
    if (!answer.id) { // no chunk came, so there is no id to re-attach with
      return finish(answer, controller, { state: "error", message: "the connection closed " +
        "before the answer began" });
    }
    response = null;
    show(answer, "reconnecting");
    try {
      await sleep(reattachDelay(failures++), signal);
    } catch {
      return finish(answer, controller, { state: "stopped" });
    }
  }
}

// Parse the body and apply each event; the end, or null if the body stops first.
async function read(body, answer) {
  const reader = body.getReader();
  let end = null;
  const parser = new SSEParser((event) => {
    if (!end) end = applyEvent(answer, event);
  });
  while (!end) {
    const { value, done } = await reader.read();
    if (done) break;
    parser.feed(value);
    save(sessionStorage, turns); // the text with its last id: a reload goes on from exactly here
    show(answer, answer.state);
  }
  return end;
}

// Stop: the server stops generating (and every reader gets its end), and this
// page stops reading at once, keeping what arrived.
function stop() {
  const answer = turns.at(-1);
  // Before the first chunk there is no id to cancel: the server then drops the
  // answer once nobody has read it for SSE_CHAT_ABANDON_SECONDS. A cancel that
  // fails is left to that, too.
  if (reading && inFlight(answer) && answer.id) {
    fetch(`${url}/${encodeURIComponent(answer.id)}/cancel`, { method: "POST" }).catch(() => {});
  }
  reading?.abort();
  reading = null;
}

function begin() {
  reading = new AbortController();
  return reading;
}

function finish(answer, controller, { state, message = null }) {
  release(controller);
  if (!turns.includes(answer)) return; // New chat was pressed meanwhile
  answer.state = state;
  answer.error = message;
  save(sessionStorage, turns);
  draw(state);
}

// Nothing was generated: the question leaves the conversation and stays in the box.
function refused(answer, controller, message) {
  release(controller);
  turns.splice(turns.indexOf(answer) - 1, 2);
  save(sessionStorage, turns);
  draw("error", message);
}

function release(controller) {
  controller.abort(); // a no-op after a clean end; otherwise it closes a body we stopped reading
  if (reading === controller) reading = null;
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// --- Drawing: every text goes in with textContent, so markup in it is shown, never parsed ---

function draw(state, message = turns.at(-1)?.error) {
  list.replaceChildren(...turns.map(turnItem));
  const busy = inFlight(turns.at(-1));
  list.dataset.state = state;
  list.setAttribute("aria-busy", String(busy));
  $("#chat-state").textContent = state;
  $("#send").disabled = busy;
  $("#stop").disabled = !busy;
  const errorBox = $("#chat-error");
  errorBox.textContent = message ?? "";
  errorBox.hidden = !message;
}

function turnItem(turn) {
  const item = document.createElement("li");
  item.className = "turn";
  item.dataset.role = turn.role;
  const who = document.createElement("p");
  who.className = "who";
  const text = document.createElement("div");
  text.className = "text";
  item.append(who, text);
  fill(item, turn);
  return item;
}

// Show a new state (and the text so far) of the answer, the last turn.
function show(answer, state) {
  if (turns.at(-1) !== answer) return; // New chat was pressed meanwhile
  answer.state = state;
  fill(list.lastElementChild, answer);
  list.dataset.state = state;
  $("#chat-state").textContent = state;
}

function fill(item, turn) {
  item.querySelector(".text").textContent = turn.content;
  if (turn.role === "user") {
    item.querySelector(".who").textContent = "You";
    return;
  }
  item.dataset.state = turn.state;
  item.dataset.reconnects = turn.reconnects;
  item.dataset.id = turn.id ?? "";
  const state = turn.state === "done" ? "" : ` · ${turn.state}`;
  const reconnects = turn.reconnects ? ` · re-attached ${turn.reconnects}×` : "";
  item.querySelector(".who").textContent = `Assistant${state}${reconnects}`;
}
