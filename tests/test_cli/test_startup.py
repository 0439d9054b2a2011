"""What a command loads: ``sdpipe --help`` none of the heavy libraries, reading commands no image libraries.

Start-up time is measured in ``bench/`` (target 9); these tests only check what each command imports,
in a fresh interpreter, so a module-level import that drags a heavy library back in fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.test_cli.conftest import Invoke

#: Libraries a command only needs when it renders, decodes, enqueues or calls an SD server.
HEAVY = {"numpy", "PIL", "dramatiq", "redis", "httpx"}


def _run(args: list[str], folder: Path, **env_values: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``sdpipe ARGS`` in a new interpreter; its result and the top-level packages it had imported at exit."""
    result, modules = _run_modules(args, folder, **env_values)
    return result, {name.split(".")[0] for name in modules}


def _run_modules(args: list[str], folder: Path, **env_values: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``sdpipe ARGS`` in a new interpreter, entered as the console script enters (:func:`cli.entry.main`);
    its result and every module it had imported at exit (listed by an ``atexit`` handler: the quick exit
    runs those too; a module blocked by a None entry in ``sys.modules`` was not imported)."""
    listing = folder / "modules.json"
    code = (
        "import atexit, json, sys\n"
        "def listed():\n"
        "    return json.dumps(sorted(name for name, module in sys.modules.items() if module is not None))\n"
        f"atexit.register(lambda: open({str(listing)!r}, 'w').write(listed()))\n"
        "from cli.entry import main\n"
        f"sys.argv = ['sdpipe', *{args!r}]\n"
        "main()\n"
    )
    env = {**os.environ, "COLUMNS": "120", **env_values}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=folder, capture_output=True, text=True, timeout=120
    )
    return result, set(json.loads(listing.read_text()))


def test_startup_help_loads_no_heavy_library(tmp_path: Path) -> None:
    result, loaded = _run(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "generate" in result.stdout and "schedule" in result.stdout
    assert loaded & HEAVY == set()


def test_startup_command_help_loads_no_heavy_library(tmp_path: Path) -> None:
    result, loaded = _run(["status", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--batch" in result.stdout
    assert loaded & HEAVY == set()


def test_startup_embedded_status_and_jobs_load_no_image_library(sdpipe: Invoke, out_dir: Path, tmp_path: Path) -> None:
    # Given a finished embedded job
    generated = sdpipe("generate", "a red fox", "--sd-url", "mock://", "--json", "--width", "64", "--height", "64")
    assert generated.exit_code == 0, generated.output
    job_id = json.loads(generated.stdout)[0]["job_id"]
    # When another process shows it, and lists the jobs (SD_API_URL a mock:// URL: checked, never served)
    status, status_loaded = _run(["status", job_id, "--out", str(out_dir)], tmp_path, SD_API_URL="mock://?seed=3")
    jobs, jobs_loaded = _run(["jobs", "--out", str(out_dir)], tmp_path, SD_API_URL="mock://?seed=3")
    # Then both read the store and print the job without loading numpy or PIL (nor the broker)
    assert status.returncode == 0, status.stderr
    assert job_id in status.stdout and "succeeded" in status.stdout
    assert jobs.returncode == 0, jobs.stderr
    assert job_id[:8] in jobs.stdout
    assert status_loaded & {"numpy", "PIL", "dramatiq"} == set()
    assert jobs_loaded & {"numpy", "PIL", "dramatiq"} == set()


def test_startup_embedded_jobs_loads_neither_the_mock_nor_rich_emoji(
    sdpipe: Invoke, out_dir: Path, tmp_path: Path
) -> None:
    # Given a finished embedded job whose prompt holds an emoji code
    generated = sdpipe("generate", "a :fox_face: in snow", "--sd-url", "mock://", "--width", "64", "--height", "64")
    assert generated.exit_code == 0, generated.output
    # When another process lists the jobs with SD_API_URL=mock:// (nothing to check in it)
    jobs, loaded = _run_modules(["jobs", "--out", str(out_dir), "--json"], tmp_path, SD_API_URL="mock://")
    table, table_loaded = _run_modules(["jobs", "--out", str(out_dir)], tmp_path, SD_API_URL="mock://")
    # Then the prompt is printed as written, and neither the mock's modules nor rich's emoji table were loaded
    assert jobs.returncode == 0 and table.returncode == 0, jobs.stderr + table.stderr
    assert ":fox_face:" in jobs.stdout
    assert not any(name.startswith("pipeline.sd.mock") for name in loaded | table_loaded)
    assert "rich._emoji_codes" not in table_loaded


#: What only ``status`` uses (webhook deliveries and the events they name, a result's file check, batch
#: manifests, the queue control): ``jobs`` lists records and loads none of it.
STATUS_ONLY = (
    "pipeline.webhooks.deliveries",
    "pipeline.webhooks.signing",
    "standardwebhooks",
    "pipeline.events",
    "pipeline.jobs.planning",
    "pipeline.images",
    "pipeline.batches",
    "pipeline.jobs.control",
)


def test_startup_embedded_jobs_loads_nothing_only_status_uses(sdpipe: Invoke, out_dir: Path, tmp_path: Path) -> None:
    # Given a finished embedded job
    generated = sdpipe("generate", "a red fox", "--sd-url", "mock://", "--json", "--width", "64", "--height", "64")
    assert generated.exit_code == 0, generated.output
    job_id = json.loads(generated.stdout)[0]["job_id"]
    # When another process lists the jobs, and shows the job
    jobs, jobs_loaded = _run_modules(["jobs", "--out", str(out_dir)], tmp_path, SD_API_URL="mock://")
    status, status_loaded = _run_modules(["status", job_id, "--out", str(out_dir)], tmp_path, SD_API_URL="mock://")
    # Then `jobs` printed the job without loading deliveries, events, planning or manifests; `status`
    # still loads what it shows (the deliveries) but not the planning of new jobs (the result's file check
    # lives with the job's files) nor the image geometry it imports
    assert jobs.returncode == 0 and status.returncode == 0, jobs.stderr + status.stderr
    assert job_id[:8] in jobs.stdout and job_id in status.stdout
    assert sorted(name for name in jobs_loaded if name.startswith(STATUS_ONLY)) == []
    assert "pipeline.webhooks.deliveries" in status_loaded
    assert {"pipeline.jobs.planning", "pipeline.images", "pipeline.images.geometry"} & status_loaded == set()


def test_startup_collector_paused_while_loading_and_on_when_the_command_runs(out_dir: Path, tmp_path: Path) -> None:
    # Given a fresh interpreter that notes whether the collector is on when `sdpipe jobs --json` prints
    listing = tmp_path / "collector.json"
    code = (
        "import gc, json, sys\n"
        "import cli.output\n"
        "printed = cli.output.print_json\n"
        "during = []\n"
        "def spy(*args, **kwargs):\n"
        "    during.append(gc.isenabled())\n"
        "    return printed(*args, **kwargs)\n"
        "cli.output.print_json = spy\n"
        "from cli.main import main\n"
        f"sys.argv = ['sdpipe', 'jobs', '--json', '--out', {str(out_dir)!r}]\n"
        "collections = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and collections.append(len(during)))\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        f"    open({str(listing)!r}, 'w').write(json.dumps({{'during': during, 'after': gc.isenabled(),\n"
        "        'frozen': gc.get_freeze_count(), 'collections_before_print': collections.count(0)}))\n"
    )
    env = {**os.environ, "SD_API_URL": "mock://"}
    # When the command runs
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    seen = json.loads(listing.read_text())
    # Then it printed with the collector on, start-up's objects frozen, and none collected while loading
    assert result.returncode == 0, result.stderr
    assert seen["during"] == [True] and seen["after"] is True
    assert seen["frozen"] > 10_000
    assert seen["collections_before_print"] == 0


#: What only runs a step (or a worker process): a command that enqueues loads none of it.
STEP_CODE = (
    "numpy",
    "PIL",
    "yaml",
    "pipeline.jobs.steps",
    "pipeline.jobs.renders",
    "pipeline.images.codec",
    "pipeline.images.seams",
    "pipeline.images.png",
    "actors.worker",
    "actors.supervisor",
)


def test_startup_redis_generate_no_wait_loads_no_step_code(redis_url: str, sd_server: Any, tmp_path: Path) -> None:
    # Given Redis mode, an SD server over HTTP and no worker
    env = {"REDIS_URL": redis_url, "SD_API_URL": sd_server.url, "OUTPUT_DIR": str(tmp_path / "outputs")}
    # When a job is submitted without waiting
    args = ["generate", "a red fox", "--width", "64", "--height", "64", "--no-wait", "--json"]
    result, loaded = _run_modules(args, tmp_path, **env)
    # Then it is queued (checked against the server's catalog, enqueued) without the step code being loaded
    assert result.returncode == 0, result.stderr
    assert [job["state"] for job in json.loads(result.stdout)] == ["queued"]
    assert sorted(name for name in loaded if name.startswith(STEP_CODE)) == []
    assert {"httpx", "actors.steps", "pipeline.sd.catalog"} <= loaded  # it did check and enqueue
    # nor httpx's own command line (click, pygments), which httpx's package imports when it can
    assert sorted(name for name in loaded if name.startswith(("httpx._main", "click", "pygments"))) == []


def test_startup_redis_status_and_jobs_load_no_http_client_broker_or_image_library(
    redis_url: str, sd_server: Any, tmp_path: Path
) -> None:
    # Given Redis mode and one queued job (no worker)
    env = {"REDIS_URL": redis_url, "SD_API_URL": sd_server.url, "OUTPUT_DIR": str(tmp_path / "outputs")}
    args = ["generate", "a red fox", "--width", "64", "--height", "64", "--no-wait", "--json"]
    queued, _ = _run(args, tmp_path, **env)
    assert queued.returncode == 0, queued.stderr
    job_id = json.loads(queued.stdout)[0]["job_id"]
    # When another process shows the job, and lists the jobs
    status, status_loaded = _run(["status", job_id], tmp_path, **env)
    jobs, jobs_loaded = _run(["jobs"], tmp_path, **env)
    # Then both read Redis and print the job without loading httpx (no SD call), Dramatiq or image libraries
    assert status.returncode == 0 and jobs.returncode == 0, status.stderr + jobs.stderr
    assert job_id in status.stdout and "queued" in status.stdout
    assert job_id[:8] in jobs.stdout
    assert "redis" in status_loaded and "redis" in jobs_loaded
    assert status_loaded & {"httpx", "dramatiq", "numpy", "PIL"} == set()
    assert jobs_loaded & {"httpx", "dramatiq", "numpy", "PIL"} == set()
