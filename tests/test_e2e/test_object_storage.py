"""Workers that share nothing but Redis and a bucket (issue 19's done-when): two ``sdpipe worker``
processes, each in its own empty folder with no OUTPUT_DIR in common, one Redis, the test S3 server."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.models import JobState
from pipeline.storage import open_storage
from pipeline.store import RedisStatusStore
from tests.conftest import S3Bucket
from tests.helpers import wait_until
from tests.test_api.conftest import StartApi, noise_image, png_bytes, start_api  # noqa: F401 - the fixture
from tests.test_e2e.conftest import Proc, child_pids, run_sdpipe, start_mock, start_worker

pytestmark = pytest.mark.e2e

JOBS = 40


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_two_workers_sharing_only_redis_and_a_bucket_finish_40_jobs_after_one_is_killed(
    e2e_env: dict[str, str],
    redis_url: str,
    s3_bucket: S3Bucket,
    spawn: Callable[..., Proc],
    start_api: StartApi,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    # Given no OUTPUT_DIR anywhere: every process writes to the bucket; a fast heartbeat and slot lease
    env = {k: v for k, v in e2e_env.items() if k != "OUTPUT_DIR"}
    env.update(s3_bucket.env, BROKER_HEARTBEAT_TIMEOUT_MS="3000", SD_SLOT_LEASE_S="3", WIDTH="64", HEIGHT="64")
    env["SD_API_URL"] = start_mock(spawn, env, "--latency-ms", "150") + ";max=4"
    homes = {name: tmp_path / name for name in ("machine-a", "machine-b", "client")}
    for home in homes.values():
        home.mkdir()
    # And two workers, each in its own empty folder (two "machines")
    worker_a = start_worker(spawn, env, processes=1, threads=2, name="worker-a", cwd=homes["machine-a"])
    worker_b = start_worker(spawn, env, processes=1, threads=2, name="worker-b", cwd=homes["machine-b"])
    rows = tmp_path / "rows.txt"
    rows.write_text("".join(f"bucket job {i}\n" for i in range(JOBS)))
    # When 40 jobs are submitted and worker A is kill -9ed (parent and process) while it has steps running
    submitted = run_sdpipe("batch", str(rows), "--no-wait", env=env, cwd=homes["client"])
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.split()[1]
    store = RedisStatusStore.from_url(redis_url)

    def succeeded() -> int:
        return store.count_by_state(batch_id=batch_id).get(JobState.SUCCEEDED, 0)

    assert wait_until(lambda: succeeded() >= 6, timeout_s=120), worker_a.output() + worker_b.output()
    running = [j for j in store.list_jobs(batch_id=batch_id, limit=JOBS) if not j.state.terminal and j.state.rank > 0]
    for pid in [*child_pids(worker_a.popen.pid), worker_a.popen.pid]:
        os.kill(pid, signal.SIGKILL)
    worker_a.popen.wait(timeout=10)
    # Then every job finishes on worker B
    assert wait_until(lambda: succeeded() == JOBS, timeout_s=240), [
        (j.job_id[:8], j.state, j.error) for j in store.list_jobs(batch_id=batch_id, limit=JOBS) if not j.state.terminal
    ] + [worker_b.output()[-2000:]]
    assert running, "worker A was killed with no step in flight"
    # And every image and sidecar is in the bucket, whole, the sidecar's sha256 the image's
    storage = open_storage(s3_bucket.url, s3_bucket.settings())
    records = store.list_jobs(batch_id=batch_id, limit=JOBS)
    assert len(records) == JOBS
    for record in records:
        assert record.result is not None and record.result.image.startswith(s3_bucket.url + "/")
        image = storage.read(str(storage.key_of(record.result.image)))
        sidecar = json.loads(storage.read(str(storage.key_of(str(record.result.sidecar)))))
        assert sidecar["job_id"] == record.job_id
        assert sidecar["output"]["sha256"] == hashlib.sha256(image).hexdigest() == record.result.sha256
    images = [e.key for e in storage.list("") if e.key.endswith(".png") and not e.key.startswith(".sdpipe/")]
    assert len(images) == JOBS  # each written once, no second name for a redelivered job
    assert not storage.list(".sdpipe/work/")  # intermediates removed on success

    # And `process` of a local file and an /api/files/async upload go through the same set-up
    pixels = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    processed = run_sdpipe("process", str(tmp_path / "photo.png"), "--json", env=env, cwd=homes["client"])
    assert processed.returncode == 0, processed.stderr
    (job,) = json.loads(processed.stdout)
    assert job["result"]["image"].startswith(s3_bucket.url + "/")
    api = start_api(redis_url=redis_url, **s3_bucket.overrides)
    accepted = api.client.post("/api/files/async", files={"file": ("upload.png", png_bytes(noise_image(96, 80)))})
    assert accepted.status_code == 202, accepted.text
    status_url = accepted.json()["status_url"]
    assert wait_until(lambda: api.client.get(status_url).json()["state"] == "succeeded", timeout_s=120)
    uploaded = api.client.get(status_url).json()
    key = storage.key_of(uploaded["result"]["image"])
    assert key is not None and storage.read(key).startswith(b"\x89PNG")
    assert worker_b.popen.poll() is None

    # And no local file was left on either machine (nor by the submitting commands)
    store.close()
    assert worker_b.stop() == 0, worker_b.output()
    for home in homes.values():
        assert _files_under(home) == [], home
