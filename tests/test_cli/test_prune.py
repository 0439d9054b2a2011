"""``sdpipe prune`` in embedded mode: a dry run lists exactly what the real run removes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pipeline.jobs.files import STATE_DIR_NAME
from tests.test_cli.conftest import Invoke

SMALL = ["--width", "64", "--height", "64"]


KINDS = {"job", "batch", "file", "manifest", "orphan"}


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.split(" ", 1)[0] in KINDS]


def test_prune_dry_run_lists_exactly_what_the_real_run_removes(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    # Given a batch whose jobs all failed (one keeps intermediates for a retry), a succeeded job,
    # and a work folder a killed process left an hour and more ago
    rows = tmp_path / "p.txt"
    rows.write_text("fails 0\nfails 1\n")
    failing = sdpipe("batch", str(rows), "--sd-url", "mock://down?fail_rate=1.0", *SMALL, env={"MAX_RETRIES": "0"})
    assert failing.exit_code == 1, failing.output
    batch_id = failing.stdout.splitlines()[0].split()[1]
    failed = [job["job_id"] for job in json.loads(sdpipe("jobs", "--json", "--state", "failed").stdout)]
    assert len(failed) == 2
    work = out_dir / STATE_DIR_NAME / "work"
    (work / failed[0]).mkdir(parents=True, exist_ok=True)
    (work / failed[0] / "sd.json").write_text("{}")
    ok = sdpipe("generate", "fine", "--sd-url", "mock://up", *SMALL)
    assert ok.exit_code == 0, ok.output
    kept = ok.stdout.split()[1]
    orphan = work / ("f" * 32)
    orphan.mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    os.utime(orphan, (two_hours_ago, two_hours_ago))

    # When failed jobs are pruned, first as a dry run
    dry = sdpipe("prune", "--older-than", "0s", "--state", "failed", "--dry-run")
    assert dry.exit_code == 0, dry.output
    listed = _lines(dry.stdout)
    # Then it lists the failed jobs, their batch and manifest, the intermediates and the orphan, and nothing else
    manifest = out_dir.absolute() / "batches" / f"{batch_id}.json"
    assert sorted(listed) == sorted(
        [f"job {job_id}" for job_id in failed]
        + [f"batch {batch_id}", f"file {(work / failed[0]).absolute()}", f"orphan {orphan.absolute()}"]
        + ([f"manifest {manifest}"] if manifest.exists() else [])
    ), dry.output
    assert all(Path(line.split(" ", 1)[1]).exists() for line in listed if line.startswith(("file", "orphan")))
    assert json.loads(sdpipe("status", failed[0], "--json").stdout)["state"] == "failed"  # nothing removed yet

    # And the real run removes exactly that
    real = sdpipe("prune", "--older-than", "0s", "--state", "failed")
    assert real.exit_code == 0, real.output
    assert _lines(real.stdout) == listed
    assert not any(Path(line.split(" ", 1)[1]).exists() for line in listed if " /" in line)
    for job_id in failed:
        assert sdpipe("status", job_id).exit_code != 0
    assert sdpipe("status", "--batch", batch_id).exit_code != 0
    # The succeeded job and its output stay; a second run finds nothing
    status = json.loads(sdpipe("status", kept, "--json").stdout)
    assert status["state"] == "succeeded" and Path(status["result"]["image"]).exists()
    assert _lines(sdpipe("prune", "--older-than", "0s", "--state", "failed", "--dry-run").stdout) == []


def test_prune_outputs_removes_result_files_of_succeeded_jobs(sdpipe: Invoke) -> None:
    ok = sdpipe("generate", "fine", "--sd-url", "mock://up", *SMALL)
    assert ok.exit_code == 0, ok.output
    job_id = ok.stdout.split()[1]
    record = json.loads(sdpipe("status", job_id, "--json").stdout)
    result = record["result"]
    # Without --outputs only the record is listed; with it the files go with the record
    dry = _lines(sdpipe("prune", "--older-than", "0s", "--dry-run").stdout)
    assert dry == [f"job {job_id}", f"batch {record['batch_id']}"], dry
    pruned = sdpipe("prune", "--older-than", "0s", "--outputs")
    assert pruned.exit_code == 0, pruned.output
    assert f"file {result['image']}" in pruned.stdout and f"file {result['sidecar']}" in pruned.stdout
    assert not Path(result["image"]).exists() and not Path(result["sidecar"]).exists()
    assert sdpipe("status", job_id).exit_code != 0


def test_prune_refuses_an_unreadable_age(sdpipe: Invoke) -> None:
    result = sdpipe("prune", "--older-than", "30 days")
    assert result.exit_code == 2
    assert "invalid age '30 days'" in result.stderr and "30d" in result.stderr
    # A future cut-off keeps everything
    assert _lines(sdpipe("prune", "--older-than", "3650d", "--dry-run").stdout) == []
