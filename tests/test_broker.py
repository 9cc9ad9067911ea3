"""broker.py on its own: both brokers, same behaviour (RedisBroker against a real redis-server)."""

import json
import threading
import time

import pytest
from servers import wait_until

from broker import BrokerUnavailable, MemoryBroker, RedisBroker, parse_id

HEARTBEAT = 0.05


@pytest.fixture
def redis_broker(redis_server):
    """Build RedisBrokers on a real redis-server; stop their readers after the test."""
    built = []

    def build(stream="sse:broadcast", history=1000, queue_size=100):
        built.append(RedisBroker(redis_server.url, stream, history, queue_size))
        return built[-1]

    yield build
    for broker in built:
        broker.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def make_broker(request):
    """Build brokers of one kind; the Redis ones share a real redis-server."""
    if request.param == "memory":
        yield lambda history=1000, queue_size=100: MemoryBroker(history, queue_size)
    else:
        build = request.getfixturevalue("redis_broker")
        yield lambda history=1000, queue_size=100: build("test:broadcast", history, queue_size)


class Watched:
    """A subscription, and the Event its wake-ups set (as a sleeping stream would be woken)."""

    def __init__(self, broker, last_event_id):
        self.woken = threading.Event()
        self.subscription = broker.subscribe(last_event_id, wake=self.woken.set)

    def __getattr__(self, name):
        return getattr(self.subscription, name)

    def __enter__(self):
        return self.subscription.__enter__()

    def __exit__(self, *exc_info):
        return self.subscription.__exit__(*exc_info)


def subscribe(broker, last_event_id=None):
    return Watched(broker, last_event_id)


def take(subscription, count, timeout=5.0):
    """The next ``count`` messages of a subscription, each as text, waiting for them."""
    texts = []
    deadline = time.monotonic() + timeout
    while len(texts) < count:
        chunk = subscription.take(max_bytes=1)  # one message per take
        if chunk:
            texts.append(chunk.decode())
            continue
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(texts)} of {count} messages: {texts}")
        subscription.woken.wait(HEARTBEAT)
        subscription.woken.clear()
    return texts


def ids(texts):
    return [line[4:] for text in texts for line in text.split("\n") if line.startswith("id: ")]


def test_subscribers_get_every_message_in_order_with_its_event_name(make_broker):
    broker = make_broker()
    first, second = subscribe(broker), subscribe(broker)
    sent = [broker.publish(json.dumps(n), event="news" if n % 2 else None) for n in range(5)]
    for subscription in (first, second):
        texts = take(subscription, 5)
        assert ids(texts) == sent
        assert texts[1] == f'event: news\nid: {sent[1]}\ndata: 1\n\n'
        assert texts[0] == f'id: {sent[0]}\ndata: 0\n\n'


def test_ids_rise_like_redis_stream_ids(make_broker):
    broker = make_broker()
    keys = [parse_id(broker.publish("x")) for _ in range(50)]
    assert None not in keys
    assert keys == sorted(set(keys))


def test_a_new_subscriber_gets_only_what_comes_after_it(make_broker):
    broker = make_broker()
    broker.publish('"before"')
    subscription = subscribe(broker)
    after = broker.publish('"after"')
    assert ids(take(subscription, 1)) == [after]


def test_reconnecting_with_a_kept_id_replays_exactly_what_was_missed(make_broker):
    broker = make_broker(history=5)
    sent = [broker.publish(str(n)) for n in range(4)]
    subscription = subscribe(broker, last_event_id=sent[1])
    later = broker.publish("4")
    assert ids(take(subscription, 3)) == [sent[2], sent[3], later]


def test_reconnecting_with_the_newest_id_replays_nothing(make_broker):
    broker = make_broker()
    newest = [broker.publish(str(n)) for n in range(3)][-1]
    subscription = subscribe(broker, last_event_id=newest)
    later = broker.publish("3")
    assert ids(take(subscription, 1)) == [later]


def test_an_aged_out_id_gets_a_reset_then_the_kept_history(make_broker):
    broker = make_broker(history=3)
    sent = [broker.publish(str(n)) for n in range(6)]
    subscription = subscribe(broker, last_event_id=sent[0])
    reset, *kept = take(subscription, 4)
    assert reset.startswith("event: reset\ndata: ")
    assert "id:" not in reset  # a client dropping now still holds its old id
    assert json.loads(reset.split("data: ")[1]) == {
        "reason": "aged-out", "last_event_id": sent[0], "history_from": sent[3]}
    assert ids(kept) == sent[3:]


@pytest.mark.parametrize("last_event_id", ["garbage", "42", "99999999999999-0", "1-2-3",
                                           "18446744073709551616-0"])
