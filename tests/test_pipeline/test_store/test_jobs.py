"""Status store contract: one suite run against both implementations, plus each one's own behaviour."""

from __future__ import annotations

import random
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

import pipeline.store
from cli.errors import hint_for
from pipeline.errors import ConfigError, JobNotFound, StoreUnavailable
from pipeline.jobs.planning import watch_jobs
from pipeline.models import STEP_NAMES, ErrorInfo, JobResult, JobSpec, JobState, SDInfo, StepParams
from pipeline.settings import Settings
from pipeline.store import (
    DEFAULT_LIST_LIMIT,
    RedisStatusStore,
    SqliteStatusStore,
    StatusStore,
    open_store,
)
from pipeline.store.sqlite import _list_query
from tests.helpers import RedisServer, free_port

#: Jobs created by the scale test in each backend.
MANY_JOBS = 100_000
T0 = 1_700_000_000.125
#: The ``store`` fixture's parameters (every suite over both backends uses them).
BACKENDS = ["redis", "sqlite"]


def make_spec(
    job_id: str, *, created_at: float = T0, batch_id: str | None = None, fingerprint: str | None = None
) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        kind="process",
        batch_id=batch_id,
        step_params=StepParams(),
        output_name=f"out/{job_id}",
        source_name="in.png",
        fingerprint=fingerprint,
        created_at=created_at,
    )


def make_error(step: str = "generate", at: float = T0 + 5) -> ErrorInfo:
    return ErrorInfo(step=step, type="SDServerError", message="CUDA out of memory", transient=True, at=at)


def open_backend(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StatusStore:
    """A store of ``backend`` (one of BACKENDS); called twice, two instances on the same data."""
    if backend == "redis":
        return RedisStatusStore.from_url(request.getfixturevalue("redis_url"))
    return SqliteStatusStore(tmp_path / "status.sqlite3")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StatusStore]:
    """Each implementation, empty."""
    made = open_backend(request.param, request, tmp_path)
    yield made
    made.close()


@pytest.fixture
def job(store: StatusStore) -> str:
    """One queued job in ``store``."""
    store.create_jobs([make_spec("job-1", batch_id="b1")])
    return "job-1"


# -- create / get ---------------------------------------------------------------------------------


def test_create_jobs_records_queued_jobs(store: StatusStore) -> None:
    spec = make_spec("a1", created_at=T0 + 0.1, batch_id="b1")

    [created] = store.create_jobs([spec])

    stored = store.get("a1")
    assert created == stored
    assert stored.state is JobState.QUEUED
    assert stored.spec == spec
    assert stored.batch_id == "b1"
    assert stored.created_at == stored.updated_at == T0 + 0.1
    assert stored.steps == {}
    assert stored.error is None and stored.result is None and stored.sd_info is None


def test_create_jobs_keeps_existing_record(store: StatusStore) -> None:
    store.create_jobs([make_spec("a1")])
    store.start_step("a1", "generate", now=T0 + 1)

    records = store.create_jobs([make_spec("a1", created_at=T0 + 9), make_spec("a2"), make_spec("a2")])

    assert [r.job_id for r in records] == ["a1", "a2", "a2"]
    assert records[0].state is JobState.GENERATING and records[0].created_at == T0
    assert store.get("a1") == records[0]
    assert store.count_by_state()[JobState.QUEUED] == 1


def test_create_jobs_empty_input_returns_empty_list(store: StatusStore) -> None:
    assert store.create_jobs([]) == []


def test_create_jobs_accepts_unusual_ids_and_batches(store: StatusStore) -> None:
    # Colons and non-ASCII text must not collide with another job's or batch's keys.
    store.create_jobs([make_spec("ünï:1", batch_id="a:b"), make_spec("ünï:2", batch_id="a")])
    store.start_step("ünï:1", "generate", now=T0 + 1)

    assert store.get("ünï:1").batch_id == "a:b"
    assert store.resolve_id("ünï:2") == "ünï:2"
    assert [r.job_id for r in store.list_jobs(state=JobState.GENERATING, batch_id="a:b")] == ["ünï:1"]
    assert [r.job_id for r in store.list_jobs(batch_id="a")] == ["ünï:2"]
    assert store.count_by_state(batch_id="a")[JobState.QUEUED] == 1


