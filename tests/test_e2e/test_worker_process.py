"""``sdpipe worker`` as a process tree: it refuses a taken metrics port, and its children do not
outlive it."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.test_e2e.conftest import Proc, run_sdpipe, start_worker

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


def test_worker_refuses_a_metrics_port_that_is_taken(e2e_env: dict[str, str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_sdpipe("worker", "--processes", "1", env={**e2e_env, "METRICS_PORT": str(port)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"METRICS_PORT {port} is not free" in lines[0] and "Traceback" not in result.stderr


def test_worker_processes_stop_when_the_worker_is_killed(e2e_env: dict[str, str], spawn: Callable[..., Proc]) -> None:
    # Given a running `sdpipe worker` with two processes
    worker = start_worker(spawn, e2e_env, processes=2, threads=1)
    children = _children(worker.popen.pid)
    assert len(children) >= 2, worker.output()
    # When the worker itself is killed with no chance to stop them
    os.kill(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait()
    # Then its processes stop too (gracefully: SIGTERM), instead of running on unsupervised
    assert wait_until(lambda: not any(_alive(pid) for pid in children), timeout_s=30), [
        pid for pid in children if _alive(pid)
    ]
