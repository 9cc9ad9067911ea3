// The chat panel, as ChatGPT does it: POST the prompt with fetch, read the
// answer from the response body as it streams, add each token as it comes.
// Not EventSource: it can only GET, with no body and no headers of our own.
import { readChatEvent, SSEParser } from "./sse-parser.js";

const form = document.getElementById("chat-form");
const prompt = document.getElementById("prompt");
const send = document.getElementById("send");
const stop = document.getElementById("stop");
const answer = document.getElementById("answer");
const errorBox = document.getElementById("chat-error");

let controller = null; // the AbortController of the answer streaming now

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const current = (controller = new AbortController());
  answer.textContent = "";
  showError("");
  setState("streaming");
  try {
    const response = await fetch(form.dataset.url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ messages: [{ role: "user", content: prompt.value }], stream: true }),
      signal: current.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    await readAnswer(response.body);
    setState("done");
  } catch (error) {
    if (error.name === "AbortError") {
      setState("stopped"); // Stop was pressed: what arrived so far stays
    } else {
      showError(error.message);
      setState("error");
    }
  } finally {
    // A no-op after a clean end; after an error it closes a body we stopped reading.
    current.abort();
    controller = null;
  }
});

// Aborting closes the connection; the server's next write fails and its generator ends.
stop.addEventListener("click", () => controller?.abort());

async function readAnswer(body) {
  const reader = body.getReader();
  let finished = false;
  const parser = new SSEParser((event) => {
    const said = readChatEvent(event.data);
    if (said.error) throw new Error(said.error);
    if (said.done) finished = true;
    else answer.textContent += said.content; // text only: never parsed as HTML
  });
  while (!finished) {
    const { value, done } = await reader.read();
    if (done) break;
    parser.feed(value);
  }
  if (!finished) throw new Error("the connection closed before the answer was complete");
}

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function setState(state) {
  answer.dataset.state = state; // idle, streaming, done, stopped or error
  answer.setAttribute("aria-busy", String(state === "streaming"));
  send.disabled = state === "streaming";
  stop.disabled = state !== "streaming";
}
