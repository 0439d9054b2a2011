"""sdpipe's Redis broker: Dramatiq's, with patient enqueues and consumers that wake on enqueue.

Loaded by :func:`actors.broker.build_broker` in Redis mode only (embedded mode never loads redis-py).

**Wake lists.** Dramatiq's Redis consumer polls an empty queue with a Lua fetch, backing off up to
its idle timeout: a message sent to idle workers waits for the next poll, and idle polling was the
largest part of a worker's CPU per job. Here every enqueue to queue ``Q`` (delay queues too) also
pushes a token onto the list ``<namespace>:__wake__.Q``, in the same round trip as the enqueue (a
pipeline: Dramatiq's dispatch script, RPUSH, LTRIM to :data:`~actors.broker.WAKE_TOKENS_MAX`). A
consumer with room that has found its queue empty (a fetch got nothing, or fewer messages than it
asked for, and those are handed out) blocks on BLPOP of its queue's wake list, on a connection of
its own client (:attr:`PatientRedisBroker.wake_client`), for at most
:attr:`PatientRedisBroker.wake_wait_s`; a token ends the wait at once and the consumer fetches. So
a message costs its consumer a wait and a fetch, where polling cost a fetch, an empty fetch and
the polls of every idle moment.

A token is pushed after its message, on the same connection, so a token older than an empty queue
announces a message somebody already took: just before it blocks, the consumer deletes the wake
list if the queue is empty, or pushes a token if the queue holds messages and the list none (they
came back without an enqueue); one Lua call, pipelined with the BLPOP. A stale token costs at most
one empty fetch. A consumer at capacity takes no token (another process may use it) and only
sleeps, as Dramatiq's does; so does a delay-queue consumer holding retries until they are due (its
loop is what moves them back to their queue: see ``DELAY_QUEUE_POLL_MAX_MS``).

A wait that ends without a token makes the next fetch run Dramatiq's maintenance for sure (the
requeueing of dead workers' messages): an idle worker recovers a dead worker's messages within
one wait of its heartbeat expiring, which polling reached only by chance.

**Continuations with the ack.** When a step's actor returns, Dramatiq's middleware enqueues what
follows it (the pipeline's next step; a retry, or the actor that fails the job when retries run
out), then the worker thread acks (or nacks) the message: two round trips. :class:`HoldEnqueues`
(added after Dramatiq's Pipelines and Retries, so its ``after_process_message`` runs before
theirs) makes the broker hold the
enqueues of that thread from then on, and the consumer's ack sends them and then the ack in one
pipeline, in that order: a crash in between loses at most the ack, so the step is delivered again
and its continuation is never lost (the steps are idempotent; a duplicate drops its continuation).
An ack that cannot reach Redis (a connection error or a timeout) keeps them held: Dramatiq retries
the ack, and with it the enqueues, until Redis is back. An ack that fails otherwise (Dramatiq gives
it up; the message runs again after a restart) keeps them held too: the thread's next message sends
them when it starts. Sends from inside an actor (a fan-out, a requeue) go at once, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis, dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
from dramatiq.middleware import Middleware
from redis.exceptions import NoScriptError

from actors.broker import (
    CONSUMER_POLL_MAX_MS,
    DELAY_QUEUE_POLL_MAX_MS,
    IDLE_POLL_FIRST_EXPONENT,
    WAKE_TOKENS_MAX,
    WAKE_WAIT_MAX_S,
)
from pipeline.connections import outage_retry

__all__ = ["HoldEnqueues", "PatientRedisBroker", "WakingConsumer", "wake_key", "wake_wait_s"]

logger = logging.getLogger(__name__)

#: An argument of a Redis command.
_Arg = str | bytes | int | float
#: An enqueue held until the ack of the message it follows: queue, Redis message id, encoded message.
_Held = tuple[str, str, bytes]
#: Redis could not be reached or did not answer in time: a broker connection error to Dramatiq (which
#: retries an ack until Redis is back, and restarts a consumer). redis-py's TimeoutError (a connect
#: or reply timeout: a partition, a failover) is not a ConnectionError.
_NETWORK_ERRORS = (redis.ConnectionError, redis.TimeoutError)

#: Run just before a consumer blocks on its wake list. KEYS[1] the queue's list of waiting ids,
#: KEYS[2] its wake list. An empty queue has nothing to wake for: its tokens are stale. A queue with
#: messages but no token (put back by another process's maintenance, or tokens trimmed off) gets one,
#: so the wait ends at once and the consumer fetches them.
_PREPARE_WAIT = """
if redis.call('llen', KEYS[1]) == 0 then
    return redis.call('del', KEYS[2])
