/**
 * An EventSource that comes back by itself, even after the browser gives up.
 *
 * EventSource already reconnects after a dropped connection: readyState goes
 * to CONNECTING, it waits the server's `retry:` delay and asks again, sending
 * the last id it saw as a Last-Event-ID header. We leave that alone. But an
 * answer that is not 200 with Content-Type text/event-stream (a 502 from a
 * proxy during a deploy, a 503 from a full server) makes it fail for good:
 * readyState CLOSED, and it never tries again. Then this class opens a new
 * EventSource after an exponential backoff with jitter. A new EventSource
 * cannot set headers, so the last id goes in the query string instead
 * (?lastEventId=41) and the server resumes after it.
 * https://html.spec.whatwg.org/multipage/server-sent-events.html#sse-processing-model
 *
 * EventSource does not tell which answer made it give up, so a 400 or a 204
 * (the standard's "stop reconnecting") is retried too, with the same backoff.
 * To end a stream on purpose, send a last event and close() in its handler.
 *
 * Usage:
 *   const stream = new ResilientEventSource("/stream", {
 *     onmessage: (event) => ...,          // events without an "event:" line
 *     events: { ping: (event) => ... },   // named events, by name
 *     onstatechange: (stream) => ...,     // read stream.state, .lastEventId, ...
 *   });
 *   stream.close();      // for good, until stream.reconnect()
 */
export class ResilientEventSource {
  constructor(url, { onmessage, events = {}, onstatechange = () => {},
                     minDelay = 500, maxDelay = 30000 } = {}) {
    this.url = new URL(url, location.href);
    this.handlers = { onmessage, events, onstatechange };
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.state = "closed"; // "connecting" | "open" | "closed", like readyState
    this.retryInMs = null; // while closed: milliseconds until the next try
    this.lastEventId = "";
    this.reconnects = 0; // times the stream opened again after its first open
    this.source = null;
    this.timer = null;
    this.failures = 0; // give-ups in a row: sets the next backoff
    this.hasOpened = false;
    this.reconnect();
  }

  /** Open a new connection now, resuming after the last event id seen. */
  reconnect() {
    this.#stop();
    const url = new URL(this.url);
    if (this.lastEventId) url.searchParams.set("lastEventId", this.lastEventId);
    const source = new EventSource(url);
    this.source = source;

    // event.lastEventId is the stream's last id so far, also on events that
    // carry none. A fresh EventSource starts with none, so keep ours until
    // its first id arrives.
    const track = (handler) => (event) => {
      if (event.lastEventId) this.lastEventId = event.lastEventId;
      handler(event);
    };
    const { onmessage, events } = this.handlers;
    if (onmessage) source.onmessage = track(onmessage);
    for (const [type, handler] of Object.entries(events)) {
      source.addEventListener(type, track(handler));
    }

    source.onopen = () => {
      if (this.hasOpened) this.reconnects += 1;
      this.hasOpened = true;
      this.failures = 0;
      this.#setState("open");
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CONNECTING) {
        this.#setState("connecting"); // the browser is retrying by itself
        return;
      }
      // CLOSED: the browser gave up and will not try again. Back off
      // exponentially, and wait a random part of the second half, so that a
      // thousand pages cut off by one deploy do not come back in one burst.
      const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** this.failures);
      const delay = ceiling / 2 + Math.random() * (ceiling / 2);
      this.failures += 1;
      this.#stop();
      this.timer = setTimeout(() => this.reconnect(), delay);
      this.#setState("closed", delay);
    };
    this.#setState("connecting");
  }

  /** Close for good: nothing reconnects until reconnect() is called. */
  close() {
    this.#stop();
    this.#setState("closed");
  }

  #stop() {
    clearTimeout(this.timer);
    this.timer = null;
    this.source?.close();
    this.source = null;
  }

  #setState(state, retryInMs = null) {
    this.state = state;
    this.retryInMs = retryInMs;
    this.handlers.onstatechange(this);
  }
}
