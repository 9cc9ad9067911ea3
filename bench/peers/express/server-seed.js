// The seeds' Express pattern, literally: a res.write per event, setInterval per
// stream, cleanup on close, headers sent with the first write. This was the
// benchmark's peer until server.js (the same pattern, one write per tick)
// replaced it; bench/run.py runs it as the server "express-seed", so the cost of
// the second write per tick can be measured beside the careful version.
//
// It sends the same events as /stream in app.py (retry first, then per tick a
// counter event with an id and a random event, plus a ping every `ping`
// seconds) and accepts the same ?interval= and ?ping=. Its broadcast events
// carry `event: broadcast` and no id, as the seed's did.
//
// Usage: PORT=8001 node server-seed.js, then curl -N 'http://127.0.0.1:8001/stream?interval=1'
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
  res.write(`retry: ${RETRY_MS}\n\n`); // also sends the headers at once
}

app.get("/stream", (req, res) => {
  const interval = seconds(req.query.interval, 1, false);
  const ping = seconds(req.query.ping, PING_INTERVAL, true);
  if (interval === null || ping === null) {
    res.status(400).json({ error: { message: "bad interval or ping", type: "invalid_request_error" } });
    return;
  }
  startEventStream(res);
  let count = 1;
  const tick = () => {
    res.write(`id: ${count}\ndata: ${JSON.stringify({ count, time: new Date().toISOString() })}\n\n`);
    res.write(`event: random\ndata: ${JSON.stringify({ value: Math.floor(Math.random() * 100) })}\n\n`);
    count += 1;
  };
  tick(); // /stream sends its first tick at once too
  const ticker = setInterval(tick, interval * 1000);
  const pinger = ping > 0
    ? setInterval(() => res.write(`event: ping\ndata: ${JSON.stringify({ time: new Date().toISOString() })}\n\n`), ping * 1000)
    : null;
  res.on("close", () => {
    clearInterval(ticker);
    if (pinger) clearInterval(pinger);
  });
});

// Broadcast with the same interface as app.py's: GET subscribes, POST {"data": ...} fans out.
const subscribers = new Set();

app.get("/broadcast", (req, res) => {
  startEventStream(res);
  subscribers.add(res);
  res.on("close", () => subscribers.delete(res));
});

app.post("/broadcast", express.json(), (req, res) => {
  if (!req.body || !("data" in req.body)) {
    res.status(400).json({ error: { message: "data is required", type: "invalid_request_error" } });
    return;
  }
  const event = `event: broadcast\ndata: ${JSON.stringify(req.body.data)}\n\n`;
  for (const subscriber of subscribers) subscriber.write(event);
  res.status(202).json({ subscribers: subscribers.size });
});

app.get("/healthz", (req, res) => {
  res.json({ status: "ok", pid: process.pid, open_streams: subscribers.size });
});

const port = Number(process.env.PORT || 8001);
app.listen(port, "127.0.0.1", () => console.log(`express peer on http://127.0.0.1:${port}`));
