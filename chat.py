"""The model behind /v1/chat/completions: request checks, an offline model, a proxy.

Both models speak OpenAI's streaming chat format
(https://platform.openai.com/docs/api-reference/chat-streaming): one
``chat.completion.chunk`` object per token, the first carrying
``delta.role``, the last an empty delta with ``finish_reason``. They are
duck-typed: ``name``, ``complete(messages)`` for ``stream: false``, and
``stream(messages, id)``, which yields each chunk as a dict (or an
``{"error": ...}`` dict that ends it), and None now and then while the model
is silent, so whoever runs it can look for a cancel (answers.py does).

>>> tokenize("Hello, streaming world")
['Hello,', ' streaming', ' world']
"""

import json
import queue
import re
import threading
import time
import uuid

from werkzeug.exceptions import RequestEntityTooLarge

from answers import CHECK_EVERY, compact_json
from sse import NonStandardNumber, parse_json
from streams import read_body

ROLES = ("system", "developer", "user", "assistant")

# What the offline model knows: a paragraph per topic, picked by words in the prompt.
TOPICS = [
    (("heartbeat", "idle", "timeout", "dead", "disconnect"),
     "A quiet stream still writes a comment line, “: heartbeat”, every few seconds. Proxies see "
     "traffic and keep the connection open, and writing to a client that has gone fails, so the "
     "server notices and cleans up in a finally block."),
    (("reconnect", "retry", "resume", "last-event-id"),
     "EventSource reconnects by itself after the retry delay and sends the last id it saw in the "
     "Last-Event-ID header, so the server can resume where it left off. A fetch reader, like "
     "this chat, has to do that itself."),
    (("nginx", "proxy", "buffer"),
     "A proxy that buffers holds the whole answer back until it ends. Nginx passes each event "
     "on at once when the app sends “X-Accel-Buffering: no”, which this app does."),
    (("stop", "abort", "cancel"),
     "The Stop button asks the server to cancel the answer, then aborts its own request with "
     "an AbortController. A dropped connection alone stops nothing: the answer goes on, so "
     "the page can re-attach. A cancel stops it, and with a real model closes the upstream "
     "request too, so no tokens are spent for nobody."),
]
ABOUT_SSE = (
    "Server-Sent Events are one HTTP request and a very long response. The server answers with "
    "“Content-Type: text/event-stream” and keeps writing events: a line such as “data: {...}” "
    "and then a blank line. ChatGPT streams its answers this way: each event carries a few "
    "characters in choices[0].delta.content, and “data: [DONE]” ends the stream.")


class ChatError(Exception):
    """A refused request or a failed upstream, answered with ``status`` in OpenAI's shape."""

    def __init__(self, status, message, param=None):
        super().__init__(message)
        self.status, self.param = status, param


def read_request(request, max_bytes):
    """Check a chat request and return ``(messages, stream)``; raise ChatError if it is bad.

    Every refusal happens here, before the first byte of an answer: once a
    stream has started, its status is 200 whatever goes wrong later.
    """
    if not request.is_json:
        raise ChatError(415, "Content-Type must be application/json")
    # werkzeug stops reading a chunked body at max_content_length without an
    # error, so allow one byte more: reading it means the body was too big.
    request.max_content_length = max_bytes + 1
    try:
        raw = read_body(request)  # BodyUnreadable when it cannot be read: 400
    except RequestEntityTooLarge:  # Content-Length said so: refused unread
        raw = None
    if raw is None or len(raw) > max_bytes:
        raise ChatError(413, f"the request body must be at most {max_bytes} bytes")
    try:
        body = parse_json(raw)
    except NonStandardNumber as exc:  # httpx would refuse to send it upstream: a 500
        raise ChatError(400, f"the request body is not standard JSON: {exc}") from None
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, or nesting deeper than Python's stack
        raise ChatError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ChatError(400, "the request body must be a JSON object")
    if not isinstance(body.get("model", ""), str):
        raise ChatError(400, "model must be a string", "model")
    if not is_utf8(body.get("model", "")):
        raise not_unicode("model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ChatError(400, "stream must be true or false", "stream")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatError(400, "messages must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ChatError(400, f"{where} must be an object", where)
        if message.get("role") not in ROLES:
            raise ChatError(400, f"{where}.role must be one of: {', '.join(ROLES)}",
                            f"{where}.role")
        if message_text(message.get("content")) is None:
            raise ChatError(400, f"{where}.content must be a string or an array of text parts",
                            f"{where}.content")
        if not is_utf8(message_text(message["content"])):
            raise not_unicode(f"{where}.content")
        if not is_utf8(compact_json(message)):  # any other field goes upstream as UTF-8 too
            raise not_unicode(where)
    return messages, stream


def is_utf8(text):
    """False for text with a lone surrogate, which UTF-8 cannot encode.

    JSON can carry one (``"\\ud800"`` parses), so a valid request may hold
    text that fails only later, when the answer that quotes it is encoded or
    the request is sent upstream: mid-stream, after the 200 has gone out.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def not_unicode(param):
    return ChatError(400, f"{param} is not valid Unicode: it has a lone surrogate "
                          "(such as \\ud800), which cannot be encoded as UTF-8", param)


def message_text(content):
    """The text of a message: a string, or a list of ``{"type": "text"}`` parts; else None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
            isinstance(part, dict) and part.get("type") == "text"
            and isinstance(part.get("text"), str) for part in content):
        return "".join(part["text"] for part in content)
    return None


