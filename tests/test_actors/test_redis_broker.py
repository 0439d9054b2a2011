"""The Redis broker's wake lists, on a private redis-server: idle consumers block until an enqueue wakes them.

Redis counts every command, those run inside Dramatiq's dispatch script too (``INFO commandstats``):
each dispatch call (a fetch, an enqueue, an ack) refreshes the process's heartbeat with one ZADD,
so ZADD calls count the broker's calls to Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dramatiq
import pytest
import redis
from dramatiq.common import dq_name
from dramatiq.errors import ConnectionClosed

from actors.broker import BROKER_NAMESPACE, WAKE_TOKENS_MAX, WAKE_WAIT_MAX_S, step_middleware
from actors.redis_broker import HoldEnqueues, PatientRedisBroker, WakingConsumer, wake_key, wake_wait_s
from pipeline.connections import RedisSettings, create_client
from tests.helpers import wait_until

QUEUE = "wake-test"


def _broker(
    url: str, *, wait_s: float | None = None, heartbeat_timeout_ms: int = 20_000, hold: bool = False
) -> PatientRedisBroker:
    """A broker on ``url``; ``wait_s``: its consumers' wake wait instead of the default; ``hold``: with
    :class:`HoldEnqueues` last, as ``build_broker`` makes it."""
    redis_settings = RedisSettings(url=url)
    broker = PatientRedisBroker(
        enqueue_patience_s=1.0,
        client=create_client(redis_settings),
        wake_client=create_client(redis_settings, blocking_s=max(wait_s or 0.0, WAKE_WAIT_MAX_S)),
        namespace=BROKER_NAMESPACE,
        heartbeat_timeout=heartbeat_timeout_ms,
        middleware=[*step_middleware(), HoldEnqueues()] if hold else step_middleware(),
    )
    if wait_s is not None:
        broker.wake_wait_s = wait_s
    broker.declare_queue(QUEUE)
    return broker


def _calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _message(n: int) -> dramatiq.Message[object]:
    return dramatiq.Message(queue_name=QUEUE, actor_name="noop", args=(n,), kwargs={}, options={})


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_redis_broker_idle_worker_sleeps_until_an_enqueue_wakes_it(redis_url: str, client: redis.Redis) -> None:
    # Given a worker whose idle consumers would fetch again only after a minute without a wake token
    broker = _broker(redis_url, wait_s=60.0)
    done: list[int] = []

    def record(n: int) -> None:
        done.append(n)

    dramatiq.actor(broker=broker, actor_name="record", queue_name=QUEUE)(record)
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        # When it idles (each consumer fetches once at start: the queue and its delay queue)
        assert wait_until(lambda: _calls(client, "blpop") >= 2, timeout_s=10)
        client.config_resetstat()
        threading.Event().wait(1.0)
        idle_calls = _calls(client, "zadd")
        # And a message is sent
        broker.enqueue(_message(1).copy(actor_name="record"))
        # Then it is processed long before the fallback fetch: the token woke the consumer
        assert wait_until(lambda: done == [1], timeout_s=20)
    finally:
        for thread in worker.consumers.values():
            thread.stop()
        for queue in (QUEUE, dq_name(QUEUE)):  # end the consumers' waits
            broker.wake(queue, 1)
        worker.stop(timeout=10_000)
        broker.close()
    # Polling every 100 ms, 1 s idle would have been about 10 fetches of the queue and 2-4 of its delay queue
    assert idle_calls == 0


def test_redis_broker_worker_stops_within_a_wake_wait(redis_url: str) -> None:
    # Given an idle worker with the default wait (its consumers block on their wake lists)
    broker = _broker(redis_url)
    dramatiq.actor(broker=broker, actor_name="noop", queue_name=QUEUE)(lambda n: None)
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=1, worker_timeout=100)
    worker.start()
    threading.Event().wait(0.5)
    # When it is stopped, then every consumer thread has ended (none blocked beyond its wait)
    worker.stop(timeout=int(10 * WAKE_WAIT_MAX_S * 1000))
    consumers = list(worker.consumers.values())
    broker.close()
    assert consumers and not any(thread.is_alive() for thread in consumers)


def test_redis_broker_enqueue_pushes_one_token_per_message_up_to_the_cap(redis_url: str, client: redis.Redis) -> None:
    broker = _broker(redis_url)
    try:
        for n in range(WAKE_TOKENS_MAX + 20):
            broker.enqueue(_message(n))
        broker.enqueue(_message(0), delay=60_000)
    finally:
        broker.close()
    assert client.llen(f"{BROKER_NAMESPACE}:{QUEUE}") == WAKE_TOKENS_MAX + 20  # every message is queued
    assert client.llen(wake_key(BROKER_NAMESPACE, QUEUE)) == WAKE_TOKENS_MAX
    assert client.llen(wake_key(BROKER_NAMESPACE, dq_name(QUEUE))) == 1  # delay queues wake too


def test_redis_broker_consumer_at_capacity_leaves_the_tokens_and_an_idle_one_clears_stale_ones(
    redis_url: str, client: redis.Redis
) -> None:
    wake = wake_key(BROKER_NAMESPACE, QUEUE)
    first, second = _broker(redis_url, wait_s=0.1), _broker(redis_url, wait_s=0.1)
    try:
        first.enqueue(_message(1))
        first.enqueue(_message(2))
        one = first.consume(QUEUE, prefetch=1)
        assert isinstance(one, WakingConsumer)
        # Given a consumer holding as many messages as it may (prefetch 1)
        held = next(one)
        assert held is not None and held.args == (1,)
        # When it looks again, then it takes no token (another process may use them)
        assert next(one) is None
        assert client.llen(wake) == 2
        # And another process's consumer takes the other message
        other = second.consume(QUEUE, prefetch=1)
        taken = next(other)
        assert taken is not None and taken.args == (2,)
        other.ack(taken)
        # When that consumer finds the queue empty, then the tokens left (both stale) are gone
        assert next(other) is None
        assert client.llen(wake) == 0
        one.ack(held)
    finally:
        first.close()
        second.close()


def test_redis_broker_idle_consumer_recovers_a_dead_workers_message_after_a_timed_out_wait(
    redis_url: str, client: redis.Redis
) -> None:
    # Given a worker process that fetched a message and died (it never sends anything again)
    dead = _broker(redis_url, heartbeat_timeout_ms=1000)
    dead.enqueue(_message(7))
    held = next(dead.consume(QUEUE, prefetch=1))
    assert held is not None
    # And an idle consumer whose calls never run maintenance by chance
    alive = _broker(redis_url, heartbeat_timeout_ms=1000)
    alive.maintenance_chance = 0
    assert alive.wake_wait_s == wake_wait_s(1000) == 0.25
    consumer = alive.consume(QUEUE, prefetch=1)
    try:
        # When it keeps waiting (no token: the message is in the dead worker's hands)
        recovered = None
        for _ in range(200):
            recovered = next(consumer)
            if recovered is not None:
                break
        # Then a fetch after a timed-out wait ran maintenance and handed it the message
        assert recovered is not None and recovered.args == (7,)
    finally:
        dead.close()
        alive.close()


def test_redis_broker_wait_ends_at_once_for_messages_that_came_back_without_a_token(
    redis_url: str, client: redis.Redis
) -> None:
    # Given a waiting message whose token is gone (as when maintenance puts a dead worker's message back)
    broker = _broker(redis_url, wait_s=30.0)
    try:
        broker.enqueue(_message(3))
        client.delete(wake_key(BROKER_NAMESPACE, QUEUE))
        # When a consumer is about to wait, then its wait ends with a token instead of running out
        assert broker.wait_for_wake(QUEUE) is True
        consumer = broker.consume(QUEUE, prefetch=2)
        fetched = next(consumer)
        assert fetched is not None and fetched.args == (3,)
        consumer.ack(fetched)
    finally:
        broker.close()


def test_redis_broker_next_step_goes_with_the_ack_of_the_step_before(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker whose acks are recorded with the enqueues that go with them
    broker = _broker(redis_url, wait_s=0.2, hold=True)
    settled: list[tuple[str, list[str]]] = []
    real = broker.settle

    def recording(command: str, queue_name: str, redis_message_id: str, held: list[tuple[str, str, bytes]]) -> None:
        settled.append((command, [queue for queue, _, _ in held]))
        real(command, queue_name, redis_message_id, held)

    monkeypatch.setattr(broker, "settle", recording)
    done: list[str] = []
    first = dramatiq.actor(broker=broker, actor_name="first", queue_name=QUEUE)(lambda: done.append("first"))
    second = dramatiq.actor(broker=broker, actor_name="second", queue_name=QUEUE)(lambda: done.append("second"))
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        # When a pipeline of two steps runs
        steps = [first.message_with_options(pipe_ignore=True), second.message_with_options(pipe_ignore=True)]
        dramatiq.pipeline(steps, broker=broker).run()  # type: ignore[no-untyped-call]
        assert wait_until(lambda: done == ["first", "second"], timeout_s=20)
    finally:
        worker.stop(timeout=10_000)
        broker.close()
    # Then the second step was sent with the first one's ack (one round trip), the last ack alone
    assert settled == [("ack", [QUEUE])]


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (redis.ConnectionError("Redis went away"), ConnectionClosed),
        (redis.TimeoutError("Timeout connecting to server"), ConnectionClosed),  # a partition, a failover
        (redis.ResponseError("OOM command not allowed"), redis.ResponseError),  # Dramatiq gives up the ack
    ],
)
def test_redis_broker_held_enqueues_wait_out_an_ack_that_cannot_reach_redis(
    redis_url: str,
    client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    error: redis.RedisError,
    raised: type[Exception],
) -> None:
    broker = _broker(redis_url)
    try:
        broker.enqueue(_message(1))
        consumer = broker.consume(QUEUE, prefetch=1)
        message = next(consumer)
        assert message is not None
        # Given the step's continuation held for its ack
        broker.hold()
        broker.enqueue(_message(2))
        assert client.llen(f"{BROKER_NAMESPACE}:{QUEUE}") == 0
        # When the ack cannot reach Redis (Dramatiq retries a broker connection error's ack)
        real = broker.settle

        def unreachable(*args: object) -> None:
            raise error

        monkeypatch.setattr(broker, "settle", unreachable)
        with pytest.raises(raised):
            consumer.ack(message)
        # Then the continuation is still held: the next ack, once Redis answers, sends it, then the ack
        monkeypatch.setattr(broker, "settle", real)
        consumer.ack(message)
        assert client.llen(f"{BROKER_NAMESPACE}:{QUEUE}") == 1
        assert not any(client.smembers(key) for key in client.keys(f"{BROKER_NAMESPACE}:__acks__.*"))
        assert broker.take_held() == []  # and this thread's enqueues go at once again
    finally:
        broker.close()
