"""The status store in a SQLite file (embedded mode), so ``sdpipe status`` works after the process ended.

The file is in WAL mode: readers (a CLI in another process) never block the writer, and writers
wait up to :data:`DEFAULT_BUSY_TIMEOUT_S` for each other. Each thread gets its own connection
(embedded workers are threads). Every transition is one ``BEGIN IMMEDIATE`` transaction whose
``UPDATE ... WHERE state_rank <= ? AND state NOT IN (terminal)`` is the guard: a redelivered message
cannot move a job backwards or out of a terminal state. Schema::

    jobs  (job_id PK, batch_id, state, state_rank, created_at, updated_at, spec, error, result, sd_info,
           fingerprint)
          indexes (created_at, job_id), (state, created_at, job_id), (batch_id, created_at, job_id),
                  (batch_id, state, created_at, job_id): every list_jobs filter is an index walk;
                  (fingerprint, state): succeeded_fingerprints
    steps (job_id, step, attempts, started_at, finished_at, duration_s, skipped), PK (job_id, step)
    job_counts (state PK, jobs), kept by triggers on jobs   see :mod:`pipeline.store.sqlite_counts`
    batches, schedules, schedule_runs, schedule_claims      see :mod:`pipeline.store.sqlite_records`

``fingerprint`` copies ``spec.fingerprint`` at creation (a file made before it existed gets the
column when first opened; its older jobs have none). A file made before ``job_counts`` gets the table
and its triggers when first opened, filled from its jobs.

JSON columns hold ``spec``, ``error``, ``result`` and ``sd_info``; times are REAL epoch seconds.
Open the store after any ``fork``: connections must not cross processes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import StoreUnavailable
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
    TERMINAL_STATES,
    StatusStore,
    empty_counts,
    job_not_found,
    new_record,
    ordered_steps,
    pick_prefix_match,
)
from pipeline.store.records import DelegatedBatchesSchedules
from pipeline.store.sqlite_connections import DEFAULT_BUSY_TIMEOUT_S, ThreadConnections
from pipeline.store.sqlite_counts import COUNTS_TRIGGER, count_jobs_by_state, install_job_counts
from pipeline.store.sqlite_records import RECORDS_SCHEMA, SqliteRecords

__all__ = ["DEFAULT_BUSY_TIMEOUT_S", "SqliteStatusStore"]

logger = logging.getLogger(__name__)

#: Ids per ``IN (...)`` query, well below SQLite's limit on bound parameters.
_IN_CHUNK = 500
#: Primary SQLite error codes that mean "the file cannot be used right now", not a bug in a query:
#: PERM, BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN.
_UNAVAILABLE_CODES = frozenset({3, 5, 6, 8, 10, 13, 14})
#: SQL condition true while a job may still move.
_NOT_TERMINAL = "state NOT IN ({})".format(", ".join(f"'{state.value}'" for state in TERMINAL_STATES))
#: The states ``requeue`` moves back to queued.
_REQUEUEABLE = (JobState.FAILED.value, JobState.CANCELLED.value)
#: Tables and indexes, created when missing (every statement is idempotent).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    batch_id TEXT,
    state TEXT NOT NULL,
    state_rank INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    spec TEXT NOT NULL,
    error TEXT,
    result TEXT,
    sd_info TEXT,
    fingerprint TEXT
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_batch_created ON jobs (batch_id, created_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_batch_state_created ON jobs (batch_id, state, created_at, job_id);
CREATE TABLE IF NOT EXISTS steps (
    job_id TEXT NOT NULL,
    step TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    duration_s REAL,
    skipped INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS upscale_tiles (
    job_id TEXT NOT NULL,
    tile INTEGER NOT NULL,
    PRIMARY KEY (job_id, tile)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS upscale_totals (
    job_id TEXT PRIMARY KEY,
    total INTEGER NOT NULL
);
"""
#: Job rows per INSERT statement of :meth:`SqliteStatusStore.create_jobs` (8 values each: under the
#: 999 bound parameters of older SQLite builds). One statement per row made each row pay SQLite's
#: statement journal, which the counts trigger turns on: 40 µs of CPU per job instead of 18.
_INSERT_ROWS = 100
#: Job ids per statement of :meth:`SqliteStatusStore.delete_jobs` (well under SQLite's 32766 variables).
_DELETE_CHUNK = 500
#: Brings a file made before the ``fingerprint`` column up to date (run after :data:`_SCHEMA`).
_ADD_FINGERPRINT = "ALTER TABLE jobs ADD COLUMN fingerprint TEXT"
#: The index ``succeeded_fingerprints`` walks (created here, not in _SCHEMA: an old file lacks the column).
_FINGERPRINT_INDEX_NAME = "jobs_fingerprint_state"
_FINGERPRINT_INDEX = f"CREATE INDEX IF NOT EXISTS {_FINGERPRINT_INDEX_NAME} ON jobs (fingerprint, state)"