def test_an_unknown_id_gets_a_reset_then_the_kept_history(make_broker, last_event_id):
    broker = make_broker(history=3)
    sent = [broker.publish(str(n)) for n in range(2)]
    subscription = subscribe(broker, last_event_id=last_event_id)
    reset, *kept = take(subscription, 3)
    notice = json.loads(reset.split("data: ")[1])
    assert notice["reason"] == "unknown-id"
    assert notice["history_from"] == sent[0]
    assert ids(kept) == sent


def test_a_subscriber_a_whole_queue_behind_is_dropped_and_the_others_are_not(make_broker):
    broker = make_broker(queue_size=3)
    slow, fast = subscribe(broker), subscribe(broker)
    sent = []
    for n in range(6):
        sent.append(broker.publish(str(n)))
        assert ids(take(fast, 1)) == [sent[-1]]  # the fast one reads each as it comes
    wait_until(lambda: broker.subscribers == 1, timeout=5, what="the slow subscriber dropped")
    # Its queue was emptied when it was dropped, and it was woken to end its stream.
    assert slow.dropped and slow.woken.is_set() and slow.take() == b""
    assert not fast.dropped


def test_a_message_is_formatted_once_for_every_subscriber(make_broker):
    broker = make_broker()
    subscriptions = [subscribe(broker) for _ in range(3)]
    broker.publish('"shared"')
    for subscription in subscriptions:
        wait_until(lambda s=subscription: s.pending, timeout=5, what="the message")
    chunks = [s.take() for s in subscriptions]
    assert chunks[0] is chunks[1] is chunks[2]  # the same bytes object, not three copies


def test_messages_waiting_together_are_taken_as_one_chunk_in_order(make_broker):
    broker = make_broker()
    subscription = subscribe(broker)
    sent = [broker.publish(str(n)) for n in range(3)]
    wait_until(lambda: subscription.pending, timeout=5, what="the messages to arrive")
    wait_until(lambda: len(subscription._queue) == 3, timeout=5, what="all three")
    chunk = subscription.take().decode()
    assert ids([chunk]) == sent  # one write for the burst
    assert subscription.take() == b"" and not subscription.pending


def test_a_subscription_used_as_a_context_manager_unsubscribes(make_broker):
    broker = make_broker()
    with subscribe(broker):
        assert broker.subscribers == 1
    assert broker.subscribers == 0


def test_unsubscribe_stops_delivery_and_the_count(make_broker):
    broker = make_broker()
    subscription = subscribe(broker)
    assert broker.subscribers == 1
    broker.unsubscribe(subscription.subscription)
    assert broker.subscribers == 0
    broker.publish("1")  # nobody to deliver to; must not fail


def test_redis_broker_connects_on_first_use_and_reads_with_one_connection(redis_server,
                                                                          redis_broker):
    import redis

    watcher = redis.Redis.from_url(redis_server.url)
    baseline = len(watcher.client_list())
    broker = redis_broker()
    assert len(watcher.client_list()) == baseline  # creating it opened nothing
    subscriptions = [subscribe(broker) for _ in range(50)]
    broker.publish('"x"')
    for subscription in subscriptions:
        take(subscription, 1)
    # One reader, plus one pooled connection that started it and published.
    assert len(watcher.client_list()) - baseline <= 2


def test_redis_broker_raises_broker_unavailable_while_redis_is_down(redis_server, redis_broker):
    broker = redis_broker()
    kept = broker.publish('"kept"')
    redis_server.stop()
    with pytest.raises(BrokerUnavailable):
        broker.publish('"lost"')
    with pytest.raises(BrokerUnavailable):
        subscribe(broker, last_event_id=kept)  # the replay needs Redis
    assert broker.subscribers == 0  # the failed one was not left behind


def test_redis_reader_survives_a_restart_and_delivers_what_follows(redis_server, redis_broker):
    broker = redis_broker()
    subscription = subscribe(broker)
    first = broker.publish('"first"')
    assert ids(take(subscription, 1)) == [first]
    redis_server.stop()
    redis_server.start()  # same port, empty, like a crash without persistence
    after = wait_until(lambda: _try_publish(broker, '"after"'), timeout=10, what="publish")
    assert ids(take(subscription, 1, timeout=10)) == [after]


def _try_publish(broker, data):
    try:
        return broker.publish(data)
    except BrokerUnavailable:
        return None


def test_redis_replays_share_one_copy_of_each_entry_however_many_subscribe(redis_broker):
    broker = redis_broker(history=300)
    sent = [broker.publish(f'"{n}"') for n in range(300)]
    subscriptions = [subscribe(broker, last_event_id="unknown") for _ in range(50)]
    backlogs = [list(subscription._backlog)[1:] for subscription in subscriptions]  # after reset
    assert ids(t.decode() for t in backlogs[0]) == sent
    # 50 subscribers cost one copy of the history, not 50.
    assert len({id(text) for backlog in backlogs for text in backlog}) == len(sent)
    live = broker.publish('"live"')
    first, second = subscriptions[:2]
    wait_until(lambda: first._queue and second._queue, timeout=5, what="the live message")
    assert first._queue[-1][1] is second._queue[-1][1]  # the live message is shared too
    assert ids(take(first, 302)[1:]) == [*sent, live]  # reset, history, then live


