"""The embedded store's per-state counts (``job_counts``, kept by triggers): exact after every kind of write."""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import sqlite3
from multiprocessing.synchronize import Barrier
from pathlib import Path

from pipeline.errors import JobNotFound
from pipeline.models import STEP_NAMES, JobResult, JobState
from pipeline.store import SqliteStatusStore
from tests.test_pipeline.test_store.test_jobs import T0, make_error, make_spec

#: Writer processes in the cross-process test, and the jobs each one creates.
PROCESSES = 4
JOBS_EACH = 60


def counted_from_rows(path: Path) -> dict[JobState, int]:
    """The truth: jobs per state counted from the rows themselves, zeros included."""
    conn = sqlite3.connect(path)
    try:
        rows = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    finally:
        conn.close()
    return {state: int(rows.get(state.value, 0)) for state in JobState}


def make_old_file(path: Path) -> None:
    """Turn the file into one made before the counts: no ``job_counts`` table, no triggers."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for name in ("jobs_count_insert", "jobs_count_delete", "jobs_count_state"):
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("DROP TABLE job_counts")
    finally:
        conn.close()


def test_counts_exact_after_inserts_state_changes_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "status.sqlite3"
    store = SqliteStatusStore(path)
    # Inserts, one of them an id already there (not inserted again)
    store.create_jobs([make_spec(f"j{i}", batch_id="b") for i in range(6)])
    store.create_jobs([make_spec("j0"), make_spec("j6")])
    assert store.count_by_state() == counted_from_rows(path) == dict.fromkeys(JobState, 0) | {JobState.QUEUED: 7}
    # State changes, refused ones (backwards, after the end) and writes that leave the state as it is
    store.start_step("j0", "generate", now=T0 + 1)
    store.start_step("j0", "generate", now=T0 + 2)
    store.finish_step("j0", "generate", now=T0 + 3)
    store.start_step("j1", "merge", now=T0 + 1)
    assert store.start_step("j1", "split", now=T0 + 2) is None
    store.record_error("j2", make_error())
    store.mark_failed("j2", make_error(), now=T0 + 4)
    store.mark_succeeded("j1", JobResult(), now=T0 + 4)
    assert store.mark_cancelled("j1", now=T0 + 5) is False
    store.mark_cancelled("j3", now=T0 + 4)
    store.mark_cancelled("j4", now=T0 + 4)
    store.requeue("j4", now=T0 + 5)
    expected = dict.fromkeys(JobState, 0) | {
        JobState.QUEUED: 3,
        JobState.GENERATING: 1,
        JobState.SUCCEEDED: 1,
        JobState.FAILED: 1,
        JobState.CANCELLED: 1,
    }
    assert store.count_by_state() == counted_from_rows(path) == expected
    # Deletes (prune): ended jobs go, live ones and unknown ids are left alone
    assert sorted(store.delete_jobs(["j1", "j2", "j3", "j5", "missing"])) == ["j1", "j2", "j3"]
    expected = dict.fromkeys(JobState, 0) | {JobState.QUEUED: 3, JobState.GENERATING: 1}
    assert store.count_by_state() == counted_from_rows(path) == expected
    store.close()


def test_counts_exact_after_creating_more_jobs_than_one_insert_statement_holds(tmp_path: Path) -> None:
    # Given jobs already there, When one call creates 250 jobs (several INSERT statements) of which
    # some exist already, one of them at a statement boundary, and one id comes twice
    path = tmp_path / "status.sqlite3"
    store = SqliteStatusStore(path)
    store.create_jobs([make_spec("j099", created_at=T0 - 1), make_spec("j200", created_at=T0 - 1)])
    store.mark_failed("j200", make_error(), now=T0)
    specs = [make_spec(f"j{i:03}") for i in range(250)] + [make_spec("j007")]

    records = store.create_jobs(specs)

    # Then each existing job keeps its record, and the counts hold every job once
    assert [record.job_id for record in records] == [spec.job_id for spec in specs]
    assert (records[99].created_at, records[200].state) == (T0 - 1, JobState.FAILED)
    expected = dict.fromkeys(JobState, 0) | {JobState.QUEUED: 249, JobState.FAILED: 1}
    assert store.count_by_state() == counted_from_rows(path) == expected
    store.close()


def test_counts_read_from_the_counts_table_not_the_jobs(tmp_path: Path) -> None:
    store = SqliteStatusStore(tmp_path / "status.sqlite3")
    store.create_jobs([make_spec("j0")])
    statements: list[str] = []
    with store._transaction(write=False) as conn:
        conn.set_trace_callback(statements.append)

    store.count_by_state()

    queries = [sql for sql in statements if sql.startswith("SELECT")]
    assert queries == ["SELECT state, jobs FROM job_counts"]
    store.close()


def test_counts_added_to_an_existing_file_without_them(tmp_path: Path) -> None:
    # Given a file made before the counts, holding jobs in several states
    path = tmp_path / "status.sqlite3"
    old = SqliteStatusStore(path)
    old.create_jobs([make_spec(f"j{i}") for i in range(5)])
    old.mark_failed("j0", make_error(), now=T0 + 1)
    old.start_step("j1", "split", now=T0 + 1)
    old.close()
    make_old_file(path)

    # When this sdpipe opens it
    store = SqliteStatusStore(path)

    # Then the counts hold the jobs already there, and follow every write from then on, including
    # writes by a program that knows nothing of them (an older sdpipe: the triggers are in the file)
    assert store.count_by_state() == dict.fromkeys(JobState, 0) | {
        JobState.QUEUED: 3,
        JobState.SPLITTING: 1,
        JobState.FAILED: 1,
    }
    store.create_jobs([make_spec("j5")])
    store.mark_succeeded("j1", JobResult(), now=T0 + 2)
    store.delete_jobs(["j0"])
    older = sqlite3.connect(path, isolation_level=None)
    older.execute("UPDATE jobs SET state = 'cancelled', state_rank = 100 WHERE job_id = 'j2'")
    older.execute("DELETE FROM jobs WHERE job_id = 'j3'")
    older.close()
    expected = dict.fromkeys(JobState, 0) | {JobState.QUEUED: 2, JobState.SUCCEEDED: 1, JobState.CANCELLED: 1}
    assert store.count_by_state() == counted_from_rows(path) == expected
    store.close()
    # And opening it again leaves the counts as they are
    again = SqliteStatusStore(path)
    assert again.count_by_state() == counted_from_rows(path)
    again.close()


def _move(store: SqliteStatusStore, job_id: str, rng: random.Random, worker: int) -> None:
    """Start a random step of the job, then maybe end it one of three ways, then maybe requeue it."""
    now = T0 + rng.random()
    store.start_step(job_id, rng.choice(STEP_NAMES), now=now)
    ending = rng.choice(["succeeded", "failed", "cancelled", "live"])
    if ending == "succeeded":
        store.mark_succeeded(job_id, JobResult(by=worker), now=now)
    elif ending == "failed":
        store.mark_failed(job_id, make_error(), now=now)
    elif ending == "cancelled":
        store.mark_cancelled(job_id, now=now)
    if rng.random() < 0.2:
        store.requeue(job_id, now=now)


def _write_in_process(path: str, worker: int, start: Barrier) -> None:
    """A worker process: open the file (upgrading it, maybe at once with the others), then create,
    move, end, requeue and delete its own jobs and race on everyone's, in random order."""
    rng = random.Random(worker)
    start.wait(timeout=60)
    store = SqliteStatusStore(Path(path))
    try:
        ids = [f"w{worker}-{i}" for i in range(JOBS_EACH)]
        shared = [f"old-{i}" for i in range(20)]
        for start_at in range(0, JOBS_EACH, 10):
            store.create_jobs([make_spec(job_id) for job_id in ids[start_at : start_at + 10]])
        for job_id in rng.sample(ids + shared, len(ids) + len(shared)):
            with contextlib.suppress(JobNotFound):  # a shared job another process already deleted
                _move(store, job_id, rng, worker)
        store.delete_jobs(rng.sample(ids + shared, 30))
    finally:
        store.close()


def test_counts_exact_with_several_processes_writing_and_upgrading_at_once(tmp_path: Path) -> None:
    # Given a file made before the counts, with 20 queued jobs every process will race on
    path = tmp_path / "status.sqlite3"
    old = SqliteStatusStore(path)
    old.create_jobs([make_spec(f"old-{i}") for i in range(20)])
    old.close()
    make_old_file(path)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    processes = [
        context.Process(target=_write_in_process, args=(str(path), worker, start)) for worker in range(PROCESSES)
    ]

    # When several processes open it at once and write to it concurrently
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)

    # Then every one finished and the counts are those of the rows
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    store = SqliteStatusStore(path)
    counts = store.count_by_state()
    assert counts == counted_from_rows(path)
    assert 0 < sum(counts.values()) < 20 + PROCESSES * JOBS_EACH
    store.close()