class SqliteStatusStore(DelegatedBatchesSchedules, StatusStore):
    """Status store in the SQLite file at ``path`` (created with its schema if missing; the folder must exist).

    Raises:
        StoreUnavailable: the file cannot be opened or written.
    """

    records_lost_reason = "the status database under OUTPUT_DIR/.sdpipe was replaced or deleted"

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._connections = ThreadConnections(self._path, rows=True)
        with self._guard():
            self._connections.get().executescript(_SCHEMA + RECORDS_SCHEMA)
        self._upgrade()
        self._batches_schedules = SqliteRecords(self._transaction)

    # -- writes -------------------------------------------------------------------------------

    def create_jobs(self, specs: Iterable[JobSpec]) -> list[JobRecord]:
        specs = list(specs)
        if not specs:
            return []
        queued, rank = JobState.QUEUED.value, JobState.QUEUED.rank
        rows = [
            (
                spec.job_id,
                spec.batch_id,
                queued,
                rank,
                spec.created_at,
                spec.created_at,
                spec.model_dump_json(),
                spec.fingerprint,
            )
            for spec in specs
        ]
        with self._transaction(write=True) as conn:
            inserted = sum(
                _insert_jobs(conn, rows[start : start + _INSERT_ROWS]) for start in range(0, len(rows), _INSERT_ROWS)
            )
            if inserted == len(specs):
                records = [new_record(spec) for spec in specs]
            else:
                # Existing ids keep their stored record; return that, not the spec we were given.
                stored = {record.job_id: record for record in self._load(conn, [spec.job_id for spec in specs])}
                records = [stored[spec.job_id] for spec in specs]
        logger.info("created %d jobs (%d already existed)", inserted, len(specs) - inserted)
        return records

    def start_step(self, job_id: str, step: StepName, *, now: float) -> JobRecord | None:
        state = JobState.for_step(step)
        with self._transaction(write=True) as conn:
            moved = conn.execute(
                "UPDATE jobs SET state = ?, state_rank = ?, updated_at = ?"
                f" WHERE job_id = ? AND state_rank <= ? AND {_NOT_TERMINAL}",
                (state.value, state.rank, now, job_id, state.rank),
            ).rowcount
            if not moved:
                self._require(conn, job_id)
                logger.debug("job %s: not starting %s (terminal or already past it)", job_id, step)
                return None
            conn.execute(
                "INSERT INTO steps (job_id, step, attempts, started_at) VALUES (?, ?, 1, ?)"
                " ON CONFLICT (job_id, step) DO UPDATE SET attempts = attempts + 1, started_at = excluded.started_at,"
                " finished_at = NULL, duration_s = NULL, skipped = 0",
                (job_id, step, now),
            )
            record = self._load(conn, [job_id])[0]
        logger.debug("job %s: %s attempt %d", job_id, step, record.steps[step].attempts)
        return record

    def finish_step(self, job_id: str, step: StepName, *, now: float, skipped: bool = False) -> None:
        with self._transaction(write=True) as conn:
            if not conn.execute("UPDATE jobs SET updated_at = ? WHERE job_id = ?", (now, job_id)).rowcount:
                raise job_not_found(job_id)
            conn.execute(
                "INSERT INTO steps (job_id, step, finished_at, skipped) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (job_id, step) DO UPDATE SET finished_at = excluded.finished_at,"
                " duration_s = excluded.finished_at - started_at, skipped = excluded.skipped",
                (job_id, step, now, int(skipped)),
            )
        logger.debug("job %s: %s finished%s", job_id, step, " (skipped)" if skipped else "")

    def record_error(self, job_id: str, error: ErrorInfo) -> None:
        self._update(job_id, "error = ?, updated_at = ?", error.model_dump_json(), error.at)
        logger.debug("job %s: error in %s recorded: %s", job_id, error.step, error.type)

    def set_sd_info(self, job_id: str, sd_info: SDInfo) -> None:
        self._update(job_id, "sd_info = ?", sd_info.model_dump_json())

    def mark_succeeded(self, job_id: str, result: JobResult, *, now: float) -> bool:
        return self._end(job_id, JobState.SUCCEEDED, now, "result", result.model_dump_json(exclude_none=True))

    def mark_failed(self, job_id: str, error: ErrorInfo, *, now: float) -> bool:
        return self._end(job_id, JobState.FAILED, now, "error", error.model_dump_json())

    def mark_cancelled(self, job_id: str, *, now: float) -> bool:
        return self._end(job_id, JobState.CANCELLED, now)

    def requeue(self, job_id: str, *, now: float) -> JobRecord | None:
        queued = JobState.QUEUED
        with self._transaction(write=True) as conn:
            moved = conn.execute(
                "UPDATE jobs SET state = ?, state_rank = ?, updated_at = ? WHERE job_id = ? AND state IN (?, ?)",
                (queued.value, queued.rank, now, job_id, *_REQUEUEABLE),
            ).rowcount
            if not moved:
                self._require(conn, job_id)
                logger.info("job %s: not requeued (neither failed nor cancelled)", job_id)
                return None
            record = self._load(conn, [job_id])[0]
        logger.info("job %s: requeued", job_id)
        return record

    # -- reads --------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        with self._transaction(write=False) as conn:
            records = self._load(conn, [job_id])
        if not records:
            raise job_not_found(job_id)
        return records[0]

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord]:
        # One read transaction: the jobs and their steps in chunks of _IN_CHUNK ids.
        unique = list(dict.fromkeys(job_ids))
        with self._transaction(write=False) as conn:
            records = {record.job_id: record for record in self._load(conn, unique)}
        missing = next((job_id for job_id in unique if job_id not in records), None)
        if missing is not None:
            raise job_not_found(missing)
        return [records[job_id] for job_id in job_ids]

    def resolve_id(self, prefix: str) -> str:
        with self._transaction(write=False) as conn:
            rows = conn.execute("SELECT job_id FROM jobs WHERE job_id >= ? ORDER BY job_id LIMIT 2", (prefix,))
            return pick_prefix_match(prefix, [str(row[0]) for row in rows])

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
        sql, params = _list_query(state, batch_id, limit, max(offset, 0))
        with self._transaction(write=False) as conn:
            return self._records(conn, conn.execute(sql, params).fetchall())

    def delete_jobs(self, job_ids: Sequence[str]) -> list[str]:
        removed: list[str] = []
        with self._transaction(write=True) as conn:
            for start in range(0, len(job_ids), _DELETE_CHUNK):
                chunk = list(job_ids[start : start + _DELETE_CHUNK])
                marks = ",".join("?" * len(chunk))
                ended = [
                    str(row[0])
                    for row in conn.execute(
                        f"SELECT job_id FROM jobs WHERE job_id IN ({marks}) AND state_rank >= ?",
                        (*chunk, TERMINAL_RANK),
                    )
                ]
                marks = ",".join("?" * len(ended))
                conn.execute(f"DELETE FROM steps WHERE job_id IN ({marks})", ended)
                conn.execute(f"DELETE FROM jobs WHERE job_id IN ({marks})", ended)
                removed += ended
        if removed:
            logger.info("removed %d job record(s)", len(removed))
        return removed

    def succeeded_fingerprints(self, fingerprints: Sequence[str]) -> set[str]:
        unique = list(dict.fromkeys(fingerprints))
        found: set[str] = set()
        with self._transaction(write=False) as conn:
            for start in range(0, len(unique), _IN_CHUNK):
                chunk = unique[start : start + _IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT DISTINCT fingerprint FROM jobs WHERE fingerprint IN ({marks}) AND state = ?",
                    (*chunk, JobState.SUCCEEDED.value),
                )
                found.update(str(row[0]) for row in rows)
        return found

    def count_by_state(self, *, batch_id: str | None = None) -> dict[JobState, int]:
        # The whole store: the trigger-kept counts (flat with the job count). One batch: its index walk.
        counts = empty_counts()
        with self._transaction(write=False) as conn:
            if batch_id is None:
                return count_jobs_by_state(conn)
            rows = conn.execute("SELECT state, COUNT(*) FROM jobs WHERE batch_id = ? GROUP BY state", (batch_id,))
            for state, count in rows:
                counts[JobState(state)] = int(count)
        return counts

    def set_tile_total(self, job_id: str, total: int) -> None:
        with self._transaction(write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO upscale_totals (job_id, total) VALUES (?, ?)", (job_id, total))

    def add_tile_done(self, job_id: str, index: int) -> tuple[int, int]:
        with self._transaction(write=True) as conn:
            conn.execute("INSERT OR IGNORE INTO upscale_tiles (job_id, tile) VALUES (?, ?)", (job_id, index))
            return self._tile_counts(conn, job_id) or (0, 0)

    def tiles_done(self, job_id: str) -> set[int] | None:
        with self._transaction(write=False) as conn:
            return {int(row[0]) for row in conn.execute("SELECT tile FROM upscale_tiles WHERE job_id = ?", (job_id,))}

    def tile_progress(self, job_id: str) -> tuple[int, int] | None:
        with self._transaction(write=False) as conn:
            return self._tile_counts(conn, job_id)

    def _tile_counts(self, conn: sqlite3.Connection, job_id: str) -> tuple[int, int] | None:
        done = conn.execute("SELECT COUNT(*) FROM upscale_tiles WHERE job_id = ?", (job_id,)).fetchone()[0]
        total = conn.execute("SELECT total FROM upscale_totals WHERE job_id = ?", (job_id,)).fetchone()
        return None if total is None else (int(done), int(total[0]))

    def ping(self) -> None:
        with self._transaction(write=False) as conn:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()

    def close(self) -> None:
        self._connections.close()

    # -- helpers ------------------------------------------------------------------------------

    def _upgrade(self) -> None:
        """Give a file made by an older sdpipe the ``fingerprint`` column and index and the per-state
        counts (write lock only if needed; checked again under it, as another process may have done it)."""
        with self._transaction(write=False) as conn:
            if _missing_upgrades(conn) == set():
                return
        with self._transaction(write=True) as conn:
            missing = _missing_upgrades(conn)
            if _FINGERPRINT_INDEX_NAME in missing:
                if "fingerprint" not in {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}:
                    conn.execute(_ADD_FINGERPRINT)
                    logger.info("added the fingerprint column to %s", self._path)
                conn.execute(_FINGERPRINT_INDEX)
            if COUNTS_TRIGGER in missing:
                install_job_counts(conn)
                logger.info("added the per-state job counts to %s", self._path)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn "the file cannot be used" errors into :class:`StoreUnavailable`."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _UNAVAILABLE_CODES:
                raise
            raise StoreUnavailable(
                f"cannot use the status store {self._path}: {exc}",
                field="OUTPUT_DIR",
                value=str(self._path),
            ) from exc

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction; ``write`` takes the write lock up front so check-then-update is atomic."""
        with self._guard(), self._connections.transaction(write=write) as conn:
            yield conn

    def _require(self, conn: sqlite3.Connection, job_id: str) -> None:
        if conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone() is None:
            raise job_not_found(job_id)

    def _update(self, job_id: str, assignments: str, *values: Any) -> None:
        with self._transaction(write=True) as conn:
            if not conn.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*values, job_id)).rowcount:
                raise job_not_found(job_id)

    def _end(self, job_id: str, state: JobState, now: float, column: str | None = None, value: Any = None) -> bool:
        extra, params = (f", {column} = ?", (value,)) if column else ("", ())
        with self._transaction(write=True) as conn:
            moved = conn.execute(
                f"UPDATE jobs SET state = ?, state_rank = ?, updated_at = ?{extra}"
                f" WHERE job_id = ? AND {_NOT_TERMINAL}",
                (state.value, TERMINAL_RANK, now, *params, job_id),
            ).rowcount
            if not moved:
                self._require(conn, job_id)
                logger.info("job %s: already terminal, not marking it %s", job_id, state)
                return False
        logger.debug("job %s: %s", job_id, state)
        return True

    def _load(self, conn: sqlite3.Connection, ids: Sequence[str]) -> list[JobRecord]:
        """The records of ``ids`` that exist, in no particular order."""
        rows: list[sqlite3.Row] = []
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows += conn.execute(f"SELECT * FROM jobs WHERE job_id IN ({marks})", chunk).fetchall()
        return self._records(conn, rows)

    def _records(self, conn: sqlite3.Connection, rows: Sequence[sqlite3.Row]) -> list[JobRecord]:
        """Records for job ``rows`` (in their order), with their steps."""
        steps: dict[str, dict[str, StepRecord]] = {}
        for start in range(0, len(rows), _IN_CHUNK):
            chunk = [row["job_id"] for row in rows[start : start + _IN_CHUNK]]
            marks = ", ".join("?" * len(chunk))
            for step in conn.execute(f"SELECT * FROM steps WHERE job_id IN ({marks})", chunk):
                steps.setdefault(step["job_id"], {})[step["step"]] = StepRecord(
                    attempts=step["attempts"],
                    started_at=step["started_at"],
                    finished_at=step["finished_at"],
                    duration_s=step["duration_s"],
                    skipped=bool(step["skipped"]),
                )
        return [_record(row, steps.get(row["job_id"], {})) for row in rows]


def _insert_jobs(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert the job ``rows`` (at most :data:`_INSERT_ROWS`) in one statement; returns how many were new."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows))
    return conn.execute(
        "INSERT INTO jobs (job_id, batch_id, state, state_rank, created_at, updated_at, spec, fingerprint)"
        f" VALUES {values} ON CONFLICT (job_id) DO NOTHING",
        [value for row in rows for value in row],
    ).rowcount


def _missing_upgrades(conn: sqlite3.Connection) -> set[str]:
    """Which of the fingerprint index and the counts' last trigger the file lacks."""
    wanted = {_FINGERPRINT_INDEX_NAME, COUNTS_TRIGGER}
    found = conn.execute("SELECT name FROM sqlite_master WHERE name IN (?, ?)", tuple(wanted))
    return wanted - {str(row[0]) for row in found}


def _list_query(
    state: JobState | None, batch_id: str | None, limit: int, offset: int = 0
) -> tuple[str, tuple[Any, ...]]:
    """The ``list_jobs`` query: newest first, ties by id, along one of the indexes."""
    conditions = [name for name, value in (("state = ?", state), ("batch_id = ?", batch_id)) if value is not None]
    params = tuple(value for value in (state.value if state else None, batch_id) if value is not None)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    order = "ORDER BY created_at DESC, job_id DESC LIMIT ? OFFSET ?"
    return f"SELECT * FROM jobs {where} {order}", (*params, limit, offset)


def _record(row: sqlite3.Row, steps: dict[str, StepRecord]) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"],
        batch_id=row["batch_id"],
        state=JobState(row["state"]),
        spec=JobSpec.model_validate_json(row["spec"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        steps=ordered_steps(steps),
        error=ErrorInfo.model_validate_json(row["error"]) if row["error"] is not None else None,
        result=json.loads(row["result"]) if row["result"] is not None else None,
        sd_info=json.loads(row["sd_info"]) if row["sd_info"] is not None else None,
    )