@pytest.mark.parametrize("last_event_id", ["unknown", "known"])
def test_redis_replay_reads_the_history_in_pages_without_a_gap_or_duplicate(
        redis_broker, monkeypatch, last_event_id):
    from broker import READ_BATCH

    broker = redis_broker(history=3 * READ_BATCH)
    sent = [broker.publish(str(n)) for n in range(int(2.5 * READ_BATCH))]
    replies = []
    xrange = broker._redis.xrange
    monkeypatch.setattr(broker._redis, "xrange",
                        lambda *args, **kwargs: replies.append(xrange(*args, **kwargs))
                        or replies[-1])
    if last_event_id == "known":
        subscription, expected = subscribe(broker, last_event_id=sent[10]), sent[11:]
    else:
        subscription, expected = subscribe(broker, last_event_id="unknown"), sent
    texts = [text.decode() for text in subscription._backlog
             if not text.startswith(b"event: reset")]
    assert ids(texts) == expected  # across page boundaries: in order, none twice, none missing
    assert len(replies) >= 3
    assert max(len(reply) for reply in replies) <= READ_BATCH  # never the whole history at once


def flood_after_the_first_page(broker, monkeypatch, sent, count):
    """Make the first XRANGE of a replay publish ``count`` more messages once it has read."""
    xrange = broker._redis.xrange

    def xrange_then_publish_a_flood(*args, **kwargs):
        reply = xrange(*args, **kwargs)
        monkeypatch.setattr(broker._redis, "xrange", xrange)  # only after the first page
        sent.extend(broker.publish(f"flood {n}") for n in range(count))
        return reply

    monkeypatch.setattr(broker._redis, "xrange", xrange_then_publish_a_flood)


def test_redis_replay_never_skips_what_was_trimmed_while_it_read_the_pages(
        redis_broker, monkeypatch):
    from broker import READ_BATCH

    broker = redis_broker(history=2 * READ_BATCH)
    sent = [broker.publish(str(n)) for n in range(2 * READ_BATCH)]
    # The first page was read, then the rest of the history it was reading was trimmed.
    flood_after_the_first_page(broker, monkeypatch, sent, 2 * READ_BATCH)
    backlog = [text.decode() for text in subscribe(broker, last_event_id=sent[0])._backlog]
    if backlog[0].startswith("event: reset"):  # what it missed is gone: it is told so
        start = json.loads(backlog.pop(0).split("data: ")[1])["history_from"]
    else:
        start = sent[1]
    got = ids(backlog)
    assert got == sent[sent.index(start):][:len(got)]  # from there on, nothing left out


def test_a_whole_redis_history_trimmed_while_read_is_refused_not_cut_short(
        redis_broker, monkeypatch):
    from broker import READ_BATCH

    broker = redis_broker(history=2 * READ_BATCH)
    sent = [broker.publish(str(n)) for n in range(2 * READ_BATCH)]
    flood_after_the_first_page(broker, monkeypatch, sent, 2 * READ_BATCH)
    with pytest.raises(BrokerUnavailable):  # the client retries, as when Redis is down
        subscribe(broker, last_event_id="unknown")
    assert broker.subscribers == 0


# Entries another writer put in the stream (redis-cli, a script): not UTF-8, or not an event.
NOT_PUBLISHED = [{b"data": b"\xff"}, {b"data": b"ok", b"event": b"\xfe"}, {b"\xff": b"ok"},
                 {b"data": b"ok", b"event": b"a\nb"}]


@pytest.mark.parametrize("fields", NOT_PUBLISHED)
def test_a_redis_entry_not_written_by_publish_is_skipped_by_replay(
        redis_server, redis_broker, fields):
    import redis

    raw = redis.Redis.from_url(redis_server.url)  # bytes in, bytes out: anything can be written
    broker = redis_broker()
    before = broker.publish('"before"')
    raw.xadd("sse:broadcast", fields)
    after = broker.publish('"after"')
    replayed = subscribe(broker, last_event_id=before)
    reset, *kept = take(subscribe(broker, last_event_id="unknown"), 3)
    assert ids(kept) == [before, after]
    later = broker.publish('"later"')
    assert ids(take(replayed, 2)) == [after, later]


@pytest.mark.parametrize("fields", NOT_PUBLISHED)
def test_a_redis_entry_not_written_by_publish_is_skipped_by_the_reader_which_reads_on(
        redis_server, redis_broker, fields):
    import redis

    raw = redis.Redis.from_url(redis_server.url)
    broker = redis_broker()
    first, second = subscribe(broker), subscribe(broker)
    for n in range(2):
        raw.xadd("sse:broadcast", fields)
        good = broker.publish(str(n))
        assert ids(take(first, 1)) == [good]
        assert ids(take(second, 1)) == [good]
