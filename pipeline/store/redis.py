"""The status store in Redis (Redis mode): every worker on every machine sees the same jobs.

Every write is one Lua script (:mod:`pipeline.store.redis_scripts`), so a transition and the
indexes it touches change together: two workers racing on a redelivered message cannot move a job
backwards, and no reader ever sees a job in two state indexes. Key layout under the namespace
``ns`` (default ``sdpipe``)::

    ns:job:<job_id>                    hash  one job, flat fields:
        job_id, state, rank                      rank is JobState.rank; the scripts compare it
        created_at, updated_at                   epoch seconds, repr() of the float
        batch_id                                 absent when the job has no batch
        spec                                     JobSpec JSON
        error, result, sd_info                   JSON, absent until set
        step:<step>:attempts                     HINCRBY on every start_step
        step:<step>:started_at                   set on every attempt (which clears the three below)
        step:<step>:finished_at, duration_s, skipped ("1"/"0")      set by finish_step
    ns:jobs                            zset  job_id -> created_at   every job; newest first = ZREVRANGE
    ns:ids                             zset  job_id -> 0            lexical index for resolve_id (ZRANGEBYLEX)
    ns:state:<state>                   zset  job_id -> created_at   jobs now in <state>; ZCARD = count
    ns:batch:<batch_id>                zset  job_id -> created_at   jobs of one batch
    ns:batch-state:<state>:<batch_id>  zset  job_id -> created_at   the batch's jobs now in <state>
    ns:fp:succeeded                    set   JobSpec.fingerprint of every succeeded job (SADDed by the
                                             move to succeeded; a succeeded job never leaves that state)
    ns:fp:succeeded-count              hash  fingerprint -> how many succeeded jobs have it: pruning
                                             one of them keeps the fingerprint while others remain

Batch and schedule records (``ns:batchrec:*``, ``ns:batch-ids``, ``ns:schedules``,
``ns:schedule-runs:*``, ``ns:schedule-claim:*``) are described in :mod:`pipeline.store.redis_records`.

Like dramatiq's ``dispatch.lua``, the scripts build index key names at run time, so the store needs
a single Redis node (not Cluster).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis.commands.core import Script

from pipeline.connections import RedisSettings, create_client, server_id
from pipeline.errors import ConfigError, StoreUnavailable
from pipeline.models import (
    ErrorInfo,
    JobRecord,
    JobResult,
    JobSpec,
    JobState,
    SDInfo,
    StepName,
    StepRecord,
)
from pipeline.store.base import (
    DEFAULT_LIST_LIMIT,
    TERMINAL_RANK,
    InlineEvent,
    StatusStore,
    empty_counts,
    job_not_found,
    new_record,
    ordered_steps,
    pick_prefix_match,
)
from pipeline.store.records import DelegatedBatchesSchedules
from pipeline.store.redis_records import RedisRecords
from pipeline.store.redis_scripts import (
    APPEND_EVENT_LUA,
    CREATE_LUA,
    DELETE_LUA,
    FINISH_AND_MOVE_LUA,
    FINISH_STEP_LUA,
    MOVE_LUA,
    REQUEUE_LUA,
    SET_FIELDS_LUA,
    with_constants,
)

__all__ = ["RedisStatusStore", "missing_database"]

logger = logging.getLogger(__name__)

#: Jobs per create-script call: bounds how long one call holds Redis while a batch is recorded.
_CREATE_CHUNK = 500
#: Fingerprints per SMISMEMBER in ``succeeded_fingerprints`` (all chunks go in one round trip).
_FINGERPRINT_CHUNK = 2000
#: Error replies that mean "wrong or missing credentials" (or an ACL user without the rights).
_REFUSALS = ("NOAUTH", "WRONGPASS", "NOPERM")
#: What Redis answers SELECT with an index at or above its ``databases`` setting (on connecting).
_NO_SUCH_DB = "DB index is out of range"


def missing_database(exc: BaseException, what: str) -> ConfigError | None:
    """The error to raise when ``exc`` is Redis refusing REDIS_URL's database (``/N`` at or above the
    server's ``databases`` setting), else None; ``what`` completes "Redis at …"."""
    if isinstance(exc, redis.ResponseError) and _NO_SUCH_DB in str(exc):
        return ConfigError(f"Redis at {what}", field="REDIS_DB")
    return None


