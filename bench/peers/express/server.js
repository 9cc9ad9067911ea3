// The benchmark's peer: the seeds' Express pattern (setInterval per stream,
// cleanup on close) as a careful Node engineer writes it. Headers are flushed
// before the first event, and each tick is ONE res.write holding every event
// due then, as app.py's /stream does; the seeds' literal version, a write per
// event, is server-seed.js beside this file.
//
// The wire is /stream's in app.py: retry first, then per tick a counter event
// with an id and a random event, and a ping (before the tick's events, in the
// same write) every `ping` seconds. It accepts the same ?interval= and ?ping=.
// JSON.stringify writes no space after ":" and ",", so a tick is 3 bytes
// shorter than the app's json.dumps text (4 with a ping).
//
// /broadcast has app.py's interface and wire: GET subscribes; POST {"data": ...,
// "event": "name"} writes `[event: name]`, `id: <ms>-<seq>` and `data: <JSON>`
// to every subscriber, then answers 202 with the id. The fan-out runs in the
// POST's handler, so the answer leaves after the last subscriber's write.
//
// Usage: PORT=8001 node server.js, then curl -N 'http://127.0.0.1:8001/stream?interval=1'
"use strict";
const express = require("express");

const RETRY_MS = 2000;
const PING_INTERVAL = 5;
const MIN_INTERVAL = 0.02;
const MAX_INTERVAL = 3600;

const app = express();

function seconds(raw, fallback, allowZero) {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  const ok = (allowZero && value === 0) || (value >= MIN_INTERVAL && value <= MAX_INTERVAL);
  return ok ? value : null;
}

function startEventStream(res) {
  res.setHeader("Content-Type", "text/event-stream; charset=utf-8");
  res.setHeader("Cache-Control", "no-cache");
  res.setHeader("X-Accel-Buffering", "no");
  res.flushHeaders(); // the client sees the response start before any event is due
  res.write(`retry: ${RETRY_MS}\n\n`);
}

const pingEvent = () => `event: ping\ndata: ${JSON.stringify({ time: new Date().toISOString() })}\n\n`;

app.get("/stream", (req, res) => {
  const interval = seconds(req.query.interval, 1, false);
  const ping = seconds(req.query.ping, PING_INTERVAL, true);
  if (interval === null || ping === null) {
    res.status(400).json({ error: { message: "bad interval or ping", type: "invalid_request_error" } });
    return;
  }
  startEventStream(res);
  // A ping period that is a whole number of ticks rides on the tick's write;
  // any other gets a timer (and a write) of its own.
  const ticksPerPing = ping / interval;
  const pingOnTick = ping > 0 && Math.abs(ticksPerPing - Math.round(ticksPerPing)) < 1e-9;
  let nextPing = Date.now() + ping * 1000;
  let count = 1;
  const tick = () => {
    let chunk = "";
    const now = Date.now();
    if (pingOnTick && now >= nextPing) {
      chunk += pingEvent();
      nextPing = Math.max(nextPing + ping * 1000, now);
    }
    chunk += `id: ${count}\ndata: ${JSON.stringify({ count, time: new Date(now).toISOString() })}\n\n`
      + `event: random\ndata: ${JSON.stringify({ value: Math.floor(Math.random() * 100) })}\n\n`;
    count += 1;
    res.write(chunk);
  };
  tick(); // /stream sends its first tick at once too
  const ticker = setInterval(tick, interval * 1000);
  const pinger = ping > 0 && !pingOnTick ? setInterval(() => res.write(pingEvent()), ping * 1000) : null;
  res.on("close", () => {
    clearInterval(ticker);
    if (pinger) clearInterval(pinger);
  });
});

const subscribers = new Set();
let last = [0, 0]; // the last id, [milliseconds, sequence], as app.py's MemoryBroker makes them

function nextId() {
  const now = Date.now();
  last = now > last[0] ? [now, 0] : [last[0], last[1] + 1];
  return `${last[0]}-${last[1]}`;
}

app.get("/broadcast", (req, res) => {
  startEventStream(res);
  subscribers.add(res);
  res.on("close", () => subscribers.delete(res));
});

app.post("/broadcast", express.json(), (req, res) => {
  const body = req.body;
  const event = body && body.event;
  if (!body || !("data" in body) || (event !== undefined && (typeof event !== "string" || /[\r\n]/.test(event)))) {
    res.status(400).json({ error: { message: 'send {"data": ..., "event": "name"}', type: "invalid_request_error" } });
    return;
  }
  const id = nextId();
  const text = `${event ? `event: ${event}\n` : ""}id: ${id}\ndata: ${JSON.stringify(body.data)}\n\n`;
  for (const subscriber of subscribers) subscriber.write(text);
  res.status(202).json({ id });
});

app.get("/healthz", (req, res) => {
  res.json({ status: "ok", pid: process.pid, open_streams: subscribers.size });
});

const port = Number(process.env.PORT || 8001);
app.listen(port, "127.0.0.1", () => console.log(`express peer on http://127.0.0.1:${port}`));
