"""Batch and schedule records in SQLite; :class:`~pipeline.store.sqlite.SqliteStatusStore` delegates to this.

Tables (in the same file as the jobs, created by the store with :data:`RECORDS_SCHEMA`)::

    batches         (batch_id PK, created_at, batch)     batch: BatchRecord JSON (rows and their job ids)
    schedules       (name PK, schedule)                  schedule: ScheduleRecord JSON without its runs
    schedule_runs   (run_id INTEGER PK, name, run)       run: ScheduleRun JSON; newest = highest run_id;
                    index (name, run_id)                 trimmed to SCHEDULE_RUNS_KEPT per name
    schedule_claims (name, fire_ms, claimed_at)          PK (name, fire_ms): INSERT OR IGNORE claims an
                    index (claimed_at)                   occurrence once, across processes; claims older
                                                         than SCHEDULE_CLAIM_TTL_S are pruned on claim

Every write is one ``BEGIN IMMEDIATE`` transaction, so a check and the write it guards are atomic
across threads and processes.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import AbstractContextManager
from typing import Protocol

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

__all__ = ["RECORDS_SCHEMA", "SqliteRecords", "Transaction"]

#: Tables and indexes of batches and schedules, created when missing (every statement is idempotent).
RECORDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    batch TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    schedule TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule_runs (
    run_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    run TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS schedule_runs_name ON schedule_runs (name, run_id);
CREATE TABLE IF NOT EXISTS schedule_claims (
    name TEXT NOT NULL,
    fire_ms INTEGER NOT NULL,
    claimed_at REAL NOT NULL,
    PRIMARY KEY (name, fire_ms)
);
CREATE INDEX IF NOT EXISTS schedule_claims_claimed ON schedule_claims (claimed_at);
"""


class Transaction(Protocol):
    """The store's ``_transaction``: one transaction; ``write`` takes the write lock up front."""

    def __call__(self, *, write: bool) -> AbstractContextManager[sqlite3.Connection]: ...


class SqliteRecords:
    """Batches and schedules in the store's SQLite file.

    Args:
        transaction: the store's transaction factory (per-thread connection, errors mapped to
            ``StoreUnavailable``).
    """

    def __init__(self, transaction: Transaction) -> None:
        self._transaction = transaction

    # -- batches -------------------------------------------------------------------------------

    def save_batch(self, batch: BatchRecord) -> None:
        """Insert or replace the batch's row."""
        with self._transaction(write=True) as conn:
            conn.execute(
                "INSERT INTO batches (batch_id, created_at, batch) VALUES (?, ?, ?) ON CONFLICT (batch_id)"
                " DO UPDATE SET created_at = excluded.created_at, batch = excluded.batch",
                (batch.batch_id, batch.created_at, batch.model_dump_json()),
            )

    def delete_batch(self, batch_id: str) -> bool:
        """Delete the batch's row."""
        with self._transaction(write=True) as conn:
            return conn.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,)).rowcount > 0

    def get_batch(self, batch_id: str) -> BatchRecord:
        """Resolve ``batch_id`` along the primary key (exact id, else unique prefix), then read the record."""
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT batch_id FROM batches WHERE batch_id >= ? ORDER BY batch_id LIMIT 2", (batch_id,)
            ).fetchall()
            full_id = pick_batch_match(batch_id, [str(row[0]) for row in rows])
            row = conn.execute("SELECT batch FROM batches WHERE batch_id = ?", (full_id,)).fetchone()
        if row is None:
            raise batch_not_found(batch_id)
        return BatchRecord.model_validate_json(row[0])

    # -- schedules -----------------------------------------------------------------------------

    def save_schedule(self, schedule: ScheduleRecord) -> None:
        """Insert or replace the schedule's row; its runs (another table) are left as they are."""
        with self._transaction(write=True) as conn:
            conn.execute(
                "INSERT INTO schedules (name, schedule) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET schedule = excluded.schedule",
                (schedule.name, schedule_json(schedule)),
            )

    def get_schedule(self, name: str) -> ScheduleRecord:
        """The schedule and its runs (newest first), read in one transaction."""
        with self._transaction(write=False) as conn:
            row = conn.execute("SELECT schedule FROM schedules WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise schedule_not_found(name)
            runs = conn.execute("SELECT run FROM schedule_runs WHERE name = ? ORDER BY run_id DESC", (name,))
            return schedule_with_runs(row[0], [str(run[0]) for run in runs])

    def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule by name, with every run, in two queries."""
        with self._transaction(write=False) as conn:
            stored = conn.execute("SELECT name, schedule FROM schedules ORDER BY name").fetchall()
            runs: dict[str, list[str]] = {}
            for name, run in conn.execute("SELECT name, run FROM schedule_runs ORDER BY name, run_id DESC"):
                runs.setdefault(name, []).append(run)
        return [schedule_with_runs(schedule, runs.get(name, [])) for name, schedule in stored]

    def delete_schedule(self, name: str) -> bool:
        """Delete the schedule and its runs in one transaction; True if it existed."""
        with self._transaction(write=True) as conn:
            removed = conn.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount
            conn.execute("DELETE FROM schedule_runs WHERE name = ?", (name,))
        return removed > 0

    def claim_fire(self, name: str, fire_time: float) -> bool:
        """INSERT OR IGNORE the claim under the write lock: only the first inserter sees a row count of 1."""
        now = time.time()
        with self._transaction(write=True) as conn:
            conn.execute("DELETE FROM schedule_claims WHERE claimed_at < ?", (now - SCHEDULE_CLAIM_TTL_S,))
            claimed = conn.execute(
                "INSERT OR IGNORE INTO schedule_claims (name, fire_ms, claimed_at) VALUES (?, ?, ?)",
                (name, fire_time_ms(fire_time), now),
            ).rowcount
        return claimed == 1

    def add_schedule_run(self, name: str, run: ScheduleRun) -> None:
        """Check the schedule exists, insert the run and trim the oldest, in one write transaction."""
        with self._transaction(write=True) as conn:
            if conn.execute("SELECT 1 FROM schedules WHERE name = ?", (name,)).fetchone() is None:
                raise schedule_not_found(name)
            conn.execute("INSERT INTO schedule_runs (name, run) VALUES (?, ?)", (name, run.model_dump_json()))
            # Drop everything from the (KEPT + 1)-th newest run on; with fewer runs the subquery is NULL.
            conn.execute(
                "DELETE FROM schedule_runs WHERE name = ? AND run_id <= (SELECT run_id FROM schedule_runs"
                " WHERE name = ? ORDER BY run_id DESC LIMIT 1 OFFSET ?)",
                (name, name, SCHEDULE_RUNS_KEPT),
            )
