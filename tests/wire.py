"""Read the raw wire of a streaming Flask test-client response, block by block.

A block is an event's lines up to its blank line, or a comment line on its
own (heartbeats are comment lines with no blank line after them). The
integration tests read streams with httpx-sse instead, an independent parser.
"""


def blocks(response):
    """Yield each block of ``response`` as text, without its line endings, as it arrives."""
    pending, lines = "", []
    for chunk in response.iter_encoded():
        pending += chunk.decode()
        *complete, pending = pending.split("\n")
        for line in complete:
            if line.startswith(":") and not lines:
                yield line
            elif line:
                lines.append(line)
            elif lines:
                yield "\n".join(lines)
                lines = []


def read_blocks(response, count):
    """The first ``count`` blocks of a streaming response."""
    got = []
    for block in blocks(response):
        got.append(block)
        if len(got) == count:
            break
    return got


def next_message(reader):
    """The next block that is not a comment (a heartbeat)."""
    return next(b for b in reader if not b.startswith(":"))


def events(text):
    """Each dispatched event of a complete stream as (id or None, data), comments skipped."""
    found, id, data = [], None, None
    for line in text.split("\n"):
        if not line:
            if data is not None:
                found.append((id, data))
            id, data = None, None
        elif line.startswith("id: "):
            id = line[4:]
        elif line.startswith("data: "):
            data = line[6:] if data is None else f"{data}\n{line[6:]}"
    return found
