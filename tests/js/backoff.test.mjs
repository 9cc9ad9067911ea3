// The reconnect backoff of static/stream.js, under Node's built-in test runner: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import { backoff } from "../../static/backoff.js";

const lowest = { random: () => 0 };
const highest = { random: () => 1 };

test("the ceiling doubles with each failure in a row, from 0.5 s", () => {
  assert.deepEqual([0, 1, 2, 3].map((n) => backoff(n, highest)), [500, 1000, 2000, 4000]);
});

test("the wait is a random point in the upper half of the ceiling", () => {
  assert.equal(backoff(2, lowest), 1000);
  assert.equal(backoff(2, { random: () => 0.5 }), 1500);
  assert.equal(backoff(2, highest), 2000);
  for (let i = 0; i < 1000; i++) {
    const delay = backoff(3);
    assert.ok(delay >= 2000 && delay <= 4000, `${delay} ms`);
  }
});

test("the ceiling stops at 30 s, however many failures", () => {
  assert.equal(backoff(6, highest), 30_000);
  assert.equal(backoff(1000, lowest), 15_000);
  assert.equal(backoff(1000, highest), 30_000);
});

test("min and max can be set", () => {
  assert.equal(backoff(0, { min: 100, max: 1000, ...highest }), 100);
  assert.equal(backoff(5, { min: 100, max: 1000, ...highest }), 1000);
});
