// The chat's bookkeeping, with no page in it (node tests: tests/js/conversation.test.mjs).
//
// A conversation is a list of turns:
//   {role: "user", content}
//   {role: "assistant", content, state, id, last, finishReason, reconnects, error}
// where state is "streaming", "reconnecting", "done", "stopped" or "error";
// id is the completion's id (from its first chunk) and last the SSE id of the
// last chunk shown: what a re-attach sends as Last-Event-ID.
import { backoff } from "./backoff.js";
import { readChatEvent } from "./sse-parser.js";

const STORAGE_KEY = "sse-demo-chat";

export const LOST = "the answer was lost (a restart without Redis?)";

export function newAnswer() {
  return { role: "assistant", content: "", state: "streaming", id: null, last: 0,
    finishReason: null, reconnects: 0, error: null };
}

export function inFlight(turn) {
  return turn?.role === "assistant" && (turn.state === "streaming" || turn.state === "reconnecting");
}

// What is sent as `messages`: every question, and the answers that ended
// (with [DONE], or stopped with what had arrived). A failed or unfinished
// answer is not sent: the model would read a half sentence as its own words.
export function history(turns) {
  return turns
    .filter((turn) => turn.role === "user" || turn.state === "done" || turn.state === "stopped")
    .map(({ role, content }) => ({ role, content }));
}

// Apply one SSE event to the answer in flight. A chunk's text is appended and
// its id kept; the text and the id change together, so a re-attach after
// `last` continues exactly after the text shown: no token twice, none missing.
// Returns the end ({state, message?}) when the event is one, else null.
export function applyEvent(answer, event) {
  let said;
  try {
    said = readChatEvent(event.data);
  } catch {
    return { state: "error", message: "the server sent an event that is not JSON" };
  }
  if (said.done) return { state: answer.finishReason === "cancelled" ? "stopped" : "done" };
  if (said.error) return { state: "error", message: said.error };
  answer.id ??= said.id;
  answer.last = Number(event.lastEventId); // app.py numbers every chunk: 1, 2, 3 ...
  answer.content += said.content;
  answer.finishReason = said.finishReason ?? answer.finishReason; // "cancelled": stopped elsewhere
  return null;
}

// What to do with the answer to a re-attach (GET .../<id>/stream), by status.
export function reattachVerdict(status) {
  if (status === 200) return "read";
  if (status === 404) return "lost"; // expired, or kept by a process that has gone
  // A proxy with no server behind it (a restart), or a worker that is stopping.
  if (status === 502 || status === 503 || status === 504) return "retry";
  return "error";
}

// How long to wait before asking again when a question got `status` back, or
// null to give up. A 503 with a short Retry-After comes from a worker that is
// restarting: nothing was generated, so asking again is safe (a few times).
export function askAgainAfter(status, retryAfter, attempt) {
  if (status !== 503 || attempt >= 3 || !/^[0-9]+$/.test(retryAfter ?? "")) return null;
  const seconds = Number(retryAfter);
  return seconds <= 2 ? seconds * 1000 : null;
}

// The wait before re-attach number `failures + 1` in a row: 250–500 ms at
// first, doubling up to 2.5–5 s. The jitter spreads out the pages one deploy
// cut off at the same moment.
export function reattachDelay(failures, random = Math.random) {
  return backoff(failures, { min: 500, max: 5000, random });
}

// sessionStorage keeps a tab's conversation across a reload; the answer in
// flight is saved with its id and last chunk id, so the page re-attaches to it.
export function save(storage, turns) {
  try {
    storage.setItem(STORAGE_KEY, JSON.stringify(turns));
  } catch {
    // Storage full or turned off: the page still works, and a reload forgets.
  }
}

export function load(storage) {
  let turns;
  try {
    turns = JSON.parse(storage.getItem(STORAGE_KEY));
  } catch {
    return [];
  }
  if (!Array.isArray(turns) || !turns.every(isTurn)) return [];
  const last = turns.at(-1);
  if (inFlight(last) && !last.id) {
    // Reloaded before the first chunk: without its id the answer cannot be found.
    Object.assign(last, { state: "error", error: "the page was reloaded before the answer began" });
  }
  return turns;
}

export function clear(storage) {
  try {
    storage.removeItem(STORAGE_KEY);
  } catch {
    // As in save().
  }
}

function isTurn(turn) {
  if (typeof turn?.content !== "string") return false;
  if (turn.role === "user") return true;
  return turn.role === "assistant" && typeof turn.state === "string" &&
    Number.isSafeInteger(turn.last) && (turn.id === null || typeof turn.id === "string");
}
