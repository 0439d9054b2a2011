"""The console script's entry (``cli.entry``): nothing imported before the collector pauses, and a quick
exit that still runs the ``atexit`` handlers, flushes the output and keeps the exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_cli.conftest import Invoke


def _python(code: str, folder: Path, **env_values: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120", **env_values}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=folder, capture_output=True, text=True, timeout=120
    )


def _sdpipe(args: list[str], folder: Path, **env_values: str) -> subprocess.CompletedProcess[str]:
    """``python -m cli ARGS``: the console script's path (``cli.__main__`` calls ``cli.entry.main``)."""
    env = {**os.environ, "COLUMNS": "120", **env_values}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, cwd=folder, capture_output=True, text=True, timeout=120
    )


def test_entry_imports_no_library_before_the_collector_pauses(tmp_path: Path) -> None:
    # When the console script's module (and the package around it) is imported in a fresh interpreter
    result = _python(
        "import json, sys\nimport cli, cli.entry\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))",
        tmp_path,
    )
    # Then neither Typer, Click, pydantic nor Rich was loaded yet
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) & {"typer", "click", "pydantic", "pydantic_settings", "rich"} == set()


def test_entry_jobs_prints_everything_and_exits_0(sdpipe: Invoke, out_dir: Path, tmp_path: Path) -> None:
    # Given a finished embedded job
    generated = sdpipe("generate", "a red fox", "--sd-url", "mock://", "--json", "--width", "64", "--height", "64")
    assert generated.exit_code == 0, generated.output
    job_id = json.loads(generated.stdout)[0]["job_id"]
    # When another process lists the jobs and shows the job (both end with the quick exit)
    jobs = _sdpipe(["jobs", "--json", "--out", str(out_dir)], tmp_path, SD_API_URL="mock://")
    status = _sdpipe(["status", job_id, "--json", "--out", str(out_dir)], tmp_path, SD_API_URL="mock://")
    # Then their whole output arrived through the pipe, and they exited 0
    assert jobs.returncode == 0, jobs.stderr
    assert [row["job_id"] for row in json.loads(jobs.stdout)] == [job_id]
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["job_id"] == job_id


def test_entry_status_in_an_empty_folder_exits_2_with_its_message(out_dir: Path, tmp_path: Path) -> None:
    out_dir.mkdir()
    result = _sdpipe(["status", "nope", "--out", str(out_dir)], tmp_path, SD_API_URL="mock://")
    assert result.returncode == 2
    assert "error: no sdpipe jobs under" in result.stderr


def test_entry_usage_error_exits_2_with_its_message(tmp_path: Path) -> None:
    result = _sdpipe(["statu"], tmp_path)
    assert result.returncode == 2
    assert "Did you mean 'status'?" in result.stderr


def test_entry_quick_exit_runs_atexit_handlers_and_flushes(tmp_path: Path) -> None:
    # Given buffered output and an atexit handler that writes more
    code = (
        "import atexit, sys\n"
        "from cli.entry import quick_exit\n"
        "atexit.register(lambda: sys.stdout.write('handler ran'))\n"
        "sys.stdout.write('printed, ')\n"
        "sys.stderr.write('warned')\n"
        "quick_exit(3)\n"
        "print('not reached')\n"
    )
    # When the process ends with quick_exit(3)
    result = _python(code, tmp_path)
    # Then all of it was written, and the exit code is kept
    assert result.returncode == 3
    assert result.stdout == "printed, handler ran"
    assert result.stderr == "warned"


def test_entry_quick_exit_waits_for_a_running_thread(tmp_path: Path) -> None:
    # Given a thread that writes a file after the main thread asks to exit
    marker = tmp_path / "written"
    code = (
        "import threading\n"
        "from cli.entry import quick_exit\n"
        "go = threading.Event()\n"
        f"thread = threading.Thread(target=lambda: (go.wait(), open({str(marker)!r}, 'w').write('done')))\n"
        "thread.start()\n"
        "threading.Timer(0.05, go.set).start()\n"
        "quick_exit(4)\n"
    )
    # When the process ends with quick_exit(4)
    result = _python(code, tmp_path)
    # Then it exited the usual way: the thread finished its write, and the exit code is kept
    assert result.returncode == 4, result.stderr
    assert marker.read_text() == "done"


def test_entry_blocks_httpx_cli_and_httpx_still_imports(tmp_path: Path) -> None:
    # When the entry's blocking runs before httpx is imported (click is installed here, with uvicorn)
    result = _python(
        "import json, sys\nimport cli.entry\ncli.entry.block_unused_modules()\nimport httpx\n"
        "print(json.dumps([httpx.Client.__name__, sys.modules.get('httpx._main') is None, 'click' in sys.modules]))",
        tmp_path,
    )
    # Then httpx works, and its command line (with click) was not imported
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["Client", True, False]