def test_get_unknown_id_raises_job_not_found(store: StatusStore) -> None:
    with pytest.raises(JobNotFound, match="no job 'nope'"):
        store.get("nope")


def test_get_many_returns_one_record_per_id_in_the_order_given(store: StatusStore) -> None:
    store.create_jobs([make_spec("j1"), make_spec("j2", batch_id="b"), make_spec("j3")])
    store.start_step("j2", "generate", now=T0 + 1)
    store.mark_succeeded("j3", JobResult(image="out/j3.png"), now=T0 + 2)

    records = store.get_many(["j3", "j1", "j2", "j1"])

    assert [record.job_id for record in records] == ["j3", "j1", "j2", "j1"]
    assert records == [store.get("j3"), store.get("j1"), store.get("j2"), store.get("j1")]
    assert records[2].steps["generate"].attempts == 1 and records[0].result == JobResult(image="out/j3.png")


def test_get_many_of_no_ids_returns_empty_list(store: StatusStore) -> None:
    assert store.get_many([]) == []


def test_get_many_with_an_unknown_id_raises_job_not_found_naming_it(store: StatusStore) -> None:
    store.create_jobs([make_spec("j1")])

    with pytest.raises(JobNotFound, match="no job 'nope'"):
        store.get_many(["j1", "nope"])


def test_get_many_reads_more_ids_than_one_query_chunk(store: StatusStore) -> None:
    ids = [f"job-{index:04d}" for index in range(1_200)]
    store.create_jobs([make_spec(job_id, created_at=T0 + index) for index, job_id in enumerate(ids)])
    store.start_step(ids[-1], "split", now=T0 + 2_000)

    records = store.get_many(ids[::-1])

    assert [record.job_id for record in records] == ids[::-1]
    assert records[0].state is JobState.SPLITTING
    assert {record.state for record in records[1:]} == {JobState.QUEUED}


# -- transitions ----------------------------------------------------------------------------------


def test_start_step_moves_forward_and_counts_attempt(store: StatusStore, job: str) -> None:
    record = store.start_step(job, "generate", now=T0 + 1)

    assert record is not None
    assert record.state is JobState.GENERATING
    assert record.updated_at == T0 + 1
    assert record.steps["generate"].attempts == 1
    assert record.steps["generate"].started_at == T0 + 1
    assert store.get(job) == record


def test_start_step_redelivered_counts_another_attempt(store: StatusStore, job: str) -> None:
    store.start_step(job, "split", now=T0 + 1)
    store.finish_step(job, "split", now=T0 + 2)

    record = store.start_step(job, "split", now=T0 + 3)

    assert record is not None
    step = record.steps["split"]
    assert (step.attempts, step.started_at) == (2, T0 + 3)
    # The new attempt has not finished: the previous attempt's end is not shown as this one's.
    assert (step.finished_at, step.duration_s, step.skipped) == (None, None, False)


def test_start_step_after_returns_the_step_as_it_was_before_this_start(store: StatusStore, job: str) -> None:
    record, previous = store.start_step_after(job, "split", now=T0 + 1)
    assert record is not None and previous is None  # never started before
    record, previous = store.start_step_after(job, "split", now=T0 + 2)  # the first delivery never finished
    assert record is not None and record.steps["split"].attempts == 2
    assert previous is not None and (previous.started_at, previous.finished_at) == (T0 + 1, None)
    store.finish_step(job, "split", now=T0 + 3)
    record, previous = store.start_step_after(job, "split", now=T0 + 4)
    assert previous is not None and (previous.started_at, previous.finished_at) == (T0 + 2, T0 + 3)
    store.mark_cancelled(job, now=T0 + 5)
    assert store.start_step_after(job, "split", now=T0 + 6) == (None, None)


def test_start_step_backwards_is_refused(store: StatusStore, job: str) -> None:
    store.start_step(job, "generate", now=T0 + 1)
    store.start_step(job, "seam_blur", now=T0 + 2)

    assert store.start_step(job, "split", now=T0 + 3) is None

    record = store.get(job)
    assert record.state is JobState.BLURRING
    assert "split" not in record.steps
    assert record.updated_at == T0 + 2


