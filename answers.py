"""Chat answers that outlive their connection: generated once, read by anyone, from any chunk.

ChatGPT keeps generating when the page's connection drops, and the page
re-attaches; OpenAI's Responses API does the same with background responses
and sequence numbers. Here each streamed completion is an ``Answer``: a
background task (a greenlet under gevent) appends its chunks, numbered 1, 2,
3 ...; every reader (the POST that asked, a re-attach after a dropped
connection, a second tab) reads them from any point, then live, then the end.
The chunk number is the SSE id, so ``Last-Event-ID`` is where to go on from.

Two stores with the same methods, like broker.py's brokers:

- ``MemoryAnswers``: this process. Right for one worker; a restart forgets.
- ``RedisAnswers``: also one Redis stream per answer, with an expiry, so a
  re-attach served by another worker or instance, or after a reload, reads
  the same chunks. The answer is still generated in one place only: where
  the POST landed; a re-attach never starts a second generation.

What both offer::

    answer = answers.start(model.stream(messages, id), id, model)  # TooManyAnswers past the cap
    with answers.attach(id, wake) as reader:   # AnswerNotFound: unknown or expired
        chunks, end = reader.since(after)      # texts after chunk ``after``; end: None or how
        reader.poll                             # seconds between looks (remote readers poll)
    answers.cancel(id)                          # "cancelled", "completed" or None (unknown)

An answer ends ``"done"`` (its readers send ``[DONE]``), ``"error"`` (its
last chunk is an error event) or ``"lost"`` (the worker generating it went
away before the end). Nobody attached for ``abandon_after`` seconds cancels
it; a finished answer is kept ``keep_for`` seconds, or until a new one
needs its room and nobody reads it.
"""

import contextlib
import json
import logging
import re
import threading
import time

log = logging.getLogger(__name__)

# Seconds between the generator's looks at a cancel or an abandon while its
# model is silent: how soon a Stop closes a real upstream request.
CHECK_EVERY = 0.1
# Seconds between a remote reader's looks at Redis for new chunks.
REMOTE_POLL = 0.05
# Milliseconds an answer's Redis stream is kept at least while it is generated.
GENERATING_KEEP_MS = 300_000
# The ids this app gives answers; anything else names no answer (and no other key).
ANSWER_ID = re.compile(r"chatcmpl-[0-9a-f]{32}")


class TooManyAnswers(Exception):
    """This worker keeps as many answers as it may: answer 503."""


class StoreUnavailable(Exception):
    """Redis, where answers are kept, cannot be reached: answer 503."""


class AnswerNotFound(Exception):
    """No answer has this id here: it never existed, or it has expired. Answer 404."""


def has_finish_reason(payload):
    """True for a chunk that ends the answer: a choice with a finish_reason."""
    choices = payload.get("choices")
    return isinstance(choices, list) and any(
        isinstance(choice, dict) and choice.get("finish_reason") for choice in choices)