class RedisStatusStore(DelegatedBatchesSchedules, StatusStore):
    """Status store in Redis; see the module docstring for the key layout.

    Args:
        client: the connection to use. The store closes it only if it made it (:meth:`from_url`).
        namespace: prefix of every key, so several deployments can share one database.
    """

    records_lost_reason = "Redis restarted without persistence (or was flushed)"

    def __init__(self, client: redis.Redis, *, namespace: str = "sdpipe") -> None:
        self._client = client
        self._ns = namespace
        self._owns_client = False
        kwargs: Mapping[str, Any] = client.connection_pool.connection_kwargs
        password = kwargs.get("password")
        self._password: str | None = str(password) if password else None
        self._where = _describe(kwargs)
        self._db = kwargs.get("db", 0)
        self.inline_events_server = server_id(client)
        self._create = client.register_script(with_constants(CREATE_LUA))
        self._move = client.register_script(with_constants(APPEND_EVENT_LUA + MOVE_LUA))
        self._finish_step = client.register_script(FINISH_STEP_LUA)
        self._finish_and_move = client.register_script(with_constants(FINISH_AND_MOVE_LUA))
        self._set_fields = client.register_script(SET_FIELDS_LUA)
        self._requeue = client.register_script(with_constants(REQUEUE_LUA))
        self._delete = client.register_script(with_constants(DELETE_LUA))
        self._batches_schedules = RedisRecords(client, key=self._key, guard=self._guard)

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "sdpipe") -> RedisStatusStore:
        """Connect lazily to ``url`` (``redis://[[user]:password@]host[:port][/db]``) with the default
        connection options (see :meth:`open`).

        Raises:
            ConfigError: ``url`` is not a Redis URL.
        """
        return cls.open(RedisSettings(url=url), namespace=namespace)

    @classmethod
    def open(cls, redis_settings: RedisSettings, *, namespace: str = "sdpipe") -> RedisStatusStore:
        """Connect lazily with a client from :func:`pipeline.connections.create_client` (timeouts,
        health checks and retries of ``redis_settings``); the store closes it.

        Raises:
            ConfigError: the URL is not a Redis URL.
        """
        store = cls(create_client(redis_settings), namespace=namespace)
        store._owns_client = True
        return store

    @property
    def client(self) -> redis.Redis:
        """The Redis client the store uses."""
        return self._client

    def persistence(self) -> tuple[bool, bool] | None:
        """Whether Redis writes an append-only file and RDB snapshots (``appendonly``, ``save``);
        None when it does not say (``CONFIG`` disabled or renamed, as managed services do).

        Raises:
            StoreUnavailable: Redis cannot be reached.
        """
        with self._guard():
            try:
                aof = cast(dict[Any, Any], self._client.config_get("appendonly"))
                rdb = cast(dict[Any, Any], self._client.config_get("save"))
            except redis.ResponseError:  # CONFIG disabled, renamed, or not allowed (ACL)
                return None
        return _text(aof.get("appendonly", "")) == "yes", bool(_text(rdb.get("save", "")).strip())

    # -- writes -------------------------------------------------------------------------------

    def create_jobs(self, specs: Iterable[JobSpec]) -> list[JobRecord]:
        specs = list(specs)
        if not specs:
            return []
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(specs), _CREATE_CHUNK):
            chunk = [
                [spec.job_id, _num(spec.created_at), spec.batch_id, spec.model_dump_json()]
                for spec in specs[start : start + _CREATE_CHUNK]
            ]
            self._create(keys=[], args=[self._ns, json.dumps(chunk, ensure_ascii=False)], client=pipe)
        with self._guard():
            replies = cast(list[list[int]], pipe.execute())
        flags = [flag for reply in replies for flag in reply]
        kept = [spec.job_id for spec, flag in zip(specs, flags, strict=True) if not flag]
        # Existing ids keep their stored record; return that, not the spec we were given.
        stored = {record.job_id: record for record in self._fetch(kept)}
        logger.info("created %d jobs (%d already existed)", len(specs) - len(kept), len(kept))
        return [stored[spec.job_id] if spec.job_id in stored else new_record(spec) for spec in specs]

    def start_step(self, job_id: str, step: StepName, *, now: float) -> JobRecord | None:
        return self.start_step_after(job_id, step, now=now)[0]

    def start_step_after(
        self, job_id: str, step: StepName, *, now: float, event: InlineEvent | None = None
    ) -> tuple[JobRecord | None, StepRecord | None]:
        # One round trip: the move script reads the step's previous start and finish before it
        # counts, and appends the step's start event.
        state = JobState.for_step(step)
        extra = event.args() if event is not None else ()
        reply = self._run(self._move, job_id, self._ns, job_id, state.value, str(state.rank), _num(now), step, *extra)
        if reply == 0:
            logger.debug("job %s: not starting %s (terminal or already past it)", job_id, step)
            return None, None
        fields, started_at, finished_at, event_id = reply
        if event is not None and event_id is not None:
            event.id = _text(event_id)
        record = _record(dict(zip(fields[0::2], fields[1::2], strict=True)))  # HGETALL as a flat list
        logger.debug("job %s: %s attempt %d", job_id, step, record.steps[step].attempts)
        previous = None
        if started_at is not None or finished_at is not None:
            attempts = record.steps[step].attempts - 1
            previous = StepRecord(
                attempts=attempts,
                started_at=None if started_at is None else float(started_at),
                finished_at=None if finished_at is None else float(finished_at),
            )
        return record, previous

    def finish_step(self, job_id: str, step: StepName, *, now: float, skipped: bool = False) -> None:
        self._run(self._finish_step, job_id, step, _num(now), "1" if skipped else "0", "0")
        logger.debug("job %s: %s finished%s", job_id, step, " (skipped)" if skipped else "")

    def end_step(
        self,
        job_id: str,
        step: StepName,
        *,
        now: float,
        skipped: bool = False,
        sd_info: SDInfo | None = None,
        result: JobResult | None = None,
        events: Sequence[InlineEvent] = (),
        batch_counts: dict[JobState, int] | None = None,
    ) -> bool:
        # One round trip whatever the step produced (the default takes two or three), with its events
        # and, when the job ends here, its batch's counts.
        flag = "1" if skipped else "0"
        if result is not None:
            state, value = JobState.SUCCEEDED, result.model_dump_json(exclude_none=True)
            args = (self._ns, job_id, state.value, str(TERMINAL_RANK), _num(now), "", "result", value, step, flag)
            moved, finished_id, ended_id, *counts = self._run(
                self._finish_and_move, job_id, *args, *(a for e in events[:2] for a in e.args())
            )
            _set_ids(events, [finished_id, ended_id])
            if batch_counts is not None and counts:
                batch_counts.update(zip(JobState, map(int, counts), strict=True))
            if moved == 0:
                logger.info("job %s: already terminal, not marking it %s", job_id, state)
                return False
            logger.debug("job %s: %s finished, %s", job_id, step, state)
            return True
        fields = ("sd_info", sd_info.model_dump_json()) if sd_info is not None else ()
        inline = events[:1]
        extra = (a for e in inline for a in e.args())
        _, event_id = self._run(self._finish_step, job_id, step, _num(now), flag, str(len(inline)), *extra, *fields)
        _set_ids(inline, [event_id])
        logger.debug("job %s: %s finished%s", job_id, step, " (skipped)" if skipped else "")
        return True

    def record_error(self, job_id: str, error: ErrorInfo) -> None:
        self._run(self._set_fields, job_id, "error", error.model_dump_json(), "updated_at", _num(error.at))
        logger.debug("job %s: error in %s recorded: %s", job_id, error.step, error.type)

    def set_sd_info(self, job_id: str, sd_info: SDInfo) -> None:
        self._run(self._set_fields, job_id, "sd_info", sd_info.model_dump_json())

    def mark_succeeded(self, job_id: str, result: JobResult, *, now: float) -> bool:
        return self._finish_job(job_id, JobState.SUCCEEDED, now, "result", result.model_dump_json(exclude_none=True))

    def mark_failed(self, job_id: str, error: ErrorInfo, *, now: float) -> bool:
        return self._finish_job(job_id, JobState.FAILED, now, "error", error.model_dump_json())

    def mark_cancelled(self, job_id: str, *, now: float) -> bool:
        return self._finish_job(job_id, JobState.CANCELLED, now)

    def requeue(self, job_id: str, *, now: float) -> JobRecord | None:
        reply = self._run(self._requeue, job_id, self._ns, job_id, _num(now))
        if reply == 0:
            logger.info("job %s: not requeued (neither failed nor cancelled)", job_id)
            return None
        logger.info("job %s: requeued", job_id)
        return _record(dict(zip(reply[0::2], reply[1::2], strict=True)))

    # -- reads --------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        with self._guard():
            fields = cast(dict[Any, Any], self._client.hgetall(self._key("job", job_id)))
        if not fields:
            raise job_not_found(job_id)
        return _record(fields)

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord]:
        # One pipeline of HGETALLs: one round trip however many jobs.
        unique = list(dict.fromkeys(job_ids))
        pipe = self._client.pipeline(transaction=False)
        for job_id in unique:
            pipe.hgetall(self._key("job", job_id))
        with self._guard():
            replies = cast(list[dict[Any, Any]], pipe.execute())
        found = dict(zip(unique, replies, strict=True))
        missing = next((job_id for job_id in unique if not found[job_id]), None)
        if missing is not None:
            raise job_not_found(missing)
        records = {job_id: _record(fields) for job_id, fields in found.items()}
        return [records[job_id] for job_id in job_ids]

    def resolve_id(self, prefix: str) -> str:
        with self._guard():
            found = cast(list[Any], self._client.zrangebylex(self._key("ids"), f"[{prefix}", "+", start=0, num=2))
        return pick_prefix_match(prefix, map(_text, found))

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        batch_id: str | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
        offset: int = 0,
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        start = max(offset, 0)
        with self._guard():
            found = cast(list[Any], self._client.zrevrange(self._index(state, batch_id), start, start + limit - 1))
        # A job may move between reading the index and reading its hash: show only those still matching.
        return [
            record
            for record in self._fetch([_text(job_id) for job_id in found])
            if (state is None or record.state == state) and (batch_id is None or record.batch_id == batch_id)
        ]

    def delete_jobs(self, job_ids: Sequence[str]) -> list[str]:
        removed: list[str] = []
        for start in range(0, len(job_ids), _CREATE_CHUNK):
            with self._guard():
                reply = self._delete(keys=[], args=[self._ns, *job_ids[start : start + _CREATE_CHUNK]])
            removed += [_text(job_id) for job_id in cast(list[Any], reply)]
        if removed:
            logger.info("removed %d job record(s)", len(removed))
        return removed

    def succeeded_fingerprints(self, fingerprints: Sequence[str]) -> set[str]:
        unique = list(dict.fromkeys(fingerprints))
        if not unique:
            return set()
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(unique), _FINGERPRINT_CHUNK):
            pipe.smismember(self._key("fp", "succeeded"), unique[start : start + _FINGERPRINT_CHUNK])
        with self._guard():
            replies = cast(list[list[int]], pipe.execute())
        return {fingerprint for fingerprint, flag in zip(unique, (f for r in replies for f in r), strict=True) if flag}

    def count_by_state(self, *, batch_id: str | None = None) -> dict[JobState, int]:
        counts = empty_counts()
        pipe = self._client.pipeline(transaction=False)
        for state in counts:
            pipe.zcard(self._index(state, batch_id))
        with self._guard():
            counts.update(zip(counts, cast(list[int], pipe.execute()), strict=True))
        return counts

    def set_tile_total(self, job_id: str, total: int) -> None:
        with self._guard():
            self._client.set(self._key("tiles-total", job_id), total)

    def add_tile_done(self, job_id: str, index: int) -> tuple[int, int]:
        pipe = self._client.pipeline(transaction=True)
        pipe.sadd(self._key("tiles", job_id), index)
        pipe.scard(self._key("tiles", job_id))
        pipe.get(self._key("tiles-total", job_id))
        with self._guard():
            _, done, total = pipe.execute()
        return int(done), int(total or 0)

    def tiles_done(self, job_id: str) -> set[int] | None:
        with self._guard():
            members = self._client.smembers(self._key("tiles", job_id))
        return {int(member) for member in members}

    def tile_progress(self, job_id: str) -> tuple[int, int] | None:
        pipe = self._client.pipeline(transaction=True)
        pipe.scard(self._key("tiles", job_id))
        pipe.get(self._key("tiles-total", job_id))
        with self._guard():
            done, total = pipe.execute()
        return None if total is None else (int(done), int(total))

    def ping(self) -> None:
        with self._guard():
            self._client.ping()

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    # -- helpers ------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return ":".join((self._ns, *parts))

    def _run(self, script: Script, job_id: str, *args: str) -> Any:
        """Run a per-job script (KEYS[1] = the job's hash); its -1 reply means the job does not exist."""
        with self._guard():
            reply = script(keys=[self._key("job", job_id)], args=args)
        if reply == -1:
            raise job_not_found(job_id)
        return reply

    def _index(self, state: JobState | None, batch_id: str | None) -> str:
        """The sorted set holding the jobs in ``state`` and/or ``batch_id`` (all jobs when both are None)."""
        if state is not None and batch_id is not None:
            return self._key("batch-state", state, batch_id)
        if state is not None:
            return self._key("state", state)
        return self._key("batch", batch_id) if batch_id is not None else self._key("jobs")

    def _finish_job(self, job_id: str, state: JobState, now: float, *field: str) -> bool:
        args = (self._ns, job_id, state.value, str(TERMINAL_RANK), _num(now), "", *field)
        if self._run(self._move, job_id, *args) == 0:
            logger.info("job %s: already terminal, not marking it %s", job_id, state)
            return False
        logger.debug("job %s: %s", job_id, state)
        return True

    def _fetch(self, ids: Sequence[str]) -> list[JobRecord]:
        if not ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._key("job", job_id))
        with self._guard():
            replies = cast(list[dict[Any, Any]], pipe.execute())
        return [_record(fields) for fields in replies if fields]

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn redis-py's connection and login failures into :class:`StoreUnavailable`, and a database
        index the server does not have (REDIS_URL's ``/N``) into :class:`ConfigError`."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            missing = missing_database(exc, f"{self._where} has no database {self._db}")
            if missing is not None:
                raise missing from exc
            refused = isinstance(exc, redis.AuthenticationError) or str(exc).startswith(_REFUSALS)
            if isinstance(exc, redis.ResponseError) and not refused:
                raise
            message = f"Redis at {self._where} refused access" if refused else f"cannot reach Redis at {self._where}"
            field = "REDIS_PASSWORD" if refused else "REDIS_URL"
            raise StoreUnavailable(f"{message}: {self._reason(exc)}", field=field) from exc

    def _reason(self, exc: BaseException) -> str:
        """The cause in a few words (``Connection refused``), on one line, never with the password."""
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, OSError) and cause.strerror:
                text = cause.strerror
                break
            cause = cause.__cause__ or cause.__context__
        else:
            text = " ".join(str(exc).split()) or type(exc).__name__
        return text.replace(self._password, "***") if self._password else text


