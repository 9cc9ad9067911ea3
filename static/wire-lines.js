// The first step of reading an event stream: text into lines, and each line's field.
// https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
// Pure functions, so Node can test them (tests/js/wire-lines.test.mjs); static/wire.js shows the result.

/**
 * Split the next piece of decoded stream text into whole lines.
 *
 * A line ends at CRLF, a lone CR or a lone LF, and nothing else (not at
 * U+2028 or \f, which String.split(/\s/) and friends would take). Text after
 * the last line end is kept in `rest` for the next call. A CR at the very
 * end of a piece ends its line at once, so a CR-only stream shows without
 * delay, but it may be the first half of a CRLF cut between two pieces:
 * `afterCR` says so, and an LF opening the next piece is then skipped.
 *
 *   let state = {};
 *   state = splitLines("data: a\r", state);  // → lines ["data: a"], afterCR true
 *   state = splitLines("\n\n", state);       // → lines [""]: the blank line
 *
 * @param {string} text the newly decoded text
 * @param {{rest?: string, afterCR?: boolean}} state what the previous call returned
 * @returns {{lines: string[], rest: string, afterCR: boolean}}
 */
export function splitLines(text, { rest = "", afterCR = false } = {}) {
  if (text === "") return { lines: [], rest, afterCR };
  const lines = [];
  const lineEnd = /\r\n|\r|\n/g;
  let start = afterCR && text.startsWith("\n") ? 1 : 0;
  lineEnd.lastIndex = start;
  for (let match; (match = lineEnd.exec(text)); start = lineEnd.lastIndex) {
    lines.push(rest + text.slice(start, match.index));
    rest = "";
  }
  return { lines, rest: rest + text.slice(start), afterCR: text.endsWith("\r") };
}

/**
 * What the browser makes of one line: "blank" (dispatch the event),
 * "comment" (a leading colon: ignored), one of the four fields "data",
 * "event", "id", "retry", or "unknown" (any other field: ignored too).
 * The field name is everything before the first colon, or the whole line.
 */
export function fieldOf(line) {
  if (line === "") return "blank";
  if (line.startsWith(":")) return "comment";
  const colon = line.indexOf(":");
  const name = colon === -1 ? line : line.slice(0, colon);
  return ["data", "event", "id", "retry"].includes(name) ? name : "unknown";
}
