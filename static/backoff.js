/**
 * How long to wait before opening a new EventSource after the browser gave up.
 *
 * The ceiling doubles with each give-up in a row, from `min` up to `max`, and
 * the wait is a random point in its upper half ("jitter"): a thousand pages cut
 * off by one deploy then come back spread out, not in one burst that knocks
 * the new server over again.
 *
 *   backoff(0) → 250–500 ms, backoff(1) → 500–1000 ms, … backoff(9) → 15–30 s
 */
export function backoff(failures, { min = 500, max = 30_000, random = Math.random } = {}) {
  const ceiling = Math.min(max, min * 2 ** failures);
  return ceiling / 2 + random() * (ceiling / 2);
}
