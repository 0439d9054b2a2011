"""``OUTPUT_URL=s3://...`` (and ``--out s3://...``) from the command line, embedded, against the test S3 server."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.storage import open_storage
from tests.conftest import S3Bucket
from tests.test_cli.conftest import Invoke

SMALL = ["--width", "64", "--height", "64"]
KINDS = {"job", "batch", "file", "manifest", "orphan"}


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.split(" ", 1)[0] in KINDS]


def test_generate_with_out_s3_puts_image_and_sidecar_in_the_bucket(
    sdpipe: Invoke, s3_bucket: S3Bucket, out_dir: Path
) -> None:
    # Given credentials in the environment and `--out s3://...` on the command line
    env = {k: v for k, v in s3_bucket.env.items() if k != "OUTPUT_URL"}
    # When a job runs (embedded, mock SD)
    result = sdpipe("generate", "a lighthouse", "--sd-url", "mock://", "--out", s3_bucket.url, *SMALL, env=env)
    assert result.exit_code == 0, result.output
    job_id = result.stdout.split()[1]
    # Then status shows s3:// locations
    record = json.loads(sdpipe("status", job_id, "--json", "--out", s3_bucket.url, env=env).stdout)
    image_url, sidecar_url = record["result"]["image"], record["result"]["sidecar"]
    assert image_url.startswith(s3_bucket.url + "/") and sidecar_url.startswith(s3_bucket.url + "/")
    # And the bucket holds exactly the image and its sidecar, whole: the sidecar's sha256 is the image's
    storage = open_storage(s3_bucket.url, s3_bucket.settings())
    keys = [entry.key for entry in storage.list("")]
    image_key, sidecar_key = storage.key_of(image_url), storage.key_of(sidecar_url)
    assert sorted(keys) == sorted([image_key, sidecar_key]), keys  # intermediates removed on success
    image = storage.read(str(image_key))
    sidecar = json.loads(storage.read(str(sidecar_key)))
    assert sidecar["output"]["sha256"] == hashlib.sha256(image).hexdigest() == record["result"]["sha256"]
    assert sidecar["output"]["image"] == image_url
    # And no credential reached the sidecar, the record or the command's output
    everything = json.dumps(sidecar) + json.dumps(record) + result.output
    assert s3_bucket.secret_access_key not in everything and s3_bucket.access_key_id not in everything
    # And nothing was written locally except the embedded status database
    assert {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()} <= {
        ".sdpipe/status.sqlite3",
        ".sdpipe/status.sqlite3-wal",
        ".sdpipe/status.sqlite3-shm",
        ".sdpipe/embedded.lock",
    }


def test_process_of_local_files_writes_into_the_bucket(sdpipe: Invoke, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    # Given two local images and OUTPUT_URL set
    for index in range(2):
        pixels = np.random.default_rng(index).integers(0, 256, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"shot{index}.png")
    # When they are processed
    result = sdpipe("process", str(tmp_path / "shot0.png"), str(tmp_path / "shot1.png"), "--json", env=s3_bucket.env)
    assert result.exit_code == 0, result.output
    jobs = json.loads(result.stdout)
    # Then each result is an object of the bucket whose sidecar's sha256 matches
    storage = open_storage(s3_bucket.url, s3_bucket.settings())
    for job in jobs:
        key = storage.key_of(job["result"]["image"])
        assert key is not None, job
        sidecar = json.loads(storage.read(key.rsplit(".", 1)[0] + ".json"))
        assert sidecar["output"]["sha256"] == hashlib.sha256(storage.read(key)).hexdigest()
        assert sidecar["source"].endswith(".png")
        shown = sdpipe("status", job["job_id"], env=s3_bucket.env)
        assert shown.exit_code == 0 and job["result"]["image"] in shown.stdout and "gone" not in shown.stdout
    assert not [entry.key for entry in storage.list(".sdpipe/work/")]


def test_prune_in_s3_mode_dry_run_lists_exactly_what_the_real_run_removes(sdpipe: Invoke, s3_bucket: S3Bucket) -> None:
    env = s3_bucket.env
    storage = open_storage(s3_bucket.url, s3_bucket.settings())
    # Given a failed job that kept an intermediate, a succeeded job, and an orphaned work prefix
    failing = sdpipe(
        "generate", "fails", "--sd-url", "mock://down?fail_rate=1.0", *SMALL, env={**env, "MAX_RETRIES": "0"}
    )
    assert failing.exit_code == 1, failing.output
    failed = json.loads(sdpipe("jobs", "--json", "--state", "failed", env=env).stdout)[0]["job_id"]
    storage.write(f".sdpipe/work/{failed}/sd.json", b"{}")
    ok = sdpipe("generate", "fine", "--sd-url", "mock://", *SMALL, env=env)
    assert ok.exit_code == 0, ok.output
    kept = ok.stdout.split()[1]
    storage.write(".sdpipe/work/" + "f" * 32 + "/source.img", b"left by a killed process")
    # When failed jobs are pruned as a dry run, then for real
    dry = sdpipe("prune", "--older-than", "0s", "--state", "failed", "--dry-run", env=env)
    assert dry.exit_code == 0, dry.output
    listed = _lines(dry.stdout)
    assert f"job {failed}" in listed
    assert f"file {s3_bucket.url}/.sdpipe/work/{failed}" in listed
    assert not [line for line in listed if line.startswith("orphan")]  # seconds old: a live process's, maybe
    real = sdpipe("prune", "--older-than", "0s", "--state", "failed", env=env)
    # Then it removed exactly that: the failed job's prefix is gone, the succeeded job's files stay
    assert _lines(real.stdout) == listed
    assert not storage.list(f".sdpipe/work/{failed}/")
    status = json.loads(sdpipe("status", kept, "--json", env=env).stdout)
    assert storage.exists(str(storage.key_of(status["result"]["image"])))
    # And --outputs removes the succeeded job's image and sidecar objects, listed first as a dry run
    dry_outputs = _lines(sdpipe("prune", "--older-than", "0s", "--outputs", "--dry-run", env=env).stdout)
    assert f"file {status['result']['image']}" in dry_outputs and f"file {status['result']['sidecar']}" in dry_outputs
    real_outputs = sdpipe("prune", "--older-than", "0s", "--outputs", env=env)
    assert _lines(real_outputs.stdout) == dry_outputs
    assert not storage.exists(str(storage.key_of(status["result"]["image"])))
    assert not storage.exists(str(storage.key_of(status["result"]["sidecar"])))