def compact_json(value):
    """JSON as OpenAI writes it: no spaces, and UTF-8 text as it is, not \\u escapes."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Answer:
    """One completion: its chunks so far (JSON texts), how it ended, and who waits for more."""

    def __init__(self, id, model, created):
        self.id, self.model, self.created = id, model, created
        self.chunks = []  # chunk n is chunks[n - 1]
        self.size = 0  # bytes of JSON kept
        self.end = None  # None while generating; then "done", "error" or "lost"
        self.complete = False  # a chunk with a finish_reason came: nothing more to say
        self.cancelled = False
        self.readers = 0
        self.unattached_since = time.monotonic()
        self.finished_at = None
        self.wakes = set()  # what wakes each waiting reader

    def append(self, text):
        self.chunks.append(text)
        self.size += len(text.encode())  # bytes on the wire, not characters
        self._wake_readers()

    def finish(self, end):
        self.end, self.finished_at = end, time.monotonic()
        self._wake_readers()

    def final_chunk(self, finish_reason):
        """The last chunk OpenAI would send: an empty delta and why the answer stopped."""
        return compact_json({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": {}, "logprobs": None,
                         "finish_reason": finish_reason}]})

    def _wake_readers(self):
        for wake in list(self.wakes):
            wake()


class LocalReader:
    """A reader of an answer generated in this process: woken as each chunk comes."""

    poll = None  # no polling: append() wakes it

    def __init__(self, answer):
        self.answer = answer

    def since(self, after):
        return self.answer.chunks[after:], self.answer.end


class MemoryAnswers:
    """This process's answers: generated here, read here, kept ``keep_for`` s after the end."""

    shared = False  # a re-attach must reach this same process

    def __init__(self, max_answers=100, max_bytes=256 * 1024, abandon_after=30, keep_for=300):
        self.max_answers, self.max_bytes = max_answers, max_bytes
        self.abandon_after, self.keep_for = abandon_after, keep_for
        self._answers = {}  # id -> Answer, oldest first
        self._generating = set()  # threads still running a model

    def start(self, chunks, id, model):
        """Create an answer and generate it in the background from ``chunks``, payload dicts.

        ``chunks`` yields each chunk as OpenAI's JSON object, or None now and
        then while the model is silent (so a cancel is noticed); an
        ``{"error": ...}`` object ends it.
        """
        self._forget_expired()
        if len(self._answers) >= self.max_answers and not self._make_room():
            chunks.close()
            raise TooManyAnswers()
        answer = Answer(id, model, int(time.time()))
        try:
            self._created(answer)
        except BaseException:  # Redis is down: nothing was kept, nothing is generated
            chunks.close()
            raise
        self._answers[id] = answer
        thread = threading.Thread(target=self._generate, args=(answer, chunks),
                                  name=f"answer-{id}", daemon=True)
        self._generating.add(thread)
        thread.start()
        return answer

    def _generate(self, answer, chunks):
        end = "error"
        try:
            for payload in chunks:
                if answer.cancelled or self._abandoned(answer):
                    self._append(answer, answer.final_chunk("cancelled"))
                    end = "done"
                    break
                if payload is None:
                    continue
                if payload.get("object") == "chat.completion.chunk":
                    payload = {**payload, "id": answer.id}  # one id, whoever made the chunk
                text = compact_json(payload)
                if answer.size + len(text.encode()) > self.max_bytes:
                    self._append(answer, answer.final_chunk("length"))  # OpenAI's word for it
                    end = "done"
                    break
                if "error" in payload:
                    self._append(answer, text)
                    break
                # Before the append wakes the readers: a Stop then says "completed".
                answer.complete = has_finish_reason(payload)
                self._append(answer, text)
                if answer.complete:  # the model has said all: what follows adds nothing
                    end = "done"
                    break
            else:
                end = "done"
        except Exception:
            log.exception("generating answer %s failed", answer.id)
            self._append(answer, compact_json({"error": {
                "message": "generating the answer failed", "type": "server_error",
                "param": None, "code": None}}))
        finally:
            chunks.close()
            self._finish(answer, end)
            self._generating.discard(threading.current_thread())

    @contextlib.contextmanager
    def attach(self, id, wake):
        """Read answer ``id``; ``wake()`` is called when a chunk or the end comes."""
        answer = self._local(id)
        if answer is None:
            raise AnswerNotFound(id)
        with self._reading(answer, wake) as reader:
            yield reader

    def get(self, id):
        """The answer generated here with this id, or None."""
        return self._local(id)

    def _local(self, id):
        self._forget_expired()
        return self._answers.get(id)



    @contextlib.contextmanager
    def _reading(self, answer, wake):
        answer.readers += 1
        answer.wakes.add(wake)
        try:
            yield LocalReader(answer)
        finally:
            answer.wakes.discard(wake)
            answer.readers -= 1
            if not answer.readers:
                answer.unattached_since = time.monotonic()

    def cancel(self, id):
        """Stop generating answer ``id``; its readers get a last chunk and [DONE].

        Returns "cancelled", "completed" (it had ended already), "lost" (its
        worker died first) or None (unknown or expired).
        """
        answer = self._local(id)
        if answer is None:
            return None
        if answer.end is not None or answer.complete:  # complete: its generator is ending
            return "completed"
        answer.cancelled = True
        return "cancelled"

    def drain(self, timeout):
        """Wait up to ``timeout`` s for the answers still generating here to finish."""
        deadline = time.monotonic() + timeout
        while self._generating and time.monotonic() < deadline:
            time.sleep(CHECK_EVERY)
        return not self._generating

    @property
    def count(self):
        return len(self._answers)

    def _abandoned(self, answer):
        return (not answer.readers
                and time.monotonic() - answer.unattached_since > self.abandon_after)

    def _make_room(self):
        """Forget the answer finished longest ago that nobody reads; False if there is none.

        Finished answers are kept for a re-attach that may never come: without
        this, one client asking many questions and reading none would keep
        everyone else's out until its answers expire. The one finished longest
        ago goes: a page may be re-attaching to the newest.
        """
        unread = [answer for answer in self._answers.values()
                  if answer.end is not None and not answer.readers]
        if not unread:
            return False
        del self._answers[min(unread, key=lambda answer: answer.finished_at).id]
        return True

    def _forget_expired(self):
        now = time.monotonic()
        for id, answer in list(self._answers.items()):
            if answer.finished_at is not None and now - answer.finished_at > self.keep_for:
                del self._answers[id]

    # What RedisAnswers adds to: where chunks are also written.
    def _created(self, answer):
        pass

    def _append(self, answer, text):
        answer.append(text)

    def _finish(self, answer, end):
        answer.finish(end)


