// The browser's stream parser, under Node's built-in test runner: node --test tests/js/
// Every stream is fed whole, cut in two at every byte boundary, and one byte at a
// time, and must give the same events each way.
import assert from "node:assert/strict";
import { test } from "node:test";

import { readChatEvent, SSEParser } from "../../static/sse-parser.js";

const encoder = new TextEncoder();

function parse(bytes, cuts) {
  const events = [];
  const parser = new SSEParser((event) => events.push(event));
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    parser.feed(bytes.subarray(start, cut));
    start = cut;
  }
  parser.end();
  return events;
}

function eventsHoweverSplit(stream) {
  const bytes = typeof stream === "string" ? encoder.encode(stream) : stream;
  const whole = parse(bytes, []);
  for (let i = 0; i <= bytes.length; i++) {
    assert.deepEqual(parse(bytes, [i]), whole, `cut at byte ${i}`);
  }
  const everyByte = Array.from({ length: bytes.length }, (_, i) => i + 1);
  assert.deepEqual(parse(bytes, everyByte), whole, "one byte at a time");
  return whole;
}

const message = (data, lastEventId = "") => ({ type: "message", data, lastEventId });

function chunk(delta, finishReason = null) {
  const choice = { index: 0, delta, logprobs: null, finish_reason: finishReason };
  return `data: ${JSON.stringify({ object: "chat.completion.chunk", choices: [choice] })}\n\n`;
}

// As the app writes it: raw UTF-8 (2-, 3- and 4-byte characters), a heartbeat, [DONE].
const CHAT = [
  chunk({ role: "assistant", content: "" }),
  chunk({ content: "Héllo" }),
  ": heartbeat\n\n",
  chunk({ content: " ✓" }),
  chunk({ content: " 😀" }),
  chunk({}, "stop"),
  "data: [DONE]\n\n",
].join("");

function chatReading(events) {
  return events.map((event) => readChatEvent(event.data));
}

for (const [name, lineEnd] of [["LF", "\n"], ["CRLF", "\r\n"], ["CR", "\r"]]) {
  test(`a chat stream with ${name} line ends gives its tokens, then done`, () => {
    const events = eventsHoweverSplit(CHAT.replaceAll("\n", lineEnd));
    const reading = chatReading(events);
    assert.deepEqual(reading.at(-1), { done: true });
    assert.equal(reading.map((r) => r.content ?? "").join(""), "Héllo ✓ 😀");
    assert.equal(events.length, 6, "the heartbeat comment is not an event");
  });
}

test("an error event is read as an error", () => {
  const error = { error: { message: "the upstream model sent nothing for 60 s", type: "server_error" } };
  const stream = chunk({ content: "Hi" }) + `data: ${JSON.stringify(error)}\n\n`;
  assert.deepEqual(chatReading(eventsHoweverSplit(stream)), [
    { id: null, content: "Hi", finishReason: null },
    { error: "the upstream model sent nothing for 60 s" },
  ]);
});

test("several data lines join with LF, whatever ended them", () => {
  assert.deepEqual(eventsHoweverSplit("data: YHOO\ndata: +2\r\ndata: 10\r\n\n"), [
    message("YHOO\n+2\n10"),
  ]);
});

test("the standard's example: comments, ids that stick and reset, one space removed", () => {
  const stream = ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n" +
    "data:  third event\n\n";
  assert.deepEqual(eventsHoweverSplit(stream), [
    message("first event", "1"),
    message("second event", ""),
    message(" third event", ""),
  ]);
});

test("empty data is an event, no data is none, and an unfinished event is dropped", () => {
  assert.deepEqual(eventsHoweverSplit("data\n\ndata\ndata\n\nid: 7\n\ndata:"), [
    message(""),
    message("\n"),
  ]);
});

test("a CR at the end of the stream still ends the line it closes", () => {
  assert.deepEqual(eventsHoweverSplit("data: x\n\r"), [message("x")]);
});

test("event names the type, and applies to its event only", () => {
  const stream = "event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\ndata: 113411\n\n";
  assert.deepEqual(eventsHoweverSplit(stream), [
    { type: "add", data: "73857293", lastEventId: "" },
    { type: "remove", data: "2153", lastEventId: "" },
    message("113411"),
  ]);
});

test("unknown fields, an id with NUL and a retry that is not a number are ignored", () => {
  const events = [];
  const parser = new SSEParser((event) => events.push(event));
  parser.feed(encoder.encode("retry: 1500\nid: 5\n\nfoo: bar\nid: 6\0\nretry: 2s\ndata: x\n\n"));
  parser.end();
  assert.deepEqual(events, [message("x", "5")]);
  assert.equal(parser.retry, 1500);
});

test("one leading byte order mark is dropped, a second is part of the field name", () => {
  assert.deepEqual(eventsHoweverSplit("\uFEFFdata: x\n\n"), [message("x")]);
  assert.deepEqual(eventsHoweverSplit("\uFEFF\uFEFFdata: x\n\n"), []);
});

test("bytes that are not UTF-8 become U+FFFD instead of breaking the stream", () => {
  const stream = new Uint8Array([...encoder.encode("data: a"), 0xff, ...encoder.encode("b\n\n")]);
  assert.deepEqual(eventsHoweverSplit(stream), [message("a\uFFFDb")]);
});

test("a character cut off by the end of the stream does not leak into an event", () => {
  const stream = new Uint8Array([...encoder.encode("data: ok\n\ndata: "), 0xf0, 0x9f]);
  assert.deepEqual(eventsHoweverSplit(stream), [message("ok")]);
});

test("readChatEvent: content, a delta without content, done", () => {
  assert.deepEqual(readChatEvent('{"choices":[{"delta":{"content":"a"}}]}'), {
    id: null,
    content: "a",
    finishReason: null,
  });
  assert.deepEqual(readChatEvent('{"choices":[{"delta":{},"finish_reason":"stop"}]}'), {
    id: null,
    content: "",
    finishReason: "stop",
  });
  assert.deepEqual(readChatEvent("[DONE]"), { done: true });
});

test("readChatEvent: the completion id and why it stopped, as the app sends them", () => {
  const last = '{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":' +
    '[{"index":0,"delta":{},"logprobs":null,"finish_reason":"cancelled"}]}';
  assert.deepEqual(readChatEvent(last), { id: "chatcmpl-1", content: "", finishReason: "cancelled" });
});

test("every chunk of an answer is dispatched with its own id; [DONE] keeps the last one", () => {
  // app.py numbers each chunk (id: 1, 2, ...) and sends [DONE] without an id:
  // the number a re-attach sends back as Last-Event-ID is the last chunk's.
  const stream = "id: 1\ndata: a\n\n: heartbeat\nid: 2\ndata: b\n\ndata: [DONE]\n\n";
  assert.deepEqual(eventsHoweverSplit(stream), [message("a", "1"), message("b", "2"),
    message("[DONE]", "2")]);
});
