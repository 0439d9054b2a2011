"""Status store contract, continued: requeue, succeeded fingerprints and batch records, on both backends."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from cli.errors import hint_for
from pipeline.errors import JobNotFound, StoreUnavailable
from pipeline.models import BatchRecord, BatchRow, JobResult, JobState
from pipeline.store import RedisStatusStore, SqliteStatusStore, StatusStore
from tests.helpers import free_port
from tests.test_pipeline.test_store.test_jobs import BACKENDS, T0, make_error, make_spec, open_backend

#: Rows in the big-batch test, and fingerprints asked about at once (their speed is measured by the
#: bench, never timed here: a loaded CI machine made a 0.5 s budget fail).
MANY = 10_000


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StatusStore]:
    """Each implementation, empty."""
    made = open_backend(request.param, request, tmp_path)
    yield made
    made.close()


def make_batch(batch_id: str, *, rows: int = 2, created_at: float = T0) -> BatchRecord:
    return BatchRecord(
        batch_id=batch_id,
        created_at=created_at,
        source="/data/prompts.csv",
        rows=[
            BatchRow(line=i + 2, params={"prompt": f"cat {i}", "seed": i, "cfg": 7.5}, job_ids=[f"{batch_id}-{i}"])
            for i in range(rows)
        ],
    )


def ended(store: StatusStore, job_id: str, state: JobState) -> None:
    """Move ``job_id`` (queued) through generate into ``state``, or leave it running/queued."""
    if state is JobState.QUEUED:
        return
    store.start_step(job_id, "generate", now=T0 + 1)
    if state is JobState.SUCCEEDED:
        store.mark_succeeded(job_id, JobResult(image=f"{job_id}.png"), now=T0 + 2)
    elif state is JobState.FAILED:
        store.mark_failed(job_id, make_error(at=T0 + 2), now=T0 + 2)
    elif state is JobState.CANCELLED:
        store.mark_cancelled(job_id, now=T0 + 2)


# -- requeue --------------------------------------------------------------------------------------


@pytest.mark.parametrize("end", [JobState.FAILED, JobState.CANCELLED])
def test_requeue_moves_ended_job_back_to_queued(store: StatusStore, end: JobState) -> None:
    store.create_jobs([make_spec("j1", batch_id="b1"), make_spec("j2", batch_id="b1", created_at=T0 + 1)])
    store.record_error("j1", make_error(at=T0 + 1))
    ended(store, "j1", end)

    record = store.requeue("j1", now=T0 + 9)

    assert record is not None
    assert record == store.get("j1")
    assert (record.state, record.updated_at, record.created_at) == (JobState.QUEUED, T0 + 9, T0)
    assert record.steps["generate"].attempts == 1
    assert record.error is not None  # the last error stays as history
    assert store.count_by_state() == dict.fromkeys(JobState, 0) | {JobState.QUEUED: 2}
    assert store.count_by_state(batch_id="b1")[JobState.QUEUED] == 2
    assert [r.job_id for r in store.list_jobs(state=JobState.QUEUED, batch_id="b1")] == ["j2", "j1"]
    assert store.list_jobs(state=end) == store.list_jobs(state=end, batch_id="b1") == []
    # The retried job runs again: attempts go on counting.
    again = store.start_step("j1", "generate", now=T0 + 10)
    assert again is not None and again.steps["generate"].attempts == 2


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.GENERATING, JobState.SUCCEEDED])
def test_requeue_other_states_returns_none(store: StatusStore, state: JobState) -> None:
    store.create_jobs([make_spec("j1", batch_id="b1")])
    ended(store, "j1", state)
    before = store.get("j1")

    assert store.requeue("j1", now=T0 + 9) is None

    assert store.get("j1") == before
    assert store.count_by_state(batch_id="b1")[state] == 1


def test_requeue_twice_second_returns_none(store: StatusStore) -> None:
    store.create_jobs([make_spec("j1")])
    store.mark_cancelled("j1", now=T0 + 1)

    assert store.requeue("j1", now=T0 + 2) is not None
    assert store.requeue("j1", now=T0 + 3) is None
    assert store.get("j1").updated_at == T0 + 2


def test_requeue_unknown_job_raises_job_not_found(store: StatusStore) -> None:
    with pytest.raises(JobNotFound, match="no job 'nope'"):
        store.requeue("nope", now=T0)


# -- succeeded fingerprints -----------------------------------------------------------------------


def test_succeeded_fingerprints_only_counts_succeeded_jobs(store: StatusStore) -> None:
    states = [JobState.QUEUED, JobState.GENERATING, JobState.FAILED, JobState.CANCELLED, JobState.SUCCEEDED]
    store.create_jobs([make_spec(f"j-{state}", fingerprint=f"fp-{state}") for state in states])
    store.create_jobs([make_spec("no-fp"), make_spec("twin", fingerprint="fp-failed")])
    for state in states:
        ended(store, f"j-{state}", state)
    ended(store, "no-fp", JobState.SUCCEEDED)

    asked = [f"fp-{state}" for state in states] + ["fp-unknown", "fp-succeeded", ""]
    assert store.succeeded_fingerprints(asked) == {"fp-succeeded"}

    # A second job with the same fingerprint succeeding counts; so does a retried job that succeeds.
    ended(store, "twin", JobState.SUCCEEDED)
    store.requeue("j-cancelled", now=T0 + 3)
    store.start_step("j-cancelled", "merge", now=T0 + 4)
    store.mark_succeeded("j-cancelled", JobResult(), now=T0 + 5)
    assert store.succeeded_fingerprints(asked) == {"fp-succeeded", "fp-failed", "fp-cancelled"}


def test_succeeded_fingerprints_empty_input_returns_empty_set(store: StatusStore) -> None:
    assert store.succeeded_fingerprints([]) == set()


def test_succeeded_fingerprints_many_inputs_answered_in_full(store: StatusStore) -> None:
    store.create_jobs([make_spec(f"j{i}", fingerprint=f"fp{i:05}") for i in range(1000)])
    for i in range(0, 1000, 10):
        store.mark_succeeded(f"j{i}", JobResult(), now=T0 + 1)
    asked = [f"fp{i:05}" for i in range(MANY)]

    found = store.succeeded_fingerprints(asked)

    assert found == {f"fp{i:05}" for i in range(0, 1000, 10)}


# -- batches --------------------------------------------------------------------------------------


def test_save_batch_then_get_returns_it(store: StatusStore) -> None:
    batch = make_batch("b-1", rows=3).model_copy(update={"schedule": "nightly"})

    store.save_batch(batch)

    assert store.get_batch("b-1") == batch
    assert store.get_batch("b-1").job_ids == ["b-1-0", "b-1-1", "b-1-2"]


def test_get_batch_accepts_unique_prefix(store: StatusStore) -> None:
    for batch_id in ("3f2a0001", "3f2b0002", "77aa", "77aa01"):
        store.save_batch(make_batch(batch_id))

    assert store.get_batch("3f2a").batch_id == "3f2a0001"
    assert store.get_batch("3f2b").batch_id == "3f2b0002"
    assert store.get_batch("77aa").batch_id == "77aa"  # an exact id wins over longer ones
    assert store.get_batch("77aa0").batch_id == "77aa01"


def test_save_batch_replaces_existing(store: StatusStore) -> None:
    store.save_batch(make_batch("b-1", rows=3))
    replacement = make_batch("b-1", rows=1, created_at=T0 + 5)

    store.save_batch(replacement)

    assert store.get_batch("b-1") == replacement


def test_get_batch_ambiguous_prefix_raises_job_not_found(store: StatusStore) -> None:
    store.save_batch(make_batch("ab01"))
    store.save_batch(make_batch("ab02"))

    with pytest.raises(JobNotFound, match="'ab' matches several batches; give more characters") as caught:
        store.get_batch("ab")

    assert hint_for(caught.value) is not None and "sdpipe jobs --batch" in hint_for(caught.value)


@pytest.mark.parametrize("asked", ["zz", "ab011", "abc", "zz-b", ""])
def test_get_batch_unknown_raises_job_not_found(store: StatusStore, asked: str) -> None:
    store.save_batch(make_batch("ab01"))
    # Jobs, and the batch ids they carry, are not batch records.
    store.create_jobs([make_spec("abc", batch_id="zz-b")])

    with pytest.raises(JobNotFound, match=f"no batch matches {asked!r}") as caught:
        store.get_batch(asked)

    assert hint_for(caught.value) is not None and "sdpipe jobs" in hint_for(caught.value)


def test_get_batch_unusual_ids_round_trip(store: StatusStore) -> None:
    for batch_id in ("ünï:1", "ünï:1:x", "[a]"):
        store.save_batch(make_batch(batch_id))

    assert store.get_batch("ünï:1").batch_id == "ünï:1"
    assert store.get_batch("ünï:1:").batch_id == "ünï:1:x"
    assert store.get_batch("[").batch_id == "[a]"


def test_save_batch_many_rows_round_trip(store: StatusStore) -> None:
    batch = make_batch("big", rows=MANY)

    store.save_batch(batch)
    loaded = store.get_batch("bi")

    assert loaded == batch and len(loaded.job_ids) == MANY


# -- Redis only -----------------------------------------------------------------------------------


def test_redis_requeue_and_fingerprints_keep_indexes_in_sync(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = RedisStatusStore(client, namespace="t")
    store.create_jobs([make_spec("j1", batch_id="b", fingerprint="fp1"), make_spec("j2", fingerprint="fp2")])
    store.mark_failed("j1", make_error(), now=T0 + 1)

    store.requeue("j1", now=T0 + 2)
    store.mark_succeeded("j1", JobResult(), now=T0 + 3)
    store.mark_succeeded("j2", JobResult(), now=T0 + 3)
    store.save_batch(make_batch("b"))

    assert client.zrange("t:state:failed", 0, -1) == client.zrange("t:batch-state:failed:b", 0, -1) == []
    assert client.zrange("t:state:succeeded", 0, -1, withscores=True) == [("j1", T0), ("j2", T0)]
    assert client.zrange("t:batch-state:succeeded:b", 0, -1) == ["j1"]
    assert client.smembers("t:fp:succeeded") == {"fp1", "fp2"}
    assert client.zrange("t:batch-ids", 0, -1) == ["b"] and client.exists("t:batchrec:b")
    assert client.keys("sdpipe:*") == []
    store.close()
    client.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.requeue("j1", now=T0),
        lambda s: s.succeeded_fingerprints(["fp"]),
        lambda s: s.save_batch(make_batch("b")),
        lambda s: s.get_batch("b"),
    ],
    ids=["requeue", "succeeded_fingerprints", "save_batch", "get_batch"],
)
def test_redis_unreachable_new_calls_raise_store_unavailable(call: Callable[[StatusStore], object]) -> None:
    store = RedisStatusStore.from_url(f"redis://127.0.0.1:{free_port()}/0")

    with pytest.raises(StoreUnavailable, match="cannot reach Redis"):
        call(store)
    store.close()


# -- SQLite only ----------------------------------------------------------------------------------


def test_sqlite_file_without_fingerprint_column_is_upgraded(tmp_path: Path) -> None:
    # Given a status file written before jobs had fingerprints
    path = tmp_path / "status.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, batch_id TEXT, state TEXT NOT NULL, state_rank INTEGER NOT NULL,"
        " created_at REAL NOT NULL, updated_at REAL NOT NULL, spec TEXT NOT NULL, error TEXT, result TEXT,"
        " sd_info TEXT);"
    )
    old.execute(
        "INSERT INTO jobs VALUES ('old', NULL, 'succeeded', 5, ?, ?, ?, NULL, '{}', NULL)",
        (T0, T0, make_spec("old").model_dump_json(exclude={"fingerprint"})),
    )
    old.commit()
    old.close()

    # When the store opens it (twice: the upgrade runs once)
    SqliteStatusStore(path).close()
    store = SqliteStatusStore(path)

    # Then old jobs read as before and new ones are indexed by fingerprint
    assert store.get("old").state is JobState.SUCCEEDED
    store.create_jobs([make_spec("new", fingerprint="fp")])
    store.mark_succeeded("new", JobResult(), now=T0 + 1)
    assert store.succeeded_fingerprints(["fp", "other"]) == {"fp"}
    with store._transaction(write=False) as conn:
        plan = " | ".join(
            str(row[3])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT DISTINCT fingerprint FROM jobs WHERE fingerprint IN (?, ?) AND state = ?",
                ("a", "b", "succeeded"),
            )
        )
    assert "jobs_fingerprint_state" in plan, plan
    store.close()