@pytest.mark.parametrize("end", ["succeeded", "failed", "cancelled"])
def test_start_step_on_terminal_job_is_refused(store: StatusStore, job: str, end: str) -> None:
    finish: dict[str, Callable[[], bool]] = {
        "succeeded": lambda: store.mark_succeeded(job, JobResult(image="x.png"), now=T0 + 1),
        "failed": lambda: store.mark_failed(job, make_error(), now=T0 + 1),
        "cancelled": lambda: store.mark_cancelled(job, now=T0 + 1),
    }
    assert finish[end]()

    assert store.start_step(job, "generate", now=T0 + 2) is None
    assert store.get(job).state == JobState(end)
    assert store.get(job).steps == {}


def test_finish_step_records_timing_without_changing_state(store: StatusStore, job: str) -> None:
    store.start_step(job, "generate", now=T0 + 1)

    store.finish_step(job, "generate", now=T0 + 3.75, skipped=True)

    record = store.get(job)
    assert record.state is JobState.GENERATING
    step = record.steps["generate"]
    assert (step.finished_at, step.duration_s, step.skipped) == (T0 + 3.75, (T0 + 3.75) - (T0 + 1), True)
    assert record.updated_at == T0 + 3.75


def test_steps_listed_in_pipeline_order(store: StatusStore, job: str) -> None:
    for offset, step in enumerate(STEP_NAMES):
        store.start_step(job, step, now=T0 + offset)

    assert list(store.get(job).steps) == list(STEP_NAMES)


def test_record_error_keeps_state(store: StatusStore, job: str) -> None:
    store.start_step(job, "generate", now=T0 + 1)

    store.record_error(job, make_error(at=T0 + 2))

    record = store.get(job)
    assert record.state is JobState.GENERATING
    assert record.error == make_error(at=T0 + 2)
    assert record.updated_at == T0 + 2


def test_set_sd_info_stores_dict(store: StatusStore, job: str) -> None:
    info = {"seed": 4294967294, "model_name": "sd_xl", "version": "v1.10.1", "nested": {"a": [1, 2.5]}}

    store.set_sd_info(job, SDInfo(**info))

    assert store.get(job).sd_info == SDInfo(**info)


def test_mark_succeeded_sets_result_once(store: StatusStore, job: str) -> None:
    store.start_step(job, "merge", now=T0 + 1)

    assert store.mark_succeeded(job, JobResult(image="out/job-1.png", bytes=10), now=T0 + 2)
    assert not store.mark_failed(job, make_error(), now=T0 + 3)
    assert not store.mark_cancelled(job, now=T0 + 3)
    assert not store.mark_succeeded(job, JobResult(image="other.png"), now=T0 + 3)

    record = store.get(job)
    assert record.state is JobState.SUCCEEDED
    assert record.result == JobResult(image="out/job-1.png", bytes=10)
    assert record.error is None
    assert record.updated_at == T0 + 2


def test_end_step_stores_sd_info_with_the_finish(store: StatusStore, job: str) -> None:
    store.start_step(job, "generate", now=T0 + 1)

    assert store.end_step(job, "generate", now=T0 + 3, sd_info=SDInfo(seed=7, model_name="sd_xl"))

    record = store.get(job)
    assert record.state is JobState.GENERATING
    assert record.sd_info == SDInfo(seed=7, model_name="sd_xl")
    step = record.steps["generate"]
    assert (step.finished_at, step.duration_s, step.skipped) == (T0 + 3, 2.0, False)


def test_end_step_with_result_finishes_the_step_and_the_job(store: StatusStore, job: str) -> None:
    store.start_step(job, "merge", now=T0 + 1)

    assert store.end_step(job, "merge", now=T0 + 2.5, skipped=True, result=JobResult(image="out/a.png", bytes=3))

    record = store.get(job)
    assert (record.state, record.result, record.updated_at) == (
        JobState.SUCCEEDED,
        JobResult(image="out/a.png", bytes=3),
        T0 + 2.5,
    )
    step = record.steps["merge"]
    assert (step.finished_at, step.duration_s, step.skipped) == (T0 + 2.5, 1.5, True)
    assert store.count_by_state()[JobState.SUCCEEDED] == 1


