// Read a text/event-stream from fetch(), following the WHATWG parsing steps:
// https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
//
// Feed it the byte chunks a stream reader gives, of any size: an event, a
// line, even a UTF-8 character may be split between two chunks, and the
// events come out the same. EventSource does all this by itself, but only
// for GET; a POST read with fetch needs its own parser.

export class SSEParser {
  // UTF-8 whatever the Content-Type says; bad bytes become U+FFFD; one leading BOM is dropped.
  #decoder = new TextDecoder("utf-8");
  #pending = ""; // text after the last line break
  #data = "";
  #type = "";

  // The id and retry fields last seen: they outlive the event that carried them.
  lastEventId = "";
  retry = null;

  constructor(onEvent) {
    this.onEvent = onEvent; // called with {type, data, lastEventId} for each event
  }

  // Parse the next chunk of bytes (a Uint8Array from reader.read()).
  feed(bytes) {
    this.#parse(this.#decoder.decode(bytes, { stream: true }));
  }

  // The stream ended: an event without its closing blank line is dropped, as the standard says.
  end() {
    this.#parse(this.#decoder.decode()); // a character cut off at the end becomes U+FFFD
    if (this.#pending.endsWith("\r")) this.#line(this.#pending.slice(0, -1));
    this.#pending = this.#data = this.#type = "";
  }

  #parse(text) {
    text = this.#pending + text;
    // A line ends at CRLF, CR or LF. A CR at the very end may be the first half
    // of a CRLF, so it waits for the next chunk.
    const cut = text.endsWith("\r") ? text.length - 1 : text.length;
    const lines = text.slice(0, cut).split(/\r\n|\r|\n/);
    this.#pending = lines.pop() + text.slice(cut);
    for (const line of lines) this.#line(line);
  }

  #line(line) {
    if (line === "") return this.#dispatch();
    if (line.startsWith(":")) return; // a comment, such as the server's heartbeat
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.#data += value + "\n";
    else if (field === "event") this.#type = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^[0-9]+$/.test(value)) this.retry = Number(value);
  }

  #dispatch() {
    const data = this.#data;
    const type = this.#type;
    this.#data = this.#type = "";
    if (data === "") return; // only comments or other fields since the last event
    this.onEvent({ type: type || "message", data: data.slice(0, -1), lastEventId: this.lastEventId });
  }
}

// What one event of an OpenAI chat stream says: {done: true} at "[DONE]",
// {error: message} for an error event, otherwise {id, content, finishReason}:
// the completion's id (the same on every chunk), the new text, and why the
// answer stopped (on its last chunk: "stop", "length", "cancelled"), else null.
export function readChatEvent(data) {
  if (data === "[DONE]") return { done: true };
  const chunk = JSON.parse(data);
  if (chunk.error) return { error: chunk.error.message ?? "the stream reported an error" };
  const choice = chunk.choices?.[0];
  return {
    id: chunk.id ?? null,
    content: choice?.delta?.content ?? "",
    finishReason: choice?.finish_reason ?? null,
  };
}
