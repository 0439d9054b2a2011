"""Jobs per state in the embedded store, kept by triggers, so ``count_by_state()`` reads a handful of rows.

``SELECT state, COUNT(*) FROM jobs GROUP BY state`` walks every job (21 ms at 100,000 jobs); the
table ``job_counts (state PK, jobs)`` holds the same answer. Three triggers on ``jobs`` keep it: after
an insert, a delete, and an update that changes ``state``. A trigger runs inside the statement that
fired it, so a count changes in the same transaction as the job row, and SQLite's single writer
makes that exact for any number of threads and processes on one file. The triggers live in the file:
an sdpipe that predates them, writing to an upgraded file, keeps the counts too.

:func:`install_job_counts` adds the table and the triggers to a file that lacks them and fills the
table from the jobs already there, in one write transaction (the caller's ``BEGIN IMMEDIATE``): a job
written before it is counted by the fill, a job written after it by the triggers.

A count per (batch, state) is not kept: ``count_by_state(batch_id=...)`` walks the index
``(batch_id, state, ...)``, whose cost is the batch's size, not the store's.
"""

from __future__ import annotations

import sqlite3

from pipeline.models import JobState
from pipeline.store.base import empty_counts

__all__ = ["COUNTS_TRIGGER", "count_jobs_by_state", "install_job_counts"]

#: The trigger created last by :func:`install_job_counts`: present means the counts are installed.
COUNTS_TRIGGER = "jobs_count_state"
_ADD_ONE = (
    "INSERT INTO job_counts (state, jobs) VALUES ({row}.state, 1) ON CONFLICT (state) DO UPDATE SET jobs = jobs + 1;"
)
_TAKE_ONE = "UPDATE job_counts SET jobs = jobs - 1 WHERE state = {row}.state;"
#: Every statement is idempotent; run in one write transaction (``executescript`` would commit it).
_COUNTS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS job_counts (state TEXT PRIMARY KEY, jobs INTEGER NOT NULL) WITHOUT ROWID",
    "DELETE FROM job_counts",
    "INSERT INTO job_counts (state, jobs) SELECT state, COUNT(*) FROM jobs GROUP BY state",
    f"CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs BEGIN {_ADD_ONE.format(row='NEW')} END",
    f"CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs BEGIN {_TAKE_ONE.format(row='OLD')} END",
    f"CREATE TRIGGER IF NOT EXISTS {COUNTS_TRIGGER} AFTER UPDATE OF state ON jobs"
    f" WHEN OLD.state IS NOT NEW.state BEGIN {_TAKE_ONE.format(row='OLD')} {_ADD_ONE.format(row='NEW')} END",
)


def install_job_counts(conn: sqlite3.Connection) -> None:
    """Create the counts table and its triggers, and count the jobs already in the file.

    Call inside a write transaction (``BEGIN IMMEDIATE``), so no job is written between the count and
    the triggers. Safe to repeat: the table is recounted, existing triggers are kept.
    """
    for statement in _COUNTS_SCHEMA:
        conn.execute(statement)


def count_jobs_by_state(conn: sqlite3.Connection) -> dict[JobState, int]:
    """Jobs per state across the store, zeros included, from the counts table."""
    counts = empty_counts()
    for state, jobs in conn.execute("SELECT state, jobs FROM job_counts"):
        counts[JobState(state)] = int(jobs)
    return counts