def test_end_step_with_result_leaves_a_cancelled_job_cancelled(store: StatusStore, job: str) -> None:
    store.start_step(job, "merge", now=T0 + 1)
    store.mark_cancelled(job, now=T0 + 2)

    assert not store.end_step(job, "merge", now=T0 + 3, result=JobResult(image="out/a.png"))

    record = store.get(job)
    assert (record.state, record.result) == (JobState.CANCELLED, None)
    assert record.steps["merge"].finished_at == T0 + 3


def test_end_step_of_the_last_step_reads_its_batch_counts_in_redis(redis_url: str) -> None:
    redis_store = RedisStatusStore.from_url(redis_url)
    redis_store.create_jobs([make_spec(f"b{i}", batch_id="batch-1") for i in range(3)])
    redis_store.start_step("b0", "merge", now=T0 + 1)
    redis_store.mark_failed("b1", make_error(), now=T0 + 1)
    counts: dict[JobState, int] = {}

    assert redis_store.end_step("b0", "merge", now=T0 + 2, result=JobResult(image="out/b0.png"), batch_counts=counts)

    assert counts == redis_store.count_by_state(batch_id="batch-1")
    assert (counts[JobState.SUCCEEDED], counts[JobState.FAILED], counts[JobState.QUEUED]) == (1, 1, 1)


def test_end_step_leaves_batch_counts_alone_when_the_job_did_not_move(store: StatusStore) -> None:
    store.create_jobs([make_spec("c0", batch_id="batch-2")])
    store.start_step("c0", "merge", now=T0 + 1)
    store.mark_cancelled("c0", now=T0 + 2)
    counts: dict[JobState, int] = {}

    assert not store.end_step("c0", "merge", now=T0 + 3, result=JobResult(image="out/c0.png"), batch_counts=counts)

    assert counts == {}


def test_end_step_of_a_missing_job_raises(store: StatusStore) -> None:
    with pytest.raises(JobNotFound):
        store.end_step("nope", "merge", now=T0, result=JobResult(image="x.png"))
    with pytest.raises(JobNotFound):
        store.end_step("nope", "generate", now=T0, sd_info=SDInfo(seed=1))


def test_mark_failed_sets_error(store: StatusStore, job: str) -> None:
    store.start_step(job, "generate", now=T0 + 1)

    assert store.mark_failed(job, make_error(at=T0 + 2), now=T0 + 2)

    record = store.get(job)
    assert (record.state, record.error, record.result) == (JobState.FAILED, make_error(at=T0 + 2), None)


def test_mark_cancelled_works_from_queued(store: StatusStore, job: str) -> None:
    assert store.mark_cancelled(job, now=T0 + 1)

    assert store.get(job).state is JobState.CANCELLED


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.start_step("nope", "generate", now=T0),
        lambda s: s.finish_step("nope", "generate", now=T0),
        lambda s: s.record_error("nope", make_error()),
        lambda s: s.set_sd_info("nope", SDInfo()),
        lambda s: s.mark_succeeded("nope", JobResult(), now=T0),
        lambda s: s.mark_failed("nope", make_error(), now=T0),
        lambda s: s.mark_cancelled("nope", now=T0),
    ],
    ids=["start_step", "finish_step", "record_error", "set_sd_info", "succeeded", "failed", "cancelled"],
)
def test_writes_to_unknown_job_raise_job_not_found(store: StatusStore, call: Callable[[StatusStore], object]) -> None:
    with pytest.raises(JobNotFound):
        call(store)

    assert store.list_jobs() == []


# -- listing, counting, ids -----------------------------------------------------------------------


def test_list_jobs_newest_first_ties_by_id(store: StatusStore) -> None:
    store.create_jobs([make_spec("b", created_at=T0), make_spec("c", created_at=T0), make_spec("a", created_at=T0 + 1)])

    assert [r.job_id for r in store.list_jobs()] == ["a", "c", "b"]
    assert [r.job_id for r in store.list_jobs(limit=2)] == ["a", "c"]
    assert store.list_jobs(limit=0) == []


def test_list_jobs_pages_with_offset(store: StatusStore) -> None:
    store.create_jobs([make_spec(f"j{i}", created_at=T0 + i, batch_id="b1" if i % 2 else "b2") for i in range(7)])

    pages = [[r.job_id for r in store.list_jobs(limit=3, offset=offset)] for offset in (0, 3, 6, 9)]
    assert pages == [["j6", "j5", "j4"], ["j3", "j2", "j1"], ["j0"], []]
    assert [r.job_id for r in store.list_jobs(batch_id="b1", limit=2, offset=1)] == ["j3", "j1"]


