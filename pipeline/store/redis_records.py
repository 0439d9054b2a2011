"""Batch and schedule records in Redis; :class:`~pipeline.store.redis.RedisStatusStore` delegates to this.

Key layout under the namespace ``ns`` (see :mod:`pipeline.store.redis` for the jobs' keys)::

    ns:batchrec:<batch_id>                  string  BatchRecord JSON (rows and their job ids)
    ns:batch-ids                            zset    batch_id -> 0   lexical index for get_batch prefixes
    ns:schedules                            hash    name -> ScheduleRecord JSON without its runs
    ns:schedule-runs:<name>                 list    ScheduleRun JSON, newest first, LTRIMmed to SCHEDULE_RUNS_KEPT
    ns:schedule-claim:<name>:<fire_ms>      string  "1", SET NX EX SCHEDULE_CLAIM_TTL_S: one claim per occurrence

``fire_ms`` is the occurrence in whole milliseconds (:func:`~pipeline.store.records.fire_time_ms`);
being all digits after the last colon, it cannot collide with a name that itself holds colons.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, cast

import redis

from pipeline.models import BatchRecord, ScheduleRecord, ScheduleRun
from pipeline.store.base import SCHEDULE_CLAIM_TTL_S, SCHEDULE_RUNS_KEPT
from pipeline.store.records import (
    batch_not_found,
    fire_time_ms,
    pick_batch_match,
    schedule_json,
    schedule_not_found,
    schedule_with_runs,
)

__all__ = ["RedisRecords"]

#: KEYS[1] the schedules hash, KEYS[2] the schedule's runs. ARGV: name, run JSON, runs kept.
#: Returns 0 (no such schedule: nothing written) or 1.
_ADD_RUN_LUA = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1
"""


class RedisRecords:
    """Batches and schedules in Redis.

    Args:
        client: the store's connection.
        key: builds a namespaced key from its parts (the store's ``_key``).
        guard: turns connection and login failures into ``StoreUnavailable`` (the store's ``_guard``).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key: Callable[..., str],
        guard: Callable[[], AbstractContextManager[None]],
    ) -> None:
        self._client = client
        self._key = key
        self._guard = guard
        self._add_run = client.register_script(_ADD_RUN_LUA)

    # -- batches -------------------------------------------------------------------------------

    def save_batch(self, batch: BatchRecord) -> None:
        """SET the record and index its id, in one MULTI."""
        pipe = self._client.pipeline(transaction=True)
        pipe.set(self._key("batchrec", batch.batch_id), batch.model_dump_json())
        pipe.zadd(self._key("batch-ids"), {batch.batch_id: 0})
        with self._guard():
            pipe.execute()

    def get_batch(self, batch_id: str) -> BatchRecord:
        """Resolve ``batch_id`` on ``ns:batch-ids`` (exact id, else unique prefix), then GET the record."""
        with self._guard():
            found = cast(
                list[Any], self._client.zrangebylex(self._key("batch-ids"), f"[{batch_id}", "+", start=0, num=2)
            )
        full_id = pick_batch_match(batch_id, map(_text, found))
        with self._guard():
            raw = self._client.get(self._key("batchrec", full_id))
        if raw is None:
            raise batch_not_found(batch_id)
        return BatchRecord.model_validate_json(raw)

    def delete_batch(self, batch_id: str) -> bool:
        """DEL the record and drop its id from ``ns:batch-ids``, in one MULTI."""
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self._key("batchrec", batch_id))
        pipe.zrem(self._key("batch-ids"), batch_id)
        with self._guard():
            deleted, _ = pipe.execute()
        return bool(deleted)

    # -- schedules -----------------------------------------------------------------------------

    def save_schedule(self, schedule: ScheduleRecord) -> None:
        """HSET the schedule without its runs; the runs list is left as it is."""
        with self._guard():
            self._client.hset(self._key("schedules"), schedule.name, schedule_json(schedule))

    def get_schedule(self, name: str) -> ScheduleRecord:
        """The schedule and its runs (newest first), read in one MULTI."""
        pipe = self._client.pipeline(transaction=True)
        pipe.hget(self._key("schedules"), name)
        pipe.lrange(self._key("schedule-runs", name), 0, -1)
        with self._guard():
            stored, runs = pipe.execute()
        if stored is None:
            raise schedule_not_found(name)
        return schedule_with_runs(stored, runs)

    def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule by name, their runs fetched in one pipelined round trip."""
        with self._guard():
            stored = cast(dict[Any, Any], self._client.hgetall(self._key("schedules")))
        names = sorted(stored, key=_text)
        if not names:
            return []
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.lrange(self._key("schedule-runs", _text(name)), 0, -1)
        with self._guard():
            runs = cast(list[list[Any]], pipe.execute())
        return [schedule_with_runs(stored[name], name_runs) for name, name_runs in zip(names, runs, strict=True)]

    def delete_schedule(self, name: str) -> bool:
        """HDEL the schedule and DEL its runs in one MULTI; True if it existed."""
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(self._key("schedules"), name)
        pipe.delete(self._key("schedule-runs", name))
        with self._guard():
            removed = cast(list[int], pipe.execute())[0]
        return removed == 1

    def claim_fire(self, name: str, fire_time: float) -> bool:
        """SET NX EX on the occurrence's claim key: only the first caller's SET succeeds."""
        key = self._key("schedule-claim", name, str(fire_time_ms(fire_time)))
        with self._guard():
            return bool(self._client.set(key, "1", nx=True, ex=SCHEDULE_CLAIM_TTL_S))

    def add_schedule_run(self, name: str, run: ScheduleRun) -> None:
        """LPUSH and LTRIM the run in one script that first checks the schedule still exists."""
        keys = [self._key("schedules"), self._key("schedule-runs", name)]
        with self._guard():
            added = self._add_run(keys=keys, args=[name, run.model_dump_json(), SCHEDULE_RUNS_KEPT])
        if not added:
            raise schedule_not_found(name)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