def tokenize(text):
    """Split text into word-sized tokens that keep their leading space, as GPT tokens do."""
    return re.findall(r"\s*\S+", text)


def model_from_config(config):
    """The real model when OPENAI_API_KEY is set, else the offline one."""
    if config["OPENAI_API_KEY"]:
        return UpstreamModel(config["OPENAI_BASE_URL"], config["OPENAI_API_KEY"],
                             config["OPENAI_MODEL"], config["CHAT_UPSTREAM_TIMEOUT"])
    return OfflineModel(config["CHAT_TOKEN_DELAY"])


class OfflineModel:
    """A stand-in for a language model: no network, no weights, same prompt, same answer.

    It writes a token every ``delay`` seconds, and configuration keeps that
    below the heartbeat period, so it notices a gone client without heartbeats.
    """

    name = "sse-demo-offline"

    def __init__(self, delay):
        self.delay = delay

    def complete(self, messages):
        """The whole answer as one ``chat.completion`` object."""
        tokens = tokenize(offline_answer(messages))
        prompt_tokens = sum(len(tokenize(message_text(m["content"]))) for m in messages)
        return {
            "id": new_id(), "object": "chat.completion", "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                      "total_tokens": prompt_tokens + len(tokens)},
        }

    def stream(self, messages, id):
        """Yield the answer as chunks: the role, one token each, then the stop."""
        created = int(time.time())

        def chunk(delta, finish_reason=None):
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {"id": id, "object": "chat.completion.chunk", "created": created,
                    "model": self.name, "choices": [choice]}

        yield chunk({"role": "assistant", "content": ""})
        for token in tokenize(offline_answer(messages)):
            yield from self._pause()
            yield chunk({"content": token})
        yield chunk({}, finish_reason="stop")

    def _pause(self):
        """Wait ``delay`` s before the next token, saying None each CHECK_EVERY s meanwhile.

        A long delay then still lets the owner look for a cancel, and keep the
        answer's lease in Redis, as while a real model is silent.
        """
        deadline = time.monotonic() + self.delay
        while (left := deadline - time.monotonic()) > CHECK_EVERY:
            time.sleep(CHECK_EVERY)
            yield None
        time.sleep(max(0.0, left))


def offline_answer(messages):
    """What the offline model says: about SSE, shaped by the conversation so far.

    The same conversation always gets the same answer; an earlier question
    is remembered, as a model with the whole history in its context would.
    """
    asked = [message_text(m["content"]) for m in messages if m["role"] == "user"]
    prompt = asked[-1] if asked else ""
    opening = (f"You asked: “{quote(prompt)}”. " if prompt.split() else "") + (
        "I am the offline demo model: no network, no weights, and the same answer to the same "
        "conversation.")
    if len(asked) > 1 and asked[-2].split():
        opening += (f" Before that you asked “{quote(asked[-2])}”: that was question "
                    f"{len(asked) - 1} of this conversation, and this is question {len(asked)}.")
    lowered = prompt.lower()
    topics = [text for keywords, text in TOPICS if any(word in lowered for word in keywords)]
    closing = "Each word you just read arrived as its own event."
    return "\n\n".join([opening, *(topics or [ABOUT_SSE]), closing])


def quote(text, words=8):
    """The first few words of ``text``, for the offline model to repeat."""
    split = text.split()
    return " ".join(split[:words]) + (" …" if len(split) > words else "")


def new_id():
    return f"chatcmpl-{uuid.uuid4().hex}"


