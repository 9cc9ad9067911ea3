// The chat's bookkeeping (static/conversation.js), under Node's built-in test runner:
// node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  applyEvent, askAgainAfter, clear, history, inFlight, load, LOST, newAnswer, reattachDelay,
  reattachVerdict, save,
} from "../../static/conversation.js";

// A chunk event as SSEParser dispatches it: app.py numbers every chunk with its SSE id.
function chunk(n, content, finishReason = null, id = "chatcmpl-1") {
  const delta = content === null ? {} : { content };
  const data = JSON.stringify({ id, object: "chat.completion.chunk",
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }] });
  return { type: "message", data, lastEventId: String(n) };
}

const DONE = { type: "message", data: "[DONE]", lastEventId: "" };

function fakeStorage() {
  const items = new Map();
  return {
    getItem: (key) => (items.has(key) ? items.get(key) : null),
    setItem: (key, value) => items.set(key, String(value)),
    removeItem: (key) => items.delete(key),
    items,
  };
}

test("each chunk appends its text and keeps its id; the first one gives the completion id", () => {
  const answer = newAnswer();
  assert.equal(applyEvent(answer, chunk(1, "")), null);
  assert.equal(applyEvent(answer, chunk(2, "Hello")), null);
  assert.equal(applyEvent(answer, chunk(3, " world")), null);
  assert.equal(answer.id, "chatcmpl-1");
  assert.equal(answer.last, 3);
  assert.equal(answer.content, "Hello world");
});

test("a re-attach after the last id continues the text exactly: no token twice, none missing", () => {
  const tokens = ["", "One", " two", " three", " four", " five", null];
  const whole = newAnswer();
  tokens.forEach((token, i) => applyEvent(whole, chunk(i + 1, token, token === null ? "stop" : null)));
  for (let cut = 1; cut < tokens.length; cut++) {
    const answer = newAnswer();
    tokens.slice(0, cut).forEach((token, i) => applyEvent(answer, chunk(i + 1, token)));
    // The connection drops here; the server answers the re-attach with the chunks after `last`.
    const after = answer.last;
    tokens.slice(after).forEach((token, i) => applyEvent(answer, chunk(after + i + 1, token)));
    assert.equal(answer.content, whole.content, `cut after chunk ${cut}`);
    assert.equal(answer.last, tokens.length);
  }
});

test("[DONE] ends the answer as done; after a cancelled last chunk, as stopped", () => {
  const answer = newAnswer();
  applyEvent(answer, chunk(1, "Hi"));
  applyEvent(answer, chunk(2, null, "stop"));
  assert.deepEqual(applyEvent(answer, DONE), { state: "done" });

  const cancelled = newAnswer(); // by Stop in another tab, say
  applyEvent(cancelled, chunk(1, "Hi"));
  applyEvent(cancelled, chunk(2, null, "cancelled"));
  assert.deepEqual(applyEvent(cancelled, DONE), { state: "stopped" });
  assert.equal(cancelled.content, "Hi");
});

test("an error event ends the answer with its message and keeps the text so far", () => {
  const answer = newAnswer();
  applyEvent(answer, chunk(1, "Half an"));
  const lost = { type: "message", lastEventId: "1",
    data: '{"error":{"message":"the answer was lost: the worker generating it stopped"}}' };
  assert.deepEqual(applyEvent(answer, lost),
    { state: "error", message: "the answer was lost: the worker generating it stopped" });
  assert.equal(answer.content, "Half an");
  assert.equal(answer.last, 1);
});

test("an event that is not JSON ends the answer with an error instead of throwing", () => {
  const answer = newAnswer();
  assert.equal(applyEvent(answer, { type: "message", data: "{nope", lastEventId: "1" }).state,
    "error");
  assert.equal(answer.last, 0); // a re-attach would not skip it
});

test("the history holds the questions and the answers that ended, as {role, content}", () => {
  const turns = [
    { role: "user", content: "one" },
    { ...newAnswer(), content: "first", state: "done", id: "a", last: 9 },
    { role: "user", content: "two" },
    { ...newAnswer(), content: "half", state: "stopped", id: "b", last: 3 },
    { role: "user", content: "three" },
    { ...newAnswer(), content: "broken", state: "error", id: "c", last: 2 },
    { role: "user", content: "four" },
    { ...newAnswer(), content: "on its way", state: "streaming", id: "d", last: 4 },
  ];
  assert.deepEqual(history(turns), [
    { role: "user", content: "one" },
    { role: "assistant", content: "first" },
    { role: "user", content: "two" },
    { role: "assistant", content: "half" },
    { role: "user", content: "three" },
    { role: "user", content: "four" },
  ]);
  assert.deepEqual(history([]), []);
});

