"""``plan_prune`` / ``apply_prune`` in both modes (status in Redis or SQLite; files on disk or in a bucket):
a dry run lists exactly what the real run then removes, ``--outputs`` and orphaned work folders included."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.batches.manifests import write_manifest
from pipeline.errors import JobNotFound
from pipeline.jobs.files import JobFiles
from pipeline.jobs.retention import apply_prune, plan_prune
from pipeline.jobs.thumbnails import thumbnail_key
from pipeline.models import JobResult, JobState
from pipeline.settings import Settings
from pipeline.storage import Storage, open_storage
from pipeline.storage.base import Entry
from pipeline.store import StatusStore
from tests.conftest import S3Bucket
from tests.test_pipeline.test_store.test_batches import make_batch
from tests.test_pipeline.test_store.test_jobs import BACKENDS, T0, make_error, make_spec, open_backend


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StatusStore]:
    made = open_backend(request.param, request, tmp_path)
    yield made
    made.close()


@pytest.fixture(params=["local", "s3"])
def output(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Storage, Settings]:
    if request.param == "local":
        settings = Settings(_env_file=None, output_dir=tmp_path / "out")  # type: ignore[call-arg]
    else:
        settings = request.getfixturevalue("s3_bucket").settings()
    return open_storage(settings.output_location, settings), settings


def test_prune_dry_run_lists_exactly_what_the_real_run_removes(
    store: StatusStore, output: tuple[Storage, Settings]
) -> None:
    storage, settings = output
    # Given a failed job with intermediates, a succeeded one with its image and sidecar, a queued one,
    # the batch of the failed one (nothing else in it), and an orphaned work folder
    store.create_jobs([make_spec("failed1", batch_id="b1"), make_spec("ok1"), make_spec("queued1")])
    store.mark_failed("failed1", make_error(), now=T0 + 1)
    store.save_batch(make_batch("b1", rows=1))
    manifest = write_manifest(storage, {"batch_id": "b1", "rows": []})
    failed_files = JobFiles(storage, "failed1")
    failed_files.source.write(b"sd image, kept for a retry")
    ok_files = JobFiles(storage, "ok1")
    ok_files.image("ok", "png").write(b"png")
    ok_files.sidecar("ok").write(b"{}")
    image, sidecar = ok_files.image("ok", "png").location, ok_files.sidecar("ok").location
    store.mark_succeeded("ok1", JobResult(image=image, sidecar=sidecar), now=T0 + 1)
    JobFiles(storage, "queued1").source.write(b"still needed")
    JobFiles(storage, "gone" * 8).source.write(b"left by a killed process")
    later = time.time() + 7200  # the orphan is an hour and more old by then
    # When the ended jobs and their outputs are planned as a dry run
    plan = plan_prune(store, storage, older_than_s=0, outputs=True, now=later, settings=settings)
    listed = plan.lines()
    # Then it names the ended jobs, their files, the emptied batch and the orphan, and nothing live
    assert sorted(listed) == sorted(
        [
            "job failed1",
            "job ok1",
            "batch b1",
            f"manifest {manifest}",
            f"file {failed_files.work_location}",
            f"file {image}",
            f"file {sidecar}",
            f"orphan {JobFiles(storage, 'gone' * 8).work_location}",
        ]
    ), listed
    assert store.get("failed1").state is JobState.FAILED  # a plan removes nothing
    assert failed_files.source.exists()
    # And the real run removes exactly that
    done = apply_prune(store, plan)
    assert done.lines() == listed
    assert not failed_files.source.exists() and not ok_files.image("ok", "png").exists()
    assert not ok_files.sidecar("ok").exists() and not JobFiles(storage, "gone" * 8).source.exists()
    assert JobFiles(storage, "queued1").source.exists()
    assert store.get("queued1").state is JobState.QUEUED
    with pytest.raises(JobNotFound):
        store.get_batch("b1")
    # And a second plan finds nothing
    assert plan_prune(store, storage, older_than_s=0, outputs=True, now=later, settings=settings).lines() == []


def test_prune_removes_the_thumbnails_of_a_pruned_job_from_where_the_results_are(
    store: StatusStore, output: tuple[Storage, Settings]
) -> None:
    storage, settings = output
    # Given an ended job with two cached thumbnails (two images it had), and a kept job whose id
    # starts the same way, with its own
    store.create_jobs([make_spec("ok1"), make_spec("ok10")])
    store.mark_failed("ok1", make_error(), now=T0 + 1)
    pruned = [thumbnail_key("ok1", "a" * 64), thumbnail_key("ok1", "b" * 64)]
    kept = thumbnail_key("ok10", "a" * 64)
    for key in [*pruned, kept]:
        storage.write(key, b"webp")
    # When the ended job is pruned
    plan = plan_prune(store, storage, older_than_s=0, now=time.time() + 60, settings=settings)
    assert sorted(line for line in plan.lines() if "thumbs" in line) == sorted(
        f"file {storage.location(key)}" for key in pruned
    )
    apply_prune(store, plan)
    # Then its thumbnails are gone, in the folder or the bucket, and the other job's stays
    assert [storage.exists(key) for key in [*pruned, kept]] == [False, False, True]


def test_prune_in_a_bucket_lists_each_thumbnail_folder_once(
    store: StatusStore, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = s3_bucket.settings()
    storage = open_storage(settings.output_location, settings)
    # Given three ended jobs whose ids share their first two characters, each with a thumbnail
    ids = ["ab1", "ab2", "ab3"]
    store.create_jobs([make_spec(job_id) for job_id in ids])
    for job_id in ids:
        store.mark_failed(job_id, make_error(), now=T0 + 1)
        storage.write(thumbnail_key(job_id, "c" * 64), b"webp")
    real_list = storage.list
    listed: list[str] = []

    def counting(prefix: str) -> list[Entry]:
        listed.append(prefix)
        return real_list(prefix)

    monkeypatch.setattr(storage, "list", counting)
    # When their prune is planned
    plan = plan_prune(store, storage, older_than_s=0, now=time.time() + 60, settings=settings)
    # Then the folder was listed once for all three, and each job's thumbnail is in the plan
    assert [prefix for prefix in listed if "thumbs" in prefix] == [".sdpipe/thumbs/ab/"]
    assert sum("thumbs" in line for line in plan.lines()) == 3