end
if redis.call('llen', KEYS[2]) == 0 then
    redis.call('rpush', KEYS[2], '1')
end
return 0
"""


def wake_key(namespace: str, queue_name: str) -> str:
    """The wake list of ``queue_name`` (``<namespace>:__wake__.<queue>``, beside Dramatiq's ``__acks__``)."""
    return f"{namespace}:__wake__.{queue_name}"


def wake_wait_s(heartbeat_timeout_ms: int) -> float:
    """How long an idle consumer blocks: :data:`WAKE_WAIT_MAX_S`, or a quarter of the heartbeat timeout
    if that is shorter (each wait ends with a fetch, which is what refreshes the process's heartbeat)."""
    return min(WAKE_WAIT_MAX_S, heartbeat_timeout_ms / 4000)


class WakingConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, which blocks on its queue's wake list instead of polling an empty queue."""

    broker: PatientRedisBroker

    def __init__(self, broker: PatientRedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self.is_delay_queue = queue_name == dq_name(queue_name)
        #: The last wake wait ended without a token: the next fetch runs maintenance.
        self.maintain_next = False
        #: The last fetch emptied the queue (it got fewer messages than it asked for): once those are
        #: handed out, wait for a token rather than fetch again (one round trip less per message).
        self.drained = False

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:  # as Dramatiq's consumer does (its #266)
                        logger.warning("None in the message cache of queue %r", self.queue_name)
                        continue
                    # after a message, an at-capacity pause starts at 20-40 ms (IDLE_POLL_FIRST_EXPONENT)
                    self.misses = IDLE_POLL_FIRST_EXPONENT
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                room = self.prefetch - self.outstanding_message_count
                if room > 0:
                    may_wait = not self.is_delay_queue or self.outstanding_message_count == 0
                    if not (self.drained and may_wait):
                        self.message_cache = self.broker.fetch(self.queue_name, room, maintain=self.maintain_next)
                        self.maintain_next = False
                        self.drained = len(self.message_cache) < room
                        if self.message_cache:
                            continue
                    if may_wait:
                        self.maintain_next = not self.broker.wait_for_wake(self.queue_name)
                        self.drained = False
                        return None
                # At capacity, or a delay queue holding retries until they are due: take no token, sleep.
                self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                time.sleep(backoff_ms / 1000)
                return None
        except _NETWORK_ERRORS as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def ack(self, message: MessageProxy) -> None:
        self._settle("ack", message)

    def nack(self, message: MessageProxy) -> None:
        self._settle("nack", message)

    def _settle(self, command: str, message: MessageProxy) -> None:
        """Ack or nack ``message``, after the enqueues this thread held since it ended, in one round trip."""
        held = self.broker.take_held()
        if not held:  # Dramatiq's own ack or nack
            (super().ack if command == "ack" else super().nack)(message)  # type: ignore[no-untyped-call]
            return
        try:
            self.broker.settle(command, self.queue_name, message.options["redis_message_id"], held)
        except _NETWORK_ERRORS as exc:
            self.broker.hold(held)  # Dramatiq retries the ack until Redis is back: they go with it
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        except BaseException:
            # Dramatiq gives up on this ack (the message runs again after a restart); what it held
            # is not dropped: the thread's next message sends it (HoldEnqueues).
            self.broker.hold(held)
            raise
        finally:
            self.queued_message_ids.discard(message.message_id)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Put prefetched messages back (a stopping worker), with a token each for idle consumers."""
        batch = list(messages)  # a generator, from ConsumerThread.close
        super().requeue(batch)  # type: ignore[no-untyped-call]
        if batch:
            self.broker.wake(self.queue_name, len(batch))


class PatientRedisBroker(RedisBroker):
    """A RedisBroker whose enqueue waits out a Redis outage instead of dropping the message and
    pushes a wake token, and whose consumers are :class:`WakingConsumer`."""

    def __init__(self, *, enqueue_patience_s: float, wake_client: redis.Redis, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self.enqueue_patience_s = enqueue_patience_s
        self._enqueue_retry = outage_retry(enqueue_patience_s)
        #: Client of the blocking waits: its reply timeout allows for :attr:`wake_wait_s`.
        self.wake_client = wake_client
        self.wake_wait_s = wake_wait_s(self.heartbeat_timeout)
        self._prepare_wait = wake_client.register_script(_PREPARE_WAIT)
        #: Per thread: the enqueues held until its message's ack (None: enqueues go at once).
        self._held = threading.local()

    @property
    def consumer_class(self) -> type[WakingConsumer]:
        return WakingConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> dramatiq.Consumer:
        idle_poll_ms = DELAY_QUEUE_POLL_MAX_MS if queue_name == dq_name(queue_name) else CONSUMER_POLL_MAX_MS
        consumer: dramatiq.Consumer = super().consume(queue_name, prefetch, min(timeout, idle_poll_ms))
        return consumer

    def close(self) -> None:
        self.wake_client.close()
        super().close()

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        # The Retry's count bounds the attempts by their pauses; the deadline also bounds them when
        # each attempt is slow (a server that drops packets costs a connect timeout per attempt).
        deadline = time.monotonic() + self.enqueue_patience_s
        retries = self._enqueue_retry.get_retries()
        failures = 0

        def failed(exc: Exception) -> None:
            nonlocal failures
            failures += 1
            if failures > retries:
                return  # the Retry raises exc itself
            if time.monotonic() >= deadline:
                raise exc
            logger.warning(
                "cannot enqueue %s of message %s (%s); retry %d of %d",
                message.actor_name,
                message.message_id,
                exc,
                failures,
                retries,
            )

        sent: dramatiq.Message[Any] = self._enqueue_retry.call_with_retry(
            lambda: super(PatientRedisBroker, self).enqueue(message, delay=delay), failed
        )
        return sent

    def _dispatch_args(self, command: str, queue_name: str, *args: _Arg, maintain: bool = False) -> list[_Arg]:
        """The arguments of Dramatiq's dispatch script, as its ``RedisBroker._dispatch`` builds them."""
        return [
            command,
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            1 if maintain else self._should_do_maintenance(command),
            self._max_unpack_size(),  # type: ignore[no-untyped-call]
            *args,
        ]

    def hold(self, held: list[_Held] | None = None) -> None:
        """Hold this thread's enqueues (after ``held``) until :meth:`take_held` (its message's ack)."""
        self._held.enqueues = list(held or ())

    def take_held(self) -> list[_Held]:
        """The enqueues this thread held; from now on its enqueues go at once."""
        held: list[_Held] | None = getattr(self._held, "enqueues", None)
        self._held.enqueues = None
        return held or []

    def settle(self, command: str, queue_name: str, redis_message_id: str, held: list[_Held]) -> None:
        """The ``held`` enqueues (each with its wake token), then ``command`` ("ack" or "nack") of the
        message ``redis_message_id`` of ``queue_name``: one round trip, in that order."""
        dispatch = self.scripts["dispatch"]
        pipe = self.client.pipeline(transaction=False)
        for queue, message_id, data in held:
            self._pipe_enqueue(pipe, queue, message_id, data)
        pipe.evalsha(dispatch.sha, 1, self.namespace, *self._dispatch_args(command, queue_name, redis_message_id))
        results = pipe.execute(raise_on_error=False)
        if any(isinstance(result, NoScriptError) for result in results):
            # Redis restarted or flushed its scripts, so none of the calls ran: one by one, loading it
            for queue, message_id, data in held:
                self.do_enqueue(queue, message_id, data)
            dispatch(keys=[self.namespace], args=self._dispatch_args(command, queue_name, redis_message_id))
            return
        _raise_first_error(results)

    def do_enqueue(self, queue_name: str, message_id: str, data: bytes) -> None:
        """Dramatiq's enqueue, and a wake token for ``queue_name``, in one round trip (held instead
        while this thread's message waits for its ack: :class:`HoldEnqueues`)."""
        held: list[_Held] | None = getattr(self._held, "enqueues", None)
        if held is not None:
            held.append((queue_name, message_id, data))
            return
        pipe = self.client.pipeline(transaction=False)
        self._pipe_enqueue(pipe, queue_name, message_id, data)
        enqueued, *_ = results = pipe.execute(raise_on_error=False)
        if isinstance(enqueued, NoScriptError):  # Redis restarted or flushed its scripts: load it, and again
            self.scripts["dispatch"](
                keys=[self.namespace], args=self._dispatch_args("enqueue", queue_name, message_id, data)
            )
            self.wake(queue_name, 1)
            return
        _raise_first_error(results)

    def _pipe_enqueue(self, pipe: Any, queue_name: str, message_id: str, data: bytes) -> None:
        """Add Dramatiq's enqueue of a message and a wake token for ``queue_name`` to ``pipe``."""
        args = self._dispatch_args("enqueue", queue_name, message_id, data)
        pipe.evalsha(self.scripts["dispatch"].sha, 1, self.namespace, *args)
        self._push_tokens(pipe, queue_name, 1)

    def fetch(self, queue_name: str, count: int, *, maintain: bool) -> list[bytes]:
        """Up to ``count`` messages of ``queue_name`` (Dramatiq's fetch); ``maintain``: run maintenance."""
        messages: list[bytes] = self.scripts["dispatch"](
            keys=[self.namespace], args=self._dispatch_args("fetch", queue_name, count, maintain=maintain)
        )
        return messages

    def wait_for_wake(self, queue_name: str) -> bool:
        """Block until a token for ``queue_name`` comes or :attr:`wake_wait_s` passes; True if one came.

        First the wake list is deleted if the queue is empty (its tokens announce messages already
        taken), or given a token if the queue holds messages and it has none (the wait ends at once).
        """
        key = wake_key(self.namespace, queue_name)
        pipe = self.wake_client.pipeline(transaction=False)
        pipe.evalsha(self._prepare_wait.sha, 2, f"{self.namespace}:{queue_name}", key)
        # whole seconds as an integer: Redis before 6.0 takes no fractional timeout
        wait_s = self.wake_wait_s
        pipe.blpop([key], timeout=int(wait_s) if wait_s == int(wait_s) else wait_s)
        prepared, token = pipe.execute(raise_on_error=False)
        if isinstance(prepared, NoScriptError):  # loaded for the next wait; this one was not prepared
            self.wake_client.script_load(_PREPARE_WAIT)
        elif isinstance(prepared, Exception):
            raise prepared
        if isinstance(token, Exception):
            raise token
        return token is not None

    def wake(self, queue_name: str, count: int) -> None:
        """Push ``count`` tokens for ``queue_name`` (messages that came back without an enqueue).

        A token that cannot be pushed is only logged: consumers find the messages at their next fetch.
        """
        pipe = self.client.pipeline(transaction=False)
        self._push_tokens(pipe, queue_name, count)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            logger.warning("no wake token for %d messages of queue %r: %s", count, queue_name, exc)

    def _push_tokens(self, pipe: Any, queue_name: str, count: int) -> None:
        key = wake_key(self.namespace, queue_name)
        pipe.rpush(key, *["1"] * min(count, WAKE_TOKENS_MAX))
        pipe.ltrim(key, -WAKE_TOKENS_MAX, -1)


def _raise_first_error(results: Iterable[Any]) -> None:
    """Raise the first error among a pipeline's results (run with ``raise_on_error=False``)."""
    for result in results:
        if isinstance(result, Exception):
            raise result


class HoldEnqueues(Middleware):
    """Makes a :class:`PatientRedisBroker` hold what the other middleware enqueue after a message
    (the next step, a retry) until the message's ack, which sends them first (see the module's
    docstring). Added after Pipelines and Retries: its ``after_process_message`` runs before theirs.
    What a thread still holds when it takes its next message (an ack that failed) is sent then."""

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if isinstance(broker, PatientRedisBroker):
            for queue_name, message_id, data in broker.take_held():  # never left held: sent now
                broker.do_enqueue(queue_name, message_id, data)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if isinstance(broker, PatientRedisBroker):
            broker.hold()