def test_list_jobs_filters_follow_transitions(store: StatusStore) -> None:
    store.create_jobs([make_spec(f"j{i}", created_at=T0 + i, batch_id="b1" if i % 2 else "b2") for i in range(6)])
    store.start_step("j1", "generate", now=T0 + 10)
    store.start_step("j2", "generate", now=T0 + 10)
    store.start_step("j3", "generate", now=T0 + 10)
    store.mark_failed("j3", make_error(), now=T0 + 11)

    def ids(**filters: object) -> list[str]:
        return [r.job_id for r in store.list_jobs(**filters)]  # type: ignore[arg-type]

    assert ids(state=JobState.GENERATING) == ["j2", "j1"]
    assert ids(state=JobState.QUEUED) == ["j5", "j4", "j0"]
    assert ids(state=JobState.FAILED) == ["j3"]
    assert ids(batch_id="b1") == ["j5", "j3", "j1"]
    assert ids(state=JobState.GENERATING, batch_id="b1") == ["j1"]
    assert ids(state=JobState.QUEUED, batch_id="b1", limit=1) == ["j5"]
    assert ids(state=JobState.SUCCEEDED) == []
    assert ids(batch_id="none") == []


def test_list_jobs_default_limit(store: StatusStore) -> None:
    store.create_jobs([make_spec(f"j{i:03}", created_at=T0 + i) for i in range(DEFAULT_LIST_LIMIT + 5)])

    listed = store.list_jobs()

    assert len(listed) == DEFAULT_LIST_LIMIT
    assert listed[0].job_id == f"j{DEFAULT_LIST_LIMIT + 4:03}"


def test_count_by_state_includes_zeros_and_follows_transitions(store: StatusStore) -> None:
    store.create_jobs([make_spec(f"j{i}", batch_id="b1" if i < 3 else None) for i in range(5)])
    store.start_step("j0", "split", now=T0 + 1)
    store.start_step("j0", "merge", now=T0 + 2)
    store.mark_succeeded("j0", JobResult(), now=T0 + 3)
    store.mark_cancelled("j3", now=T0 + 3)
    store.mark_cancelled("j3", now=T0 + 4)

    expected_all = dict.fromkeys(JobState, 0) | {JobState.QUEUED: 3, JobState.SUCCEEDED: 1, JobState.CANCELLED: 1}
    assert store.count_by_state() == expected_all
    assert store.count_by_state(batch_id="b1") == dict.fromkeys(JobState, 0) | {
        JobState.QUEUED: 2,
        JobState.SUCCEEDED: 1,
    }
    assert store.count_by_state(batch_id="other") == dict.fromkeys(JobState, 0)
    assert list(store.count_by_state()) == list(JobState)


def test_resolve_id_prefers_exact_then_unique_prefix(store: StatusStore) -> None:
    store.create_jobs([make_spec(i) for i in ("abc", "abcd", "abx9", "zz")])

    assert store.resolve_id("abc") == "abc"
    assert store.resolve_id("abx") == "abx9"
    assert store.resolve_id("z") == "zz"
    with pytest.raises(JobNotFound, match="'ab' matches several jobs; give more characters"):
        store.resolve_id("ab")
    with pytest.raises(JobNotFound, match="no job matches 'q'"):
        store.resolve_id("q")
    with pytest.raises(JobNotFound, match="no job matches 'zzz'"):
        store.resolve_id("zzz")
    with pytest.raises(JobNotFound):
        store.resolve_id("")


def test_ping_answers_while_the_store_is_reachable_and_raises_once_it_is_not(
    store: StatusStore, tmp_path: Path
) -> None:
    # Given a reachable store, ping answers
    store.ping()
    # When the same kind of store has lost its backing (Redis not answering, the SQLite folder gone)
    if isinstance(store, RedisStatusStore):
        gone: StatusStore = RedisStatusStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    else:
        folder = tmp_path / "gone"
        folder.mkdir()
        gone = SqliteStatusStore(folder / "status.sqlite3")
        gone.close()
        shutil.rmtree(folder)
    # Then ping says so
    with pytest.raises(StoreUnavailable):
        gone.ping()
    gone.close()