class UpstreamModel:
    """The real thing: forward the conversation to an OpenAI-compatible API.

    The key stays on the server: it is sent only upstream, in the
    Authorization header, and scrubbed from all upstream text we pass on.
    The upstream model is always ``model`` from the configuration, whatever
    the client asks for: the server decides what its key pays for.
    """

    def __init__(self, base_url, api_key, model, timeout):
        import httpx  # only proxy mode needs it

        self.name = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.timeout = timeout
        self._key = api_key
        # Loading the CA bundle takes milliseconds: once here, not per request.
        self._ssl = httpx.create_ssl_context()

    def _client(self):
        import httpx

        # timeout bounds connecting and each read: a stall past it is an error.
        return httpx.Client(timeout=self.timeout, verify=self._ssl,
                            headers={"Authorization": f"Bearer {self._key}"})

    def _body(self, messages, stream):
        return {"model": self.name, "messages": messages, "stream": stream}

    def complete(self, messages):
        """Ask without streaming and return the upstream's ``chat.completion``, scrubbed."""
        import httpx

        with self._client() as client:
            try:
                response = client.post(self.url, json=self._body(messages, stream=False))
            except httpx.HTTPError as exc:
                status = 504 if isinstance(exc, httpx.TimeoutException) else 502
                raise ChatError(status, self._failure(exc)) from None
        if response.status_code != 200:
            raise ChatError(502, self._refusal(response))
        try:
            return scrub(response.json(), self._key)
        except (ValueError, RecursionError):  # scrub() walks as deep as the JSON nests
            raise ChatError(502, "the upstream model answered with invalid JSON") from None

    def stream(self, messages, id):
        """Yield each upstream chunk, scrubbed, as it arrives; None every CHECK_EVERY s of silence.

        A helper thread (a greenlet under gevent) reads the upstream, so this
        generator never blocks for long: its owner can stop it at any moment
        by closing it, and ``finally`` then closes the upstream connection, so
        the model stops generating for nobody.
        """
        chunks = queue.Queue()  # unbounded, yet small: one completion's chunks
        client = self._client()
        pump = threading.Thread(target=self._pump, args=(client, messages, chunks.put),
                                name=f"upstream-{id}", daemon=True)
        pump.start()
        try:
            while True:
                try:
                    chunk = chunks.get(timeout=CHECK_EVERY)
                except queue.Empty:
                    chunk = None  # silent for now: the owner may look for a cancel
                if chunk is END:
                    return
                yield chunk
        finally:
            client.close()  # wakes the pump's read with an error, under gevent at once

    def _pump(self, client, messages, put):
        """Read the upstream's events with httpx-sse and put each chunk, then END."""
        import httpx
        from httpx_sse import EventSource, SSEError

        try:
            with client.stream("POST", self.url, json=self._body(messages, stream=True),
                               headers={"Accept": "text/event-stream"}) as response:
                if response.status_code != 200:
                    response.read()
                    put(error_chunk(self._refusal(response)))
                    return
                for event in EventSource(response).iter_sse():
                    if event.data == "[DONE]":
                        return
                    payload = json.loads(event.data)
                    if not isinstance(payload, dict):
                        raise ValueError("an event that is not a JSON object")
                    put(scrub(payload, self._key))
                    if "error" in payload:  # already in OpenAI's error shape: pass it on, stop
                        return
                put(error_chunk("the upstream stream ended before [DONE]"))
        except (httpx.HTTPError, SSEError, ValueError, RecursionError) as exc:
            if not client.is_closed:  # closed means we stopped it: nobody to tell
                put(error_chunk(self._failure(exc)))
        finally:
            put(END)

    def _failure(self, exc):
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            return f"the upstream model sent nothing for {self.timeout} s"
        if isinstance(exc, httpx.HTTPError):
            return f"the connection to the upstream model failed: {type(exc).__name__}"
        return "the upstream model sent an event that is not a JSON object"

    def _refusal(self, response):
        """Say why the upstream refused, in its own words, without any key in them."""
        try:
            reason = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = response.reason_phrase
        reason = scrub(str(reason), self._key)
        return f"the upstream model answered {response.status_code}: {reason}"


END = object()  # the pump's last word


def scrub(value, key):
    """Replace the key, and anything shaped like an OpenAI key, in every string of ``value``.

    ``value`` is a string or parsed JSON. Its strings are scrubbed (object
    keys too) and its shape is kept, so what is passed on stays valid JSON;
    scrubbing parsed text also catches a key written with JSON escapes. The
    trap: each piece is scrubbed on its own, so a key split across two
    streamed chunks would pass. Upstreams quote keys whole, in messages.

    >>> scrub({"error": {"message": "bad key s3cret, or sk-proj-a1*b2"}}, "s3cret")
    {'error': {'message': 'bad key ***, or sk-***'}}
    >>> scrub(["a task-based, risk-free plan", 3], "s3cret")
    ['a task-based, risk-free plan', 3]
    """
    if isinstance(value, str):
        # \b: the "sk-" inside "task-based" starts no key.
        return re.sub(r"\bsk-[\w*-]+", "sk-***", value.replace(key, "***"))
    if isinstance(value, list):
        return [scrub(item, key) for item in value]
    if isinstance(value, dict):
        return {scrub(name, key): scrub(item, key) for name, item in value.items()}
    return value


def error_chunk(message):
    """A chunk in OpenAI's error shape: the openai client raises APIError on it."""
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
