"""Status store contract, continued: schedules, their runs and occurrence claims, on both backends."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
import redis

from cli.errors import hint_for
from pipeline.errors import ScheduleNotFound, StoreUnavailable
from pipeline.models import ScheduleRecord, ScheduleRun, ScheduleRunStatus
from pipeline.store import RedisStatusStore, SqliteStatusStore, StatusStore
from pipeline.store.base import SCHEDULE_CLAIM_TTL_S, SCHEDULE_RUNS_KEPT
from tests.helpers import free_port
from tests.test_pipeline.test_store.test_jobs import BACKENDS, T0, open_backend

#: Threads (and, across processes, claimers) racing for one occurrence.
RACERS = 8
#: Occurrences raced for in the two-instance test.
OCCURRENCES = 10
#: Scheduler processes racing on one SQLite file.
PROCESSES = 4


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StatusStore]:
    """Each implementation, empty."""
    made = open_backend(request.param, request, tmp_path)
    yield made
    made.close()


def make_schedule(name: str = "nightly", *, cron: str = "0 3 * * *", runs: int = 0) -> ScheduleRecord:
    return ScheduleRecord(
        name=name,
        cron=cron,
        timezone="Europe/Berlin",
        file="/data/prompts.csv",
        options={"steps": 30, "grid": "2x2"},
        grace_s=600.0,
        created_at=T0,
        runs=[make_run(T0 - i) for i in range(runs)],
    )


def make_run(fire_time: float, status: ScheduleRunStatus = "fired", **extra: object) -> ScheduleRun:
    return ScheduleRun.model_validate({"fire_time": fire_time, "at": fire_time + 0.5, "status": status} | extra)


def race(claimers: Sequence[Callable[[], bool]]) -> list[bool]:
    """Run every claimer at once (one thread each, released together); their answers in order."""
    barrier = threading.Barrier(len(claimers))
    answers: list[bool | BaseException] = [False] * len(claimers)

    def run(index: int) -> None:
        barrier.wait()
        try:
            answers[index] = claimers[index]()
        except BaseException as exc:
            answers[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(claimers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a for a in answers if isinstance(a, BaseException)] == []
    return [bool(answer) for answer in answers]


# -- CRUD -----------------------------------------------------------------------------------------


def test_save_schedule_then_get_returns_it(store: StatusStore) -> None:
    schedule = make_schedule()

    store.save_schedule(schedule)

    assert store.get_schedule("nightly") == schedule


def test_get_schedule_unknown_raises_schedule_not_found(store: StatusStore) -> None:
    store.save_schedule(make_schedule("nightly"))

    with pytest.raises(ScheduleNotFound, match="no schedule 'night'") as caught:
        store.get_schedule("night")

    assert hint_for(caught.value) == "`sdpipe schedule list` shows them"


def test_list_schedules_sorted_by_name_with_runs(store: StatusStore) -> None:
    assert store.list_schedules() == []
    for name in ("zeta", "Alpha", "mid:1", "ünï"):
        store.save_schedule(make_schedule(name))
    store.add_schedule_run("mid:1", make_run(T0))
    store.add_schedule_run("zeta", make_run(T0 + 60, "skipped", reason="overlap"))

    listed = store.list_schedules()

    assert [s.name for s in listed] == ["Alpha", "mid:1", "zeta", "ünï"]
    assert {s.name: s.runs for s in listed} == {
        "Alpha": [],
        "mid:1": [make_run(T0)],
        "zeta": [make_run(T0 + 60, "skipped", reason="overlap")],
        "ünï": [],
    }


def test_save_schedule_replaces_fields_and_keeps_runs(store: StatusStore) -> None:
    # Given a schedule with a run, saved with runs in the argument (which are never stored)
    store.save_schedule(make_schedule(runs=3))
    store.add_schedule_run("nightly", make_run(T0 + 1, batch_id="b1"))

    # When it is saved again, edited, with other runs in the argument
    edited = make_schedule(cron="*/5 * * * *", runs=2).model_copy(update={"allow_overlap": True})
    store.save_schedule(edited)

    # Then its fields are the new ones and its runs the stored ones
    stored = store.get_schedule("nightly")
    assert stored.model_dump(exclude={"runs"}) == edited.model_dump(exclude={"runs"})
    assert stored.runs == [make_run(T0 + 1, batch_id="b1")]


def test_add_schedule_run_newest_first_and_trimmed(store: StatusStore) -> None:
    store.save_schedule(make_schedule("a"))
    store.save_schedule(make_schedule("b"))
    statuses: list[ScheduleRunStatus] = ["fired", "skipped", "failed"]
    added = [make_run(T0 + 60 * i, statuses[i % 3], manual=i == 7) for i in range(SCHEDULE_RUNS_KEPT + 5)]

    for run in added:
        store.add_schedule_run("a", run)
    store.add_schedule_run("b", make_run(T0))

    assert store.get_schedule("a").runs == added[::-1][:SCHEDULE_RUNS_KEPT]
    assert store.get_schedule("b").runs == [make_run(T0)]


def test_delete_schedule_removes_it_and_its_runs(store: StatusStore) -> None:
    store.save_schedule(make_schedule("nightly"))
    store.save_schedule(make_schedule("other"))
    store.add_schedule_run("nightly", make_run(T0))

    assert store.delete_schedule("nightly") is True
    assert store.delete_schedule("nightly") is False

    with pytest.raises(ScheduleNotFound):
        store.get_schedule("nightly")
    assert [s.name for s in store.list_schedules()] == ["other"]
    # Added again under the same name, it starts without the old runs.
    store.save_schedule(make_schedule("nightly"))
    assert store.get_schedule("nightly").runs == []


def test_delete_schedule_unknown_returns_false(store: StatusStore) -> None:
    assert store.delete_schedule("nope") is False


def test_add_schedule_run_on_deleted_schedule_raises_schedule_not_found(store: StatusStore) -> None:
    store.save_schedule(make_schedule("nightly"))
    store.delete_schedule("nightly")

    with pytest.raises(ScheduleNotFound, match="no schedule 'nightly'"):
        store.add_schedule_run("nightly", make_run(T0))

    assert store.list_schedules() == []
    store.save_schedule(make_schedule("nightly"))
    assert store.get_schedule("nightly").runs == []  # the refused run was not kept anywhere


# -- claims ---------------------------------------------------------------------------------------


def test_claim_fire_true_once_per_occurrence(store: StatusStore) -> None:
    assert store.claim_fire("nightly", T0) is True
    assert store.claim_fire("nightly", T0) is False
    assert store.claim_fire("nightly", T0 + 1e-7) is False  # the same occurrence, give or take float noise
    assert store.claim_fire("nightly", T0 + 60) is True
    assert store.claim_fire("other", T0) is True
    assert store.claim_fire("nightly:1", T0) is True  # names with colons do not collide
    assert store.claim_fire("nightly", T0 + 60) is False


def test_claim_fire_racing_threads_exactly_one_wins(store: StatusStore) -> None:
    answers = race([lambda: store.claim_fire("nightly", T0)] * RACERS)

    assert answers.count(True) == 1


def test_claim_fire_across_two_store_instances_exactly_one_wins(
    request: pytest.FixtureRequest, store: StatusStore, tmp_path: Path
) -> None:
    # Given a second store on the same data (another client / another connection to the file)
    other = open_backend(request.node.callspec.params["store"], request, tmp_path)
    try:
        for occurrence in range(OCCURRENCES):
            fire_time = T0 + 60 * occurrence
            # When schedulers on both instances race for each occurrence
            answers = race([partial(s.claim_fire, "nightly", fire_time) for s in (store, other) * (RACERS // 2)])
            # Then exactly one of them wins it
            assert answers.count(True) == 1, (occurrence, answers)
    finally:
        other.close()


# -- Redis only -----------------------------------------------------------------------------------


def test_redis_schedule_keys_and_claim_expiry(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = RedisStatusStore(client, namespace="t")
    store.save_schedule(make_schedule("nightly", runs=2))
    store.add_schedule_run("nightly", make_run(T0))

    assert store.claim_fire("nightly", T0)

    assert set(client.hkeys("t:schedules")) == {"nightly"}
    assert "runs" not in client.hget("t:schedules", "nightly")  # type: ignore[operator]
    assert client.llen("t:schedule-runs:nightly") == 1
    ttl = client.ttl(f"t:schedule-claim:nightly:{round(T0 * 1000)}")
    assert SCHEDULE_CLAIM_TTL_S - 60 < ttl <= SCHEDULE_CLAIM_TTL_S
    store.delete_schedule("nightly")
    assert client.exists("t:schedule-runs:nightly") == 0
    assert client.keys("sdpipe:*") == []
    store.close()
    client.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.save_schedule(make_schedule()),
        lambda s: s.get_schedule("nightly"),
        lambda s: s.list_schedules(),
        lambda s: s.delete_schedule("nightly"),
        lambda s: s.claim_fire("nightly", T0),
        lambda s: s.add_schedule_run("nightly", make_run(T0)),
    ],
    ids=["save", "get", "list", "delete", "claim_fire", "add_run"],
)
def test_redis_unreachable_schedule_calls_raise_store_unavailable(call: Callable[[StatusStore], object]) -> None:
    store = RedisStatusStore.from_url(f"redis://127.0.0.1:{free_port()}/0")

    with pytest.raises(StoreUnavailable, match="cannot reach Redis"):
        call(store)
    store.close()


# -- SQLite only ----------------------------------------------------------------------------------


def _claim_in_process(path: str, start: Barrier, answers: Queue[bool]) -> None:
    """A scheduler process: open the file, wait for the others, claim one occurrence, report."""
    store = SqliteStatusStore(Path(path))
    try:
        start.wait(timeout=30)
        answers.put(store.claim_fire("nightly", T0))
    finally:
        store.close()


def test_sqlite_claim_fire_across_processes_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "status.sqlite3"
    SqliteStatusStore(path).close()
    context = multiprocessing.get_context("spawn")
    start, answers = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=_claim_in_process, args=(str(path), start, answers)) for _ in range(PROCESSES)]

    for process in processes:
        process.start()
    results = [answers.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert results.count(True) == 1
    assert [process.exitcode for process in processes] == [0] * PROCESSES


def test_sqlite_claims_older_than_ttl_are_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqliteStatusStore(tmp_path / "status.sqlite3")
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)
    assert store.claim_fire("nightly", T0)

    monkeypatch.setattr(time, "time", lambda: now + SCHEDULE_CLAIM_TTL_S - 1)
    assert not store.claim_fire("nightly", T0)  # still remembered within the TTL
    monkeypatch.setattr(time, "time", lambda: now + SCHEDULE_CLAIM_TTL_S + 1)
    assert store.claim_fire("other", T0)

    with store._transaction(write=False) as conn:
        assert [tuple(row) for row in conn.execute("SELECT name, fire_ms FROM schedule_claims")] == [
            ("other", round(T0 * 1000))
        ]
    store.close()