# -- concurrency and scale ------------------------------------------------------------------------


def test_concurrent_transitions_never_move_backwards(store: StatusStore, job: str) -> None:
    # Given 8 workers racing on one job with steps redelivered in random order, two of them
    # trying to finish it halfway through, and a watcher reading the job all along
    threads_count, calls_each = 8, 40
    lock = threading.Lock()
    started: list[str] = []
    winners: list[int] = []
    late_starts: list[str] = []
    seen_ranks: list[int] = []
    errors: list[BaseException] = []
    ended, stop = threading.Event(), threading.Event()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for call in range(calls_each):
                if seed < 2 and call == calls_each // 2:
                    if store.mark_succeeded(job, JobResult(by=seed), now=T0 + call):
                        winners.append(seed)
                        ended.set()
                    continue
                after_end = ended.is_set()
                rank_before = store.get(job).state.rank
                step = rng.choice(STEP_NAMES)
                record = store.start_step(job, step, now=T0 + call)
                if record is not None:
                    assert record.state is JobState.for_step(step)
                    assert record.state.rank >= rank_before, f"{step} moved the job back"
                    with lock:
                        started.append(step)
                        if after_end:
                            late_starts.append(step)
        except BaseException as exc:
            errors.append(exc)

    def watch() -> None:
        while not stop.is_set():
            seen_ranks.append(store.get(job).state.rank)

    watcher = threading.Thread(target=watch)
    workers = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads_count)]
    # When they all run
    watcher.start()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    watcher.join()

    # Then the watcher never saw a backwards move, exactly one finish won, nothing started after
    # it, and no attempt was lost
    assert errors == []
    assert len(seen_ranks) > 1 and seen_ranks == sorted(seen_ranks)
    assert len(winners) == 1 and late_starts == []
    record = store.get(job)
    assert record.state is JobState.SUCCEEDED and record.result == JobResult(by=winners[0])
    assert {name: step.attempts for name, step in record.steps.items()} == {
        name: started.count(name) for name in set(started)
    }


def test_many_jobs_queries_answer_from_the_whole_store(store: StatusStore) -> None:
    # Given MANY_JOBS jobs in 100 batches, some of them failed (how fast the queries are at this scale
    # is bench target 5's to judge: bench/t5_store_scale.py)
    specs = [make_spec(f"{i:08x}", created_at=T0 + i, batch_id=f"batch-{i % 100}") for i in range(MANY_JOBS - 1)]
    specs.append(make_spec("zz-odd-one", created_at=T0 - 1))
    store.create_jobs(specs)
    failed_ids = [f"{i:08x}" for i in range(0, MANY_JOBS, 1000)]
    for job_id in failed_ids:
        store.mark_failed(job_id, make_error(), now=T0 + MANY_JOBS)

    # When the CLI's queries run, Then each answers for all MANY_JOBS jobs
    assert [r.job_id for r in store.list_jobs(limit=2)] == [f"{MANY_JOBS - 2:08x}", f"{MANY_JOBS - 3:08x}"]
    assert [r.job_id for r in store.list_jobs(state=JobState.FAILED, limit=1000)] == failed_ids[::-1]
    # (every failed job's number is a multiple of 1000, so of 100: all of them are in batch-0)
    assert [r.job_id for r in store.list_jobs(state=JobState.FAILED, batch_id="batch-0")] == failed_ids[::-1][
        :DEFAULT_LIST_LIMIT
    ]
    assert store.list_jobs(state=JobState.FAILED, batch_id="batch-7") == []
    assert store.get(f"{MANY_JOBS // 2:08x}").created_at == T0 + MANY_JOBS // 2
    assert store.resolve_id("zz-o") == "zz-odd-one"
    counts, batch_counts = store.count_by_state(), store.count_by_state(batch_id="batch-7")
    assert (counts[JobState.QUEUED], counts[JobState.FAILED]) == (MANY_JOBS - len(failed_ids), len(failed_ids))
    assert sum(counts.values()) == MANY_JOBS
    assert batch_counts[JobState.QUEUED] == sum(batch_counts.values()) == MANY_JOBS // 100


# -- Redis only -----------------------------------------------------------------------------------


