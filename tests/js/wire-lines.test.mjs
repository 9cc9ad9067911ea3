// The Wire panel's line splitter and field names, under Node's built-in test runner:
// node --test tests/js/. Every wire is fed whole, cut in two at every byte, and one
// byte at a time, through a streaming TextDecoder as static/wire.js does, and must
// give the same lines each way.
import assert from "node:assert/strict";
import { test } from "node:test";

import { fieldOf, splitLines } from "../../static/wire-lines.js";

const encoder = new TextEncoder();

function read(bytes, cuts) {
  const decoder = new TextDecoder();
  const lines = [];
  let state = {};
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    state = splitLines(decoder.decode(bytes.subarray(start, cut), { stream: true }), state);
    lines.push(...state.lines);
    start = cut;
  }
  state = splitLines(decoder.decode(), state);
  lines.push(...state.lines);
  return { lines, rest: state.rest };
}

function linesHoweverSplit(wire) {
  const bytes = encoder.encode(wire);
  const whole = read(bytes, []);
  for (let i = 0; i <= bytes.length; i++) {
    assert.deepEqual(read(bytes, [i]), whole, `cut at byte ${i}`);
  }
  const everyByte = Array.from({ length: bytes.length }, (_, i) => i + 1);
  assert.deepEqual(read(bytes, everyByte), whole, "one byte at a time");
  return whole;
}

// As /stream writes it: retry first, a heartbeat comment with no blank line after
// it, a counter event, a random event, a ping; then 2-, 3- and 4-byte characters.
const LINES = [
  "retry: 100", "",
  ": heartbeat",
  "id: 1", 'data: {"count": 1, "time": "2026-11-21T15:00:00.123Z"}', "",
  "event: random", 'data: {"value": 42}', "",
  "event: ping", 'data: {"time": "2026-11-21T15:00:00.200Z"}', "",
  "data: Héllo ✓ 😀", "",
];

for (const [name, lineEnd] of [["LF", "\n"], ["CRLF", "\r\n"], ["CR", "\r"]]) {
  test(`a stream with ${name} line ends gives the same lines however it is cut`, () => {
    const wire = LINES.map((line) => line + lineEnd).join("");
    assert.deepEqual(linesHoweverSplit(wire), { lines: LINES, rest: "" });
  });
}

test("CR, LF and CRLF mixed in one stream each end one line", () => {
  const wire = "retry: 100\r\n\rid: 1\ndata: a\r\rdata: b\n\r\n";
  assert.deepEqual(linesHoweverSplit(wire), {
    lines: ["retry: 100", "", "id: 1", "data: a", "", "data: b", ""],
    rest: "",
  });
});

test("a CR at the end of a piece ends its line at once; an LF after it ends no other", () => {
  const first = splitLines("data: a\r");
  assert.deepEqual(first, { lines: ["data: a"], rest: "", afterCR: true });
  assert.deepEqual(splitLines("\n", first), { lines: [], rest: "", afterCR: false });
  assert.deepEqual(splitLines("\n\n", first), { lines: [""], rest: "", afterCR: false });
  // CR then CR: two line ends, the second a blank line.
  assert.deepEqual(splitLines("\rdata: b", first), { lines: [""], rest: "data: b", afterCR: false });
  // An empty piece changes nothing.
  assert.deepEqual(splitLines("", first), { lines: [], rest: "", afterCR: true });
});

test("text after the last line end waits for the rest of its line", () => {
  assert.deepEqual(linesHoweverSplit("data: one\ndata: unfin"), {
    lines: ["data: one"],
    rest: "data: unfin",
  });
});

test("only CR and LF end a line: form feed, NEL and U+2028 are part of it", () => {
  const wire = "data: a\fb\u0085c\u2028d\u000be\n\n";
  assert.deepEqual(linesHoweverSplit(wire).lines, ["data: a\fb\u0085c\u2028d\u000be", ""]);
});

test("fieldOf names what the browser does with a line", () => {
  assert.equal(fieldOf(""), "blank");
  assert.equal(fieldOf(": heartbeat"), "comment");
  assert.equal(fieldOf(":"), "comment");
  assert.equal(fieldOf("data: {}"), "data");
  assert.equal(fieldOf("data"), "data"); // no colon: the whole line is the name, value ""
  assert.equal(fieldOf("data:x"), "data");
  assert.equal(fieldOf("event: random"), "event");
  assert.equal(fieldOf("id: 7"), "id");
  assert.equal(fieldOf("retry: 2000"), "retry");
  assert.equal(fieldOf(" data: x"), "unknown"); // the name is " data"
  assert.equal(fieldOf("Data: x"), "unknown"); // names are case-sensitive
  assert.equal(fieldOf("foo: bar"), "unknown");
  assert.equal(fieldOf("<img id=injected src=x>"), "unknown");
});