class RedisReader:
    """A reader of an answer generated elsewhere: it polls the answer's Redis stream."""

    poll = REMOTE_POLL

    def __init__(self, answers, id):
        self._answers, self._id = answers, id
        self._next_check = 0.0  # when to look again whether its generator is alive
        self._next_mark = 0.0  # when to tell the generator again that someone reads

    def since(self, after):
        from redis import RedisError

        now = time.monotonic()
        try:
            if now >= self._next_mark:
                self._next_mark = now + 1
                self._answers.mark_attached(self._id)
            chunks, end = self._answers.read_remote(self._id, after)
            if end is None and not chunks and now >= self._next_check:
                self._next_check = now + 1
                if not self._answers.remote_is_alive(self._id):
                    end = "lost"
        except RedisError as exc:  # keep trying, less often: Redis may come back
            if self.poll == REMOTE_POLL:
                log.warning("answer %s: reading Redis failed, trying each second: %s",
                            self._id, exc)
            self.poll = 1.0
            return [], None
        self.poll = REMOTE_POLL
        return chunks, end


class RedisAnswers(MemoryAnswers):
    """Answers generated here as in MemoryAnswers, and written to Redis for every other reader.

    Keys, for answer ``id`` under ``prefix``:

    - ``<prefix><id>``: a stream, entry ``0-n`` holding chunk n, then one
      entry with the end; it expires ``keep_for`` s after its last write.
    - ``<prefix><id>:alive``: set while a worker generates it (refreshed
      each second, gone 5 s after that worker died): readers elsewhere tell a
      slow model from a lost answer.
    - ``<prefix><id>:attached``: refreshed by readers elsewhere, so the
      generating worker does not think its answer abandoned.
    - ``<prefix><id>:cancel``: set by a cancel that reached another worker.
    """

    shared = True  # any worker may serve a re-attach

    def __init__(self, url, prefix="sse:chat:", **limits):
        super().__init__(**limits)
        import redis  # only a Redis deployment needs the package

        self._redis = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=10, timeout=5, socket_connect_timeout=2, socket_timeout=5))
        self._prefix = prefix
        self._looked = {}  # id -> when its generator last looked at Redis (monotonic)
        self._failing = set()  # ids whose last write or look at Redis failed

    @contextlib.contextmanager
    def _unavailable_as_503(self):
        from redis import RedisError

        try:
            yield
        except RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    def _key(self, id, suffix=""):
        if not ANSWER_ID.fullmatch(id):  # "<id>:alive" would name another key
            raise AnswerNotFound(id)
        return f"{self._prefix}{id}{suffix}"

    def _created(self, answer):
        with self._unavailable_as_503():
            self._redis.set(self._key(answer.id, ":alive"), 1, px=5000)
        self._looked[answer.id] = time.monotonic()

    def _append(self, answer, text):
        super()._append(answer, text)
        self._write(answer, {"data": text}, len(answer.chunks))

    def _finish(self, answer, end):
        super()._finish(answer, end)
        self._write(answer, {"end": end}, len(answer.chunks) + 1, finished=True)
        with contextlib.suppress(Exception):  # it expires by itself anyway
            self._redis.delete(self._key(answer.id, ":alive"))
        self._looked.pop(answer.id, None)
        self._failing.discard(answer.id)

    def _redis_failed(self, answer, what, exc):
        """Warn at the first failure of an outage, not at each chunk and each look."""
        if answer.id not in self._failing:
            self._failing.add(answer.id)
            log.warning("answer %s: %s failed (said once, until Redis answers again): %s",
                        answer.id, what, exc)

    def _redis_worked(self, answer):
        if answer.id in self._failing:
            self._failing.discard(answer.id)
            log.info("answer %s: Redis answers again", answer.id)

    def _write(self, answer, fields, n, finished=False):
        from redis import RedisError

        key = self._key(answer.id)
        # Kept keep_for after the end; while it is generated, a while at least
        # (keep_for may be 0, or a fraction of a second: PEXPIRE takes milliseconds).
        keep = int(self.keep_for * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(key, fields, id=f"0-{n}")
        pipe.pexpire(key, keep if finished else max(keep, GENERATING_KEEP_MS))
        try:
            pipe.execute()
        except RedisError as exc:  # local readers still get it; remote ones see it lost
            self._redis_failed(answer, f"writing chunk {n} (readers elsewhere see it lost)", exc)
        else:
            self._redis_worked(answer)

    def _abandoned(self, answer):
        """Abandoned only when nobody reads it here or elsewhere; also look for a remote cancel."""
        now = time.monotonic()
        if now - self._looked.get(answer.id, 0) >= CHECK_EVERY * 2:
            self._looked[answer.id] = now
            try:
                pipe = self._redis.pipeline(transaction=False)
                pipe.set(self._key(answer.id, ":alive"), 1, px=5000)
                pipe.exists(self._key(answer.id, ":cancel"))
                pipe.exists(self._key(answer.id, ":attached"))
                _, cancelled, attached = pipe.execute()
            except Exception as exc:  # Redis away: judge by the local readers alone
                self._redis_failed(answer, "looking for readers and a cancel in Redis", exc)
                cancelled = attached = 0
            else:
                self._redis_worked(answer)
            if cancelled:
                answer.cancelled = True
            if attached:
                answer.unattached_since = now
        return answer.cancelled or super()._abandoned(answer)

    @contextlib.contextmanager
    def attach(self, id, wake):
        answer = self._local(id)
        if answer is not None:  # generated here: read it here, woken chunk by chunk
            with self._reading(answer, wake) as reader:
                yield reader
            return
        with self._unavailable_as_503():
            if not self._redis.exists(self._key(id), self._key(id, ":alive")):
                raise AnswerNotFound(id)
        yield RedisReader(self, id)

    def read_remote(self, id, after):
        """Chunks after ``after`` from Redis, in order and without a gap, and the end if it came.

        A missing chunk (Redis lost it, or a write failed) ends the answer as
        lost: numbering what follows by its place would send chunks under the
        wrong ids, and a client's next re-attach would repeat text.
        """
        entries = self._redis.xrange(self._key(id), min=f"(0-{after}", count=100)
        if not entries and not self._redis.exists(self._key(id), self._key(id, ":alive")):
            return [], "lost"  # expired while read, or its worker died before the first chunk
        chunks = []
        for number, (entry_id, fields) in enumerate(entries, start=after + 1):
            if entry_id != f"0-{number}".encode():
                return chunks, "lost"
            if b"end" in fields:
                return chunks, fields[b"end"].decode()
            chunks.append(fields[b"data"].decode())
        return chunks, None

    def remote_is_alive(self, id):
        return bool(self._redis.exists(self._key(id, ":alive")))

    def mark_attached(self, id):
        """Tell the generating worker that someone elsewhere reads answer ``id``."""
        from redis import RedisError

        with contextlib.suppress(RedisError):
            self._redis.set(self._key(id, ":attached"), 1, ex=max(1, int(self.abandon_after)))

    def cancel(self, id):
        status = super().cancel(id)
        if status is not None:
            return status
        with self._unavailable_as_503():
            if not self._redis.exists(self._key(id), self._key(id, ":alive")):
                return None
            last = self._redis.xrevrange(self._key(id), count=1)
            if last and b"end" in last[0][1]:
                return "completed"
            if not self._redis.exists(self._key(id, ":alive")):
                return "lost"  # nobody generates it any more: nothing to stop
            self._redis.set(self._key(id, ":cancel"), 1, ex=max(60, int(self.keep_for)))
        return "cancelled"