def test_redis_unreachable_raises_store_unavailable_without_password() -> None:
    port = free_port()
    store = RedisStatusStore.from_url(f"redis://:hunter2-secret@127.0.0.1:{port}/0")

    with pytest.raises(StoreUnavailable) as caught:
        store.ping()

    text = str(caught.value)
    assert caught.value.message == f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0: Connection refused"
    assert hint_for(caught.value) == "is redis-server running? check REDIS_URL"
    assert "\n" not in text and "hunter2" not in text and "hunter2" not in repr(caught.value)
    assert caught.value.transient


@pytest.mark.parametrize("password", [None, "wrong-password"])
def test_redis_bad_password_raises_store_unavailable(tmp_path: Path, password: str | None) -> None:
    server = RedisServer(port=free_port(), directory=tmp_path, password="right-password")
    server.start()
    try:
        auth = f":{password}@" if password else ""
        store = RedisStatusStore.from_url(f"redis://{auth}127.0.0.1:{server.port}/0")

        with pytest.raises(StoreUnavailable) as caught:
            store.get("job-1")

        assert caught.value.message.startswith(f"Redis at redis://{':***@' if password else ''}127.0.0.1:")
        assert hint_for(caught.value) == "check REDIS_PASSWORD or the password in REDIS_URL"
        assert "wrong-password" not in str(caught.value) and "right-password" not in str(caught.value)
        store.close()
    finally:
        server.stop()


def test_redis_transitions_keep_indexes_in_sync(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = RedisStatusStore(client, namespace="t")
    store.create_jobs([make_spec("j1", batch_id="b"), make_spec("j2", created_at=T0 + 1)])

    store.start_step("j1", "split", now=T0 + 2)
    store.mark_failed("j1", make_error(), now=T0 + 3)

    assert client.zrange("t:state:failed", 0, -1) == ["j1"]
    assert client.zrange("t:state:splitting", 0, -1) == []
    assert client.zrange("t:state:queued", 0, -1, withscores=True) == [("j2", T0 + 1)]
    assert client.zrange("t:batch-state:failed:b", 0, -1) == ["j1"]
    assert client.zcard("t:batch-state:queued:b") == client.zcard("t:batch-state:splitting:b") == 0
    assert client.zrange("t:batch:b", 0, -1) == ["j1"]
    assert client.zrange("t:ids", 0, -1) == ["j1", "j2"]
    assert sorted(client.keys("sdpipe:*")) == []
    assert store.get("j1").state is JobState.FAILED  # decode_responses=True works too
    store.close()
    client.close()


def test_redis_namespaces_do_not_see_each_other(redis_url: str) -> None:
    first = RedisStatusStore.from_url(redis_url, namespace="one")
    second = RedisStatusStore.from_url(redis_url, namespace="two")
    first.create_jobs([make_spec("j1")])

    assert second.list_jobs() == []
    with pytest.raises(JobNotFound):
        second.get("j1")
    first.close()
    second.close()


def test_redis_malformed_url_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="is not a Redis URL"):
        RedisStatusStore.from_url("http://:pw@localhost:6379")


# -- SQLite only ----------------------------------------------------------------------------------


def test_sqlite_second_instance_reads_jobs(tmp_path: Path) -> None:
    # Given a worker process that recorded a job and ended
    path = tmp_path / "status.sqlite3"
    writer = SqliteStatusStore(path)
    writer.create_jobs([make_spec("j1", batch_id="b")])
    writer.start_step("j1", "generate", now=T0 + 1)
    writer.mark_succeeded("j1", JobResult(image="j1.png"), now=T0 + 2)
    expected = writer.get("j1")
    writer.close()

    # When `sdpipe status` opens the same file
    reader = SqliteStatusStore(path)

    # Then it sees everything
    assert reader.get("j1") == expected
    assert reader.count_by_state(batch_id="b")[JobState.SUCCEEDED] == 1
    reader.close()


def test_sqlite_sees_writes_of_another_open_instance(tmp_path: Path) -> None:
    path = tmp_path / "status.sqlite3"
    worker, cli = SqliteStatusStore(path), SqliteStatusStore(path)
    assert cli.list_jobs() == []

    worker.create_jobs([make_spec("j1")])
    worker.mark_cancelled("j1", now=T0 + 1)

    assert [r.state for r in cli.list_jobs()] == [JobState.CANCELLED]
    worker.close()
    cli.close()