def _describe(kwargs: Mapping[str, Any]) -> str:
    """The client's address as a URL with the password masked, for messages."""
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    user = kwargs.get("username") or ""
    auth = f"{user}:***@" if kwargs.get("password") else (f"{user}@" if user else "")
    return f"redis://{auth}{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def _num(value: float) -> str:
    """A float as Redis stores it: ``repr`` round-trips exactly."""
    return repr(float(value))


def _set_ids(events: Sequence[InlineEvent], ids: Sequence[Any]) -> None:
    """Give each event the id the script appended it with (None: not appended)."""
    for event, event_id in zip(events, ids, strict=False):
        event.id = None if event_id is None else _text(event_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(raw: Mapping[Any, Any]) -> JobRecord:
    fields = {_text(name): _text(value) for name, value in raw.items()}
    steps: dict[str, dict[str, str]] = {}
    for name, value in fields.items():
        if name.startswith("step:"):
            _, step, attribute = name.split(":", 2)
            steps.setdefault(step, {})[attribute] = value
    return JobRecord(
        job_id=fields["job_id"],
        batch_id=fields.get("batch_id"),
        state=JobState(fields["state"]),
        spec=JobSpec.model_validate_json(fields["spec"]),
        created_at=float(fields["created_at"]),
        updated_at=float(fields["updated_at"]),
        steps=ordered_steps({step: StepRecord.model_validate(values) for step, values in steps.items()}),
        error=ErrorInfo.model_validate_json(fields["error"]) if "error" in fields else None,
        result=json.loads(fields["result"]) if "result" in fields else None,
        sd_info=json.loads(fields["sd_info"]) if "sd_info" in fields else None,
    )
