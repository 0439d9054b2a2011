"""Publishing events: :class:`EventHub` appends to the log and tells in-process listeners (webhooks).

Publishing never fails a step: an unreachable log is logged (WARNING) and the step goes on. An
event announced ``once`` (a job's end) is appended to the log the first time only, but listeners
hear every announcement: they are idempotent (a webhook delivery is created once per event key), so
an announcement repeated after a worker died between the state change and its webhook still makes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.events.log import ONCE_TTL_S, EventLog
from pipeline.events.model import Event
from pipeline.store.base import InlineEvent

if TYPE_CHECKING:
    from pipeline.store.base import StatusStore
    from pipeline.store.keyvalue import KeyValue

__all__ = ["EventHub", "Listener"]

logger = logging.getLogger(__name__)

#: Called with every event published in this process (with an empty ``id`` for a repeated ``once``).
Listener = Callable[[Event], None]


class EventHub:
    """The log plus the listeners of this process; ``kv``: the shared key-value store, where a batch's
    completion round is kept (:func:`pipeline.events.jobs.reopen_batches`)."""

    def __init__(self, log: EventLog, *, kv: KeyValue | None = None, clock: Callable[[], float] = time.time) -> None:
        self.log = log
        self.kv = kv
        self.clock = clock
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with every event published from now on."""
        self._listeners.append(listener)

    def emit(
        self,
        type: str,
        *,
        job_id: str | None = None,
        batch_id: str | None = None,
        data: dict[str, Any] | None = None,
        once: str | None = None,
    ) -> Event | None:
        """Publish one event; returns it (None when the log could not be written)."""
        event = Event(type=type, ts=self.clock(), job_id=job_id, batch_id=batch_id, data=data or {}, key=once)
        try:
            published = self.log.publish(event, once=once)
        except PipelineError as exc:
            logger.warning("job %s: event %s not published: %s", job_id or "-", type, exc)
            return None
        announced = published if published is not None else event
        self._tell(announced)
        return announced

    def inline(
        self,
        store: StatusStore,
        type: str,
        *,
        job_id: str | None = None,
        batch_id: str | None = None,
        data: dict[str, Any] | None = None,
        once: str | None = None,
        ts: float | None = None,
    ) -> tuple[Event, InlineEvent | None]:
        """An event to publish with a write of ``store``: the event, and what the store's write
        appends to the log (None when the store cannot: publish the event with :meth:`emit_inline`).
        In a step start's event, ``"@attempt@"`` and ``"@batch_id@"`` are filled in by the store."""
        event = Event(
            type=type,
            ts=self.clock() if ts is None else ts,
            job_id=job_id,
            batch_id=batch_id,
            data=data or {},
            key=once,
        )
        target = self.log.inline_stream()
        if target is None or target[0] != store.inline_events_server:
            return event, None
        once_key = f"{target[1]}:once:{once}" if once else ""
        body = InlineEvent(target[1], target[2], event.body(), once_key, ONCE_TTL_S if once else 0)
        return event, body

    def emit_inline(self, event: Event, inline: InlineEvent | None) -> Event | None:
        """After the store's write: tell this process's listeners of ``event`` if the write appended it
        (with its id), else publish it as :meth:`emit` does."""
        if inline is None or inline.id is None:
            return self.emit(event.type, job_id=event.job_id, batch_id=event.batch_id, data=event.data, once=event.key)
        announced = event.model_copy(update={"id": inline.id})
        self._tell(announced)
        return announced

    def _tell(self, event: Event) -> None:
        """Hand ``event`` to every listener of this process; a failing one is logged, never raised."""
        for listener in self._listeners:
            try:
                listener(event)
            except PipelineError as exc:
                logger.warning("job %s: a listener of %s failed: %s", event.job_id or "-", event.type, exc)

    def emit_many(self, events: Iterable[tuple[str, str | None, str | None, dict[str, Any]]]) -> None:
        """Publish several events without ``once`` keys: ``(type, job_id, batch_id, data)`` each."""
        for type, job_id, batch_id, data in events:
            self.emit(type, job_id=job_id, batch_id=batch_id, data=data)

    def close(self) -> None:
        self.log.close()