@pytest.mark.parametrize(
    ("state", "batch_id"), [(None, None), (JobState.FAILED, None), (None, "b"), (JobState.FAILED, "b")]
)
def test_sqlite_list_queries_walk_an_index(tmp_path: Path, state: JobState | None, batch_id: str | None) -> None:
    store = SqliteStatusStore(tmp_path / "status.sqlite3")
    sql, params = _list_query(state, batch_id, 50)

    with store._transaction(write=False) as conn:
        plan = " | ".join(str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))

    assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    store.close()


def test_sqlite_unusable_path_raises_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="cannot use the status store"):
        SqliteStatusStore(tmp_path / "missing-folder" / "status.sqlite3")


def test_sqlite_store_usable_after_close(tmp_path: Path) -> None:
    store = SqliteStatusStore(tmp_path / "status.sqlite3")
    store.create_jobs([make_spec("j1")])
    store.close()

    assert store.get("j1").job_id == "j1"
    store.close()


# -- open_store and exports -----------------------------------------------------------------------


def test_open_store_embedded_creates_sqlite_under_output_dir(settings: Settings) -> None:
    store = open_store(settings)

    assert isinstance(store, SqliteStatusStore)
    assert (settings.output_dir / ".sdpipe" / "status.sqlite3").is_file()
    store.close()


def test_open_store_unwritable_output_dir_raises_store_unavailable(settings: Settings) -> None:
    settings.output_dir.parent.mkdir(parents=True, exist_ok=True)
    settings.output_dir.write_text("a file, not a folder")

    with pytest.raises(StoreUnavailable, match="cannot create"):
        open_store(settings)


def test_open_store_redis_mode_uses_redis(settings: Settings, redis_url: str) -> None:
    store = open_store(settings.model_copy(update={"redis_url": SecretStr(redis_url)}))

    assert isinstance(store, RedisStatusStore)
    store.create_jobs([make_spec("j1")])
    assert redis.Redis.from_url(redis_url).exists("sdpipe:job:j1")
    store.close()


def test_store_package_exports_are_complete() -> None:
    assert sorted(pipeline.store.__all__) == [
        "DEFAULT_LIST_LIMIT",
        "RedisStatusStore",
        "SqliteStatusStore",
        "StatusStore",
        "open_store",
    ]
    assert all(hasattr(pipeline.store, name) for name in pipeline.store.__all__)


def test_watch_jobs_whose_records_redis_lost_says_redis_restarted_without_persistence(redis_url: str) -> None:
    store = RedisStatusStore.from_url(redis_url)
    store.create_jobs([make_spec("lost-1")])
    store.client.flushdb()  # what a restart without persistence leaves
    with pytest.raises(JobNotFound) as raised:
        next(watch_jobs(store, ["lost-1"]))
    assert raised.value.message == (
        "job records are gone: Redis restarted without persistence (or was flushed); job lost-1 was among them"
    )
    assert "appendonly yes" in (hint_for(raised.value) or "")
    store.close()


# -- tiles of an upscale job ------------------------------------------------------------------------


def test_tile_progress_is_none_for_a_job_without_tiles(store: StatusStore, job: str) -> None:
    assert store.tile_progress(job) is None


def test_add_tile_done_counts_each_tile_once(store: StatusStore, job: str) -> None:
    store.set_tile_total(job, 3)

    first = store.add_tile_done(job, 0)
    again = store.add_tile_done(job, 0)  # a redelivered tile
    store.add_tile_done(job, 2)
    last = store.add_tile_done(job, 1)

    assert (first, again, last) == ((1, 3), (1, 3), (3, 3))
    assert store.tile_progress(job) == (3, 3)


def test_tiles_done_lists_each_tile_marked_done(store: StatusStore, job: str) -> None:
    assert store.tiles_done(job) == set()
    store.set_tile_total(job, 5)
    for index in (3, 0, 3, 4):
        store.add_tile_done(job, index)
    assert store.tiles_done(job) == {0, 3, 4}


def test_add_tile_done_concurrently_completes_once(store: StatusStore, job: str) -> None:
    store.set_tile_total(job, 40)
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def add(index: int) -> None:
        counts = store.add_tile_done(job, index)
        with lock:
            seen.append(counts)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(done for done, _ in seen) == list(range(1, 41))  # each addition saw its own count
