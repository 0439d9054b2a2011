"""Status store contract for ``sdpipe prune``: removing ended jobs and batch records, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import JobNotFound
from pipeline.models import JobResult, JobState
from pipeline.store import StatusStore
from tests.test_pipeline.test_store.test_batches import make_batch
from tests.test_pipeline.test_store.test_jobs import BACKENDS, T0, make_error, make_spec, open_backend


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StatusStore]:
    made = open_backend(request.param, request, tmp_path)
    yield made
    made.close()


def test_delete_jobs_removes_ended_jobs_from_every_index(store: StatusStore) -> None:
    store.create_jobs([make_spec(f"j{i}", batch_id="b1", fingerprint=f"fp{i}") for i in range(4)])
    store.mark_failed("j0", make_error(), now=T0 + 1)
    store.mark_succeeded("j1", JobResult(image="/out/a.png"), now=T0 + 1)
    store.mark_cancelled("j2", now=T0 + 1)
    # j3 stays queued: live work is never removed
    removed = store.delete_jobs(["j0", "j1", "j2", "j3", "missing"])
    assert sorted(removed) == ["j0", "j1", "j2"]
    for job_id in ("j0", "j1", "j2"):
        with pytest.raises(JobNotFound):
            store.get(job_id)
    assert [r.job_id for r in store.list_jobs()] == ["j3"]
    assert [r.job_id for r in store.list_jobs(batch_id="b1")] == ["j3"]
    assert store.list_jobs(state=JobState.FAILED) == []
    assert store.list_jobs(state=JobState.SUCCEEDED, batch_id="b1") == []
    assert store.count_by_state(batch_id="b1")[JobState.QUEUED] == 1
    assert sum(store.count_by_state().values()) == 1
    assert store.succeeded_fingerprints(["fp1"]) == set()
    assert store.get("j3").state is JobState.QUEUED


def test_delete_jobs_twice_removes_nothing_more(store: StatusStore) -> None:
    store.create_jobs([make_spec("j0")])
    store.mark_failed("j0", make_error(), now=T0 + 1)
    assert store.delete_jobs(["j0"]) == ["j0"]
    assert store.delete_jobs(["j0"]) == []
    assert store.delete_jobs([]) == []


def test_delete_batch_removes_the_record_once(store: StatusStore) -> None:
    store.save_batch(make_batch("batch-1"))
    store.save_batch(make_batch("batch-2"))
    assert store.delete_batch("batch-1") is True
    assert store.delete_batch("batch-1") is False
    with pytest.raises(JobNotFound):
        store.get_batch("batch-1")
    assert store.get_batch("batch-2").batch_id == "batch-2"


def test_delete_jobs_keeps_a_fingerprint_another_succeeded_job_shares(store: StatusStore) -> None:
    # Given two succeeded jobs of the same request (the same fingerprint) and one failed
    store.create_jobs([make_spec(f"j{i}", fingerprint="same") for i in range(3)])
    store.mark_succeeded("j0", JobResult(image="/out/a.png"), now=T0 + 1)
    store.mark_succeeded("j1", JobResult(image="/out/b.png"), now=T0 + 1)
    store.mark_failed("j2", make_error(), now=T0 + 1)
    # When one of the succeeded jobs is pruned
    assert store.delete_jobs(["j0"]) == ["j0"]
    # Then the request still reads as rendered (--skip-existing must not render it again)
    assert store.succeeded_fingerprints(["same"]) == {"same"}
    # And once the last succeeded job with it goes, so does the fingerprint (the failed one never counted)
    assert store.delete_jobs(["j1"]) == ["j1"]
    assert store.succeeded_fingerprints(["same"]) == set()
    assert store.delete_jobs(["j2"]) == ["j2"]
    assert store.succeeded_fingerprints(["same"]) == set()