test("an answer is in flight while streaming or reconnecting", () => {
  for (const [state, expected] of [["streaming", true], ["reconnecting", true], ["done", false],
    ["stopped", false], ["error", false]]) {
    assert.equal(inFlight({ ...newAnswer(), state }), expected, state);
  }
  assert.equal(inFlight({ role: "user", content: "x" }), false);
  assert.equal(inFlight(undefined), false);
});

test("re-attach: read a 200, give up on 404, retry on 502, 503 and 504, else fail", () => {
  assert.equal(reattachVerdict(200), "read");
  assert.equal(reattachVerdict(404), "lost");
  for (const status of [502, 503, 504]) assert.equal(reattachVerdict(status), "retry");
  for (const status of [400, 401, 429, 500]) assert.equal(reattachVerdict(status), "error");
  assert.match(LOST, /lost/);
});

test("the wait before a re-attach: 250–500 ms, doubling up to 2.5–5 s", () => {
  assert.equal(reattachDelay(0, () => 0), 250);
  assert.equal(reattachDelay(0, () => 1), 500);
  assert.deepEqual([1, 2, 3, 4].map((n) => reattachDelay(n, () => 1)), [1000, 2000, 4000, 5000]);
  assert.equal(reattachDelay(50, () => 0), 2500);
  for (let i = 0; i < 1000; i++) {
    const delay = reattachDelay(2);
    assert.ok(delay >= 1000 && delay <= 2000, `${delay} ms`);
  }
});

test("a saved conversation loads back as it was, the answer in flight with its ids", () => {
  const storage = fakeStorage();
  const turns = [
    { role: "user", content: "<b>one</b>" },
    { ...newAnswer(), content: "Hello", id: "chatcmpl-1", last: 2, reconnects: 1 },
  ];
  save(storage, turns);
  assert.deepEqual(load(storage), turns);
  clear(storage);
  assert.deepEqual(load(storage), []);
});

test("an answer reloaded before its first chunk cannot be found again: it loads as an error", () => {
  const storage = fakeStorage();
  save(storage, [{ role: "user", content: "one" }, newAnswer()]);
  const [, answer] = load(storage);
  assert.equal(answer.state, "error");
  assert.match(answer.error, /reloaded before the answer began/);
});

test("nothing saved, or something else, loads as an empty conversation", () => {
  const storage = fakeStorage();
  assert.deepEqual(load(storage), []);
  for (const junk of ["{", "null", '{"role":"user"}', '[{"role":"robot","content":"x"}]',
    '[{"role":"assistant","content":"x"}]', '[{"role":"user","content":3}]']) {
    storage.items.set("sse-demo-chat", junk);
    assert.deepEqual(load(storage), [], junk);
  }
});

test("a storage that refuses (full, or turned off) does not break the page", () => {
  const refusing = {
    getItem() { throw new Error("SecurityError"); },
    setItem() { throw new Error("QuotaExceededError"); },
    removeItem() { throw new Error("SecurityError"); },
  };
  save(refusing, [{ role: "user", content: "x" }]);
  clear(refusing);
  assert.deepEqual(load(refusing), []);
});

test("askAgainAfter: a restarting worker's 503 is asked again, a few times; nothing else is", () => {
  assert.equal(askAgainAfter(503, "1", 0), 1000);
  assert.equal(askAgainAfter(503, "0", 2), 0);
  assert.equal(askAgainAfter(503, "1", 3), null); // three tries, then the error shows
  assert.equal(askAgainAfter(503, "5", 0), null); // a full worker: retry later, by hand
  assert.equal(askAgainAfter(503, null, 0), null);
  assert.equal(askAgainAfter(503, "soon", 0), null);
  assert.equal(askAgainAfter(200, "1", 0), null);
  assert.equal(askAgainAfter(400, "1", 0), null);
});
