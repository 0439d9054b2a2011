"""``sdpipe batch``, ``retry``, ``cancel`` and ``schedule`` in embedded mode, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.sd.mock.http import get_mock_server
from tests.test_cli.conftest import Invoke

SMALL = ["--width", "64", "--height", "64"]


def _mock_calls(url: str) -> int:
    return int(get_mock_server(url).stats()["txt2img_requests"])


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_batch_renders_every_row_and_writes_manifest(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    rows = [{"prompt": f"row {i}", "seed": i} for i in range(4)] + [{"prompt": "two", "count": 2, "seed": 50}]
    result = sdpipe("batch", str(_jsonl(tmp_path / "p.jsonl", rows)), "--sd-url", "mock://", *SMALL)
    assert result.exit_code == 0, result.output
    batch_id = result.stdout.splitlines()[0].split()[1]
    manifest = json.loads((out_dir / "batches" / f"{batch_id}.json").read_text())
    assert [row["line"] for row in manifest["rows"]] == [1, 2, 3, 4, 5]
    assert manifest["counts"] == {"succeeded": 6}
    assert all(Path(job["output"]).exists() for row in manifest["rows"] for job in row["jobs"])
    assert [len(row["jobs"]) for row in manifest["rows"]] == [1, 1, 1, 1, 2]
    assert manifest["rows"][4]["params"]["seed"] == 50


def test_batch_with_bad_rows_enqueues_nothing_and_names_each(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    rows: list[dict[str, object]] = [{"prompt": f"ok {i}"} for i in range(50)]
    rows[9] = {"prompt": "bad steps", "steps": 900}
    rows[19] = {"prompt": "", "seed": 1}
    rows[39] = {"prompt": "typo", "sampelr": "Euler"}
    result = sdpipe("batch", str(_jsonl(tmp_path / "p.jsonl", rows)), "--sd-url", "mock://")
    assert result.exit_code == 2
    problems = [line.strip() for line in result.stderr.splitlines() if line.startswith("  line ")]
    assert problems == [
        "line 10, steps: must be between 1 and 500 (got 900)",
        "line 20, prompt: the prompt is empty",
        "line 40, sampelr: unknown key 'sampelr' (did you mean 'sampler'?)",
    ]
    assert "3 bad rows (nothing was enqueued)" in result.stderr
    assert not out_dir.exists()


def test_batch_dry_run_prints_plan_and_enqueues_nothing(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a lighthouse\n# skipped\n\na fox\n")
    result = sdpipe("batch", str(path), "--dry-run", "--json", "--count", "3", "--seed", "10")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["jobs"] == 6
    assert [row["line"] for row in plan["rows"]] == [1, 4]
    assert plan["rows"][0]["seeds"] == [10, 11, 12]
    assert not out_dir.exists()


def test_batch_resume_renders_nothing_twice(sdpipe: Invoke, tmp_path: Path) -> None:
    url = "mock://resume"
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"r{i}", "seed": i} for i in range(3)])
    first = sdpipe("batch", str(path), "--sd-url", url, *SMALL)
    assert first.exit_code == 0, first.output
    batch_id = first.stdout.splitlines()[0].split()[1]
    calls = _mock_calls(url)
    again = sdpipe("batch", str(path), "--sd-url", url, "--resume", batch_id[:8], *SMALL)
    assert again.exit_code == 0, again.output
    assert "0 new job(s), 0 retried, 3 already done" in again.stderr
    assert _mock_calls(url) == calls


def test_batch_resume_retries_only_failed_rows(sdpipe: Invoke, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"f{i}", "seed": i} for i in range(3)])
    failing = sdpipe("batch", str(path), "--sd-url", "mock://down?fail_rate=1.0", *SMALL, env={"MAX_RETRIES": "0"})
    assert failing.exit_code == 1
    batch_id = failing.stdout.splitlines()[0].split()[1]
    healthy = "mock://up"
    resumed = sdpipe("batch", str(path), "--sd-url", healthy, "--resume", batch_id, *SMALL)
    assert resumed.exit_code == 0, resumed.output
    assert "0 new job(s), 3 retried" in resumed.stderr
    assert _mock_calls(healthy) == 3
    status = json.loads(sdpipe("status", "--batch", batch_id, "--json").stdout)
    assert status["counts"] == {"succeeded": 3}


def test_batch_skip_existing_skips_rows_already_rendered(sdpipe: Invoke, tmp_path: Path) -> None:
    url = "mock://skip"
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "same", "seed": 1}, {"prompt": "other", "seed": 2}])
    assert sdpipe("batch", str(path), "--sd-url", url, *SMALL).exit_code == 0
    _jsonl(path, [{"prompt": "same", "seed": 1}, {"prompt": "other", "seed": 2}, {"prompt": "new", "seed": 3}])
    again = sdpipe("batch", str(path), "--sd-url", url, "--skip-existing", "--json", *SMALL)
    assert again.exit_code == 0, again.output
    assert "1 new job(s), 0 retried, 2 already done" in again.stderr
    assert _mock_calls(url) == 3
    manifest = json.loads(again.stdout[again.stdout.index("{") :])
    assert [row.get("already_rendered", 0) for row in manifest["rows"]] == [1, 1, 0]


def test_retry_job_failed_in_merge_does_not_call_sd_again(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    url = "mock://retry-merge"
    # Given a job whose final file cannot be written (a folder has its name, and --overwrite asks for
    # that very name rather than hero-0001.png), so merge fails
    (out_dir / "hero.png").mkdir(parents=True)
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "hero", "name": "hero", "seed": 3}])
    failed = sdpipe("batch", str(path), "--sd-url", url, "--overwrite", *SMALL, env={"MAX_RETRIES": "0"})
    assert failed.exit_code == 1
    (job,) = json.loads(sdpipe("jobs", "--state", "failed", "--json").stdout)
    assert job["error"]["step"] == "merge"
    assert _mock_calls(url) == 1
    # When the obstacle is gone and the job is retried
    (out_dir / "hero.png").rmdir()
    retried = sdpipe("retry", job["job_id"][:8])
    assert retried.exit_code == 0, retried.output
    # Then it succeeds from merge, without a second SD call
    record = json.loads(sdpipe("status", job["job_id"], "--json").stdout)
    assert record["state"] == "succeeded"
    assert record["steps"]["generate"]["attempts"] == 1
    assert record["steps"]["merge"]["attempts"] == 2
    assert _mock_calls(url) == 1
    assert (out_dir / "hero.png").is_file()


def test_retry_and_cancel_need_a_target(sdpipe: Invoke) -> None:
    assert sdpipe("retry").exit_code == 2
    assert sdpipe("retry", "--batch", "x").exit_code == 2  # --failed is required with --batch
    assert sdpipe("cancel").exit_code == 2


def test_retry_in_embedded_mode_takes_the_sd_server_to_retry_on(sdpipe: Invoke) -> None:
    # Given a job that failed on a server answering 500
    job_id = _failed_job(sdpipe, "mock://failing?fail_rate=1.0")
    # When it is retried on a server that answers, it succeeds there
    result = sdpipe("retry", job_id, "--sd-url", "mock://")
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip().splitlines()[-1]).is_file()


def test_cancel_of_a_finished_job_says_it_had_already_ended(sdpipe: Invoke) -> None:
    (job,) = json.loads(sdpipe("generate", "x", "--sd-url", "mock://", *SMALL, "--json").stdout)
    result = sdpipe("cancel", job["job_id"][:8])
    assert result.exit_code == 0  # nothing to do is not a failure: cancelling stays idempotent
    assert result.stdout.strip() == "cancelled 0 job(s)"
    assert f"job {job['job_id']} had already ended (succeeded): nothing to cancel" in result.stderr


def _failed_job(sdpipe: Invoke, url: str) -> str:
    """A job that failed on ``url`` (no retries), and its id."""
    result = sdpipe("generate", "x", "--sd-url", url, *SMALL, env={"MAX_RETRIES": "0"})
    assert result.exit_code != 0, result.output
    return str(result.stdout.split()[1])


def test_retry_failed_flag_with_a_job_id_is_refused(sdpipe: Invoke) -> None:
    job_id = _failed_job(sdpipe, "mock://retry-flag?fail_rate=1.0")
    result = sdpipe("retry", job_id, "--failed", env={"SD_API_URL": "mock://retry-flag-up"})
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --failed goes with --batch") and "Traceback" not in result.output
    assert result.stdout == ""  # nothing requeued
    assert json.loads(sdpipe("status", job_id, "--json").stdout)["state"] == "failed"


def test_retry_unreachable_sd_exits_3_like_generate(sdpipe: Invoke) -> None:
    # Given a failed job
    job_id = _failed_job(sdpipe, "mock://failing?fail_rate=1.0")
    # When it is retried on a server nobody listens on
    result = sdpipe("retry", job_id[:8], "--sd-url", "http://127.0.0.1:9", env={"MAX_RETRIES": "0"})
    # Then retry follows generate's exit-code rule: 3, with the reason in one line
    assert result.exit_code == 3, result.output
    (error_line,) = result.stderr.strip().splitlines()
    assert error_line.startswith(f"job {job_id} failed: generate: cannot reach the SD server at http://127.0.0.1:9")


def test_retry_that_succeeds_prints_the_output_path(sdpipe: Invoke, out_dir: Path) -> None:
    job_id = _failed_job(sdpipe, "mock://retry-down?fail_rate=1.0")
    result = sdpipe("retry", job_id, "--sd-url", "mock://retry-up")
    assert result.exit_code == 0, result.output
    requeued, image = result.stdout.strip().splitlines()
    assert requeued == f"job {job_id} requeued"
    assert Path(image).parent == out_dir.absolute() and Path(image).is_file()


def test_retry_of_a_succeeded_job_is_refused_with_an_error_line(sdpipe: Invoke) -> None:
    done = sdpipe("generate", "x", "--sd-url", "mock://", *SMALL)
    assert done.exit_code == 0, done.output
    job_id = done.stdout.split()[1]
    result = sdpipe("retry", job_id)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: job {job_id} is succeeded: only failed or cancelled jobs can be retried")
    assert result.stdout == ""


def test_batch_json_prints_only_the_manifest(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a fox", "seed": 1}, {"prompt": "a cat", "seed": 2}])
    result = sdpipe("batch", str(path), "--sd-url", "mock://", "--json", *SMALL)
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert manifest["counts"] == {"succeeded": 2}
    assert (out_dir / "batches" / f"{manifest['batch_id']}.json").is_file()


def test_schedule_add_list_show_run_remove(sdpipe: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "nightly.txt"
    path.write_text("a lighthouse at dusk\n")
    added = sdpipe("schedule", "add", "nightly", str(path), "--cron", "0 2 * * *", "--tz", "Europe/Berlin", *SMALL)
    assert added.exit_code == 0, added.output
    assert "next run" in added.stdout and "CE" in added.stdout  # CET or CEST
    listing = json.loads(sdpipe("schedule", "list", "--json").stdout)
    assert [s["name"] for s in listing] == ["nightly"]
    assert listing[0]["options"] == {"width": 64, "height": 64}
    ran = sdpipe("schedule", "run", "nightly", env={"SD_API_URL": "mock://"})
    assert ran.exit_code == 0, ran.output
    assert ran.stdout.startswith("fired")
    shown = json.loads(sdpipe("schedule", "show", "nightly", "--json").stdout)
    assert [run["status"] for run in shown["runs"]] == ["fired"]
    assert shown["runs"][0]["manual"] is True
    batch = json.loads(sdpipe("status", "--batch", shown["runs"][0]["batch_id"], "--json").stdout)
    assert batch["schedule"] == "nightly"
    assert batch["counts"] == {"succeeded": 1}
    assert sdpipe("schedule", "remove", "nightly").exit_code == 0
    assert sdpipe("schedule", "show", "nightly").exit_code == 2


def test_schedule_show_gives_the_grace_the_scheduler_applies(sdpipe: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("x\n")
    assert sdpipe("schedule", "add", "n", str(path), "--cron", "0 2 * * *", "--grace-s", "0").exit_code == 0
    shown = " ".join(sdpipe("schedule", "show", "n").stdout.split())
    assert "grace 60 s (0 s asked; the minimum is 60 s)" in shown


def test_schedule_add_refuses_bad_cron_tz_and_file(sdpipe: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("x\n")
    bad_cron = sdpipe("schedule", "add", "n", str(path), "--cron", "61 * * * *")
    assert bad_cron.exit_code == 2 and "cron" in bad_cron.stderr
    bad_tz = sdpipe("schedule", "add", "n", str(path), "--cron", "0 2 * * *", "--tz", "Europe/Berln")
    assert bad_tz.exit_code == 2 and "Europe/Berlin" in bad_tz.stderr
    missing = sdpipe("schedule", "add", "n", str(tmp_path / "nope.txt"), "--cron", "0 2 * * *")
    assert missing.exit_code == 2


def test_named_row_rendered_again_gets_a_counter_and_keeps_the_old_output(
    sdpipe: Invoke, tmp_path: Path, out_dir: Path
) -> None:
    # Given a named output from an earlier render
    first = _jsonl(tmp_path / "a.jsonl", [{"prompt": "a red fox", "seed": 1, "name": "same"}])
    assert sdpipe("batch", str(first), "--sd-url", "mock://", *SMALL).exit_code == 0
    old = (out_dir / "same.png").read_bytes()
    # When another job renders to the same name (before: it replaced same.png, both jobs pointing at it)
    second = _jsonl(tmp_path / "b.jsonl", [{"prompt": "a blue whale", "seed": 99, "name": "same"}])
    result = sdpipe("batch", str(second), "--sd-url", "mock://", "--json", *SMALL)
    assert result.exit_code == 0, result.output
    # Then the old file is untouched and the new job wrote same-0001.png, as A1111 numbers its files
    assert (out_dir / "same.png").read_bytes() == old
    assert json.loads((out_dir / "same.json").read_text())["prompt"] == "a red fox"
    assert json.loads((out_dir / "same-0001.json").read_text())["prompt"] == "a blue whale"
    manifest = json.loads(result.stdout[result.stdout.index("{") :])
    assert manifest["rows"][0]["jobs"][0]["output"].endswith("same-0001.png")


def test_named_row_with_overwrite_replaces_the_old_output(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    first = _jsonl(tmp_path / "a.jsonl", [{"prompt": "a red fox", "seed": 1, "name": "catalogue-item"}])
    assert sdpipe("batch", str(first), "--sd-url", "mock://", *SMALL).exit_code == 0
    old = (out_dir / "catalogue-item.png").read_bytes()
    second = _jsonl(tmp_path / "b.jsonl", [{"prompt": "a blue whale", "seed": 99, "name": "catalogue-item"}])
    assert sdpipe("batch", str(second), "--sd-url", "mock://", "--overwrite", *SMALL).exit_code == 0
    sidecar = json.loads((out_dir / "catalogue-item.json").read_text())
    assert sidecar["prompt"] == "a blue whale"
    assert (out_dir / "catalogue-item.png").read_bytes() != old
    assert not (out_dir / "catalogue-item-0001.png").exists()


def test_resume_after_editing_a_row_renders_the_new_row(sdpipe: Invoke, tmp_path: Path) -> None:
    url = "mock://edited"
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "keep", "seed": 1}, {"prompt": "old", "seed": 2}])
    first = sdpipe("batch", str(path), "--sd-url", url, *SMALL)
    batch_id = first.stdout.splitlines()[0].split()[1]
    _jsonl(path, [{"prompt": "keep", "seed": 1}, {"prompt": "new", "seed": 3}])
    resumed = sdpipe("batch", str(path), "--sd-url", url, "--resume", batch_id, "--json", *SMALL)
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads(resumed.stdout[resumed.stdout.index("{") :])
    assert [row["params"]["prompt"] for row in manifest["rows"]] == ["keep", "new"]
    assert [job["state"] for row in manifest["rows"] for job in row["jobs"]] == ["succeeded", "succeeded"]
    assert _mock_calls(url) == 3
    listed = json.loads(sdpipe("jobs", "--batch", batch_id[:8], "--json").stdout)
    assert len(listed) == 3  # the superseded job stays in the batch's history


def test_retry_batch_leaves_out_jobs_of_rows_edited_away(sdpipe: Invoke, tmp_path: Path) -> None:
    # Given a batch whose two rows failed, then a --resume after editing row 2 away
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "keep", "seed": 1}, {"prompt": "gone", "seed": 2}])
    failing = sdpipe("batch", str(path), "--sd-url", "mock://edit-down?fail_rate=1.0", *SMALL, env={"MAX_RETRIES": "0"})
    batch_id = failing.stdout.split()[1]
    _jsonl(path, [{"prompt": "keep", "seed": 1}])
    resumed = sdpipe("batch", str(path), "--sd-url", "mock://edit-up", "--resume", batch_id, *SMALL)
    assert resumed.exit_code == 0, resumed.output
    # When the batch is retried
    result = sdpipe("retry", "--batch", batch_id, "--failed", env={"SD_API_URL": "mock://edit-up"})
    # Then the failed job of the row no longer in the file is not rendered again
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == "nothing to retry: the batch has no failed or cancelled job"
    assert _mock_calls("mock://edit-up") == 1


def test_batch_name_template_numbers_outputs_by_row(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a fox", "seed": 1}, {"prompt": "東京の夜景", "seed": 2}])
    result = sdpipe("batch", str(path), "--sd-url", "mock://", "--name-template", "rows/{row}-{prompt}-{seed}", *SMALL)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out_dir / "rows").glob("*.png")) == ["1-a-fox-1.png", "2-東京の夜景-2.png"]


def test_schedule_add_keeps_the_quality_for_its_runs(sdpipe: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a lighthouse at dusk\n")
    args = ("--cron", "0 2 * * *", "--format", "webp", "--quality", "40", *SMALL)
    assert sdpipe("schedule", "add", "q", str(path), *args).exit_code == 0
    (listed,) = json.loads(sdpipe("schedule", "list", "--json").stdout)
    assert listed["options"] == {"width": 64, "height": 64, "format": "webp", "quality": 40}
    refused = sdpipe("schedule", "add", "r", str(path), "--cron", "0 2 * * *", "--quality", "0")
    assert refused.exit_code == 2 and "quality" in refused.stderr


def test_schedule_runs_name_their_outputs_with_the_schedules_template(
    sdpipe: Invoke, tmp_path: Path, out_dir: Path
) -> None:
    # Given a schedule added with --name-template
    path = tmp_path / "p.txt"
    path.write_text("a lighthouse at dusk\n")
    args = ("--cron", "0 2 * * *", "--name-template", "nightly/{row}-{seed}", "--seed", "5", *SMALL)
    assert sdpipe("schedule", "add", "n", str(path), *args).exit_code == 0
    assert json.loads(sdpipe("schedule", "show", "n", "--json").stdout)["name_template"] == "nightly/{row}-{seed}"
    # When it runs twice
    for _ in range(2):
        ran = sdpipe("schedule", "run", "n", env={"SD_API_URL": "mock://"})
        assert ran.exit_code == 0, ran.output
    # Then both runs used the template, and the second kept the first's file (a counter, no overwrite)
    assert sorted(p.name for p in (out_dir / "nightly").glob("*.png")) == ["1-5-0001.png", "1-5.png"]


def test_schedule_with_overwrite_replaces_its_previous_output(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a lighthouse at dusk\n")
    args = ("--cron", "0 2 * * *", "--name-template", "same", "--overwrite", *SMALL)
    assert sdpipe("schedule", "add", "n", str(path), *args).exit_code == 0
    for _ in range(2):
        assert sdpipe("schedule", "run", "n", env={"SD_API_URL": "mock://"}).exit_code == 0
    assert sorted(p.name for p in out_dir.glob("same*.png")) == ["same.png"]


def test_retry_in_embedded_mode_uses_the_jobs_own_sd_server(sdpipe: Invoke) -> None:
    # Given a job made with --sd-url on a server that failed it once (SD_API_URL is another server)
    url = "mock://own-server?fail_rate=1.0"
    job_id = _failed_job(sdpipe, url)
    calls = _mock_calls(url)
    # When it is retried without --sd-url
    result = sdpipe("retry", job_id, env={"SD_API_URL": "http://127.0.0.1:9", "MAX_RETRIES": "0"})
    # Then the retry went to the job's own server, not to SD_API_URL
    assert _mock_calls(url) == calls + 1
    assert "127.0.0.1:9" not in result.output


def test_batch_when_the_sd_server_refuses_connections_enqueues_nothing_exit_3(
    sdpipe: Invoke, tmp_path: Path, out_dir: Path
) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"r{i}"} for i in range(3)])
    result = sdpipe("batch", str(path), "--sd-url", "http://127.0.0.1:9", *SMALL)
    assert result.exit_code == 3, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot reach the SD server at http://127.0.0.1:9")
    assert json.loads(sdpipe("jobs", "--json").stdout) == []


def test_batch_with_failures_names_each_failed_row_and_the_retry_command(sdpipe: Invoke, tmp_path: Path) -> None:
    # Given a batch whose second row cannot be rendered (its output name is taken by a folder)
    (tmp_path / "outputs" / "taken.png").mkdir(parents=True)
    rows = [{"prompt": "fine", "seed": 1}, {"prompt": "blocked", "name": "taken", "seed": 2}]
    path = _jsonl(tmp_path / "p.jsonl", rows)
    result = sdpipe("batch", str(path), "--sd-url", "mock://", "--overwrite", *SMALL, env={"MAX_RETRIES": "0"})
    assert result.exit_code == 1
    batch_id = result.stdout.splitlines()[0].split()[1]
    # Then the summary says which row failed, why, and how to retry it
    failures = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert len(failures) == 1 and failures[0].startswith("line 2: job ") and " failed: merge: " in failures[0]
    assert f"retry them: sdpipe retry --batch {batch_id} --failed" in result.stderr.splitlines()


def test_schedule_add_accepts_a_cron_macro(sdpipe: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("x\n")
    added = sdpipe("schedule", "add", "hourly", str(path), "--cron", "@hourly")
    assert added.exit_code == 0, added.output
    (listed,) = json.loads(sdpipe("schedule", "list", "--json").stdout)
    assert listed["cron"] == "@hourly"


def test_schedule_flags_win_over_the_yaml_files_defaults_and_show_says_so(sdpipe: Invoke, tmp_path: Path) -> None:
    # Given a YAML file whose defaults set steps 30, and a schedule added with --steps 12
    path = tmp_path / "p.yaml"
    path.write_text("defaults:\n  steps: 30\n  cfg: 5\njobs:\n  - a lighthouse\n  - prompt: a fox\n    steps: 9\n")
    assert sdpipe("schedule", "add", "s", str(path), "--cron", "0 2 * * *", "--steps", "12", *SMALL).exit_code == 0
    # When it runs
    ran = sdpipe("schedule", "run", "s", env={"SD_API_URL": "mock://"})
    assert ran.exit_code == 0, ran.output
    batch_id = json.loads(sdpipe("schedule", "show", "s", "--json").stdout)["runs"][0]["batch_id"]
    manifest = json.loads(sdpipe("status", "--batch", batch_id, "--json").stdout)
    # Then the flag beat the file's defaults, the file's other defaults still apply, and the row beat both
    assert [row["params"]["steps"] for row in manifest["rows"]] == [12, 9]
    assert manifest["rows"][0]["params"]["cfg"] == 5
    shown = " ".join(sdpipe("schedule", "show", "s").stdout.split())
    assert "precedence settings < the file's defaults < these flags < the row" in shown


def test_batch_dry_run_at_80_columns_summarises_a_long_plan_and_breaks_no_word(sdpipe: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("".join(f"a lighthouse at dusk number {i} seen from a small boat on the sea\n" for i in range(30)))
    result = sdpipe("batch", str(path), "--dry-run", "--count", "4", "--seed", "7", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    rows = [line for line in lines if "lighthouse" in line]
    assert len(rows) == 20  # a screenful, one line per row
    assert all("512x512" in row and "7…10" in row and "Euler a" in row for row in rows[:1])
    assert "sampler" in lines[1] or any("sampler" in line for line in lines[:4])  # headers whole
    assert "… and 10 more row(s): --all shows every one" in result.stdout
    assert "30 row(s), 120 job(s), 120 SD call(s)" in result.stdout
    every = sdpipe("batch", str(path), "--dry-run", "--all", env={"COLUMNS": "80"})
    assert len([line for line in every.stdout.splitlines() if "lighthouse" in line]) == 30


def test_schedule_list_at_80_columns_breaks_no_word(sdpipe: Invoke, tmp_path: Path) -> None:
    folder = tmp_path / "a-rather-long-folder-name-for-the-nightly-prompt-files"
    folder.mkdir()
    path = folder / "nightly-prompts.txt"
    path.write_text("x\n")
    cron = ("--cron", "0 2 * * *", "--tz", "Europe/Berlin")
    assert sdpipe("schedule", "add", "nightly", str(path), *cron).exit_code == 0
    listing = sdpipe("schedule", "list", env={"COLUMNS": "80"})
    lines = listing.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), listing.stdout
    (row,) = [line for line in lines if "nightly" in line]  # one line
    assert "Europe/Berlin" in row and "0 2 * * *" in row


def test_retry_batch_of_many_jobs_prints_one_summary_line(sdpipe: Invoke, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"r{i}", "seed": i} for i in range(12)])
    failed = sdpipe("batch", str(path), "--sd-url", "mock://many?fail_rate=1.0", *SMALL, env={"MAX_RETRIES": "0"})
    assert failed.exit_code == 1
    batch_id = failed.stdout.splitlines()[0].split()[1]
    result = sdpipe("retry", "--batch", batch_id[:8], "--failed", "--sd-url", "mock://many-up")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"batch {batch_id}: 12 job(s) requeued (12 from generate)"
    assert not any(line.endswith(" requeued") and line.startswith("job ") for line in lines)
    assert len(lines) == 13  # and, embedded, the 12 output paths as generate prints them
