"""End-to-end fixtures: real processes (private redis-server, ``sdpipe mock-sd``, ``sdpipe worker``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, port_open, wait_until
from tests.procs import SDPIPE, Proc


def e2e_environment(redis_url: str, folder: Path) -> dict[str, str]:
    """Environment for sdpipe processes: Redis mode, one output folder under ``folder``, fast retries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SD_", "REDIS_", "OUTPUT_"))}
    env.update(
        REDIS_URL=redis_url,
        OUTPUT_DIR=str(folder / "outputs"),
        RETRY_MIN_BACKOFF_MS="50",
        RETRY_MAX_BACKOFF_MS="500",
        PYTHONUNBUFFERED="1",
    )
    return env


@contextmanager
def spawner(folder: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``sdpipe ARGS`` in the background (its log in ``folder``); every process is stopped at the end."""
    procs: list[Proc] = []

    def start(*args: str, env: dict[str, str], name: str, cwd: Path | None = None) -> Proc:
        log = folder / f"{name}.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen([*SDPIPE, *args], env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd)
        proc = Proc(popen=popen, log=log)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture
def e2e_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for every sdpipe process of one test (see :func:`e2e_environment`)."""
    return e2e_environment(redis_url, tmp_path)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``sdpipe ARGS`` in the background; every process is stopped at teardown."""
    with spawner(tmp_path) as start:
        yield start


def start_mock(spawn: Callable[..., Proc], env: dict[str, str], *args: str, name: str = "mock-sd") -> str:
    """Start ``sdpipe mock-sd ARGS`` on a free port and return its URL once it listens."""
    port = free_port()
    proc = spawn("mock-sd", "--port", str(port), *args, env=env, name=name)
    assert wait_until(lambda: port_open(port), timeout_s=20), proc.output()
    return f"http://127.0.0.1:{port}"


def start_worker(
    spawn: Callable[..., Proc],
    env: dict[str, str],
    *,
    processes: int = 2,
    threads: int = 2,
    name: str = "worker",
    cwd: Path | None = None,
) -> Proc:
    """Start ``sdpipe worker`` (in ``cwd``) and wait until every process is ready."""
    proc = spawn("worker", "--processes", str(processes), "--threads", str(threads), env=env, name=name, cwd=cwd)
    assert wait_until(
        lambda: proc.output().count("Worker process is ready") >= processes or proc.popen.poll() is not None,
        timeout_s=60,
    ), proc.output()
    assert proc.popen.poll() is None, proc.output()
    return proc


def child_pids(pid: int) -> list[int]:
    """The worker processes Dramatiq forked from ``pid`` (same command line as their parent)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        parent_cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    found = []
    for child in children:
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes() == parent_cmd:
                found.append(int(child))
        except OSError:
            continue
    return found


@pytest.fixture
def mock_sd(spawn: Callable[..., Proc], e2e_env: dict[str, str]) -> str:
    """``sdpipe mock-sd`` over HTTP on a free port; its URL."""
    return start_mock(spawn, e2e_env)


@pytest.fixture
def workers(spawn: Callable[..., Proc], e2e_env: dict[str, str], mock_sd: str) -> Proc:
    """``sdpipe worker`` with 2 processes against the private Redis and the mock server."""
    return start_worker(spawn, {**e2e_env, "SD_API_URL": mock_sd})


def mock_stats(url: str) -> dict[str, object]:
    return dict(httpx.get(f"{url}/mock/stats", timeout=5).json())


def run_sdpipe(
    *args: str, env: dict[str, str], timeout_s: float = 180, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SDPIPE, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False, cwd=cwd
    )
