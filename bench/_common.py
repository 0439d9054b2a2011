"""What the benchmark targets share: result rows, /proc readings, and the processes they start.

Every process started here (redis-server, ``sdpipe mock-sd``, ``sdpipe worker``) is started by the
benchmark, on a free port, in a temp folder, and stopped by its own pid when the target ends. Ports,
waiting and background processes come from :mod:`tests.procs`, which the tests use too.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.procs import SDPIPE, Proc, free_port, port_open, wait_until

__all__ = [
    "Row",
    "Services",
    "child_env",
    "cpu_seconds",
    "descendants",
    "median",
    "read_status_kb",
    "reset_peak_rss",
    "sdpipe_command",
    "warm_env",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    """One line of the table: a measured figure, the baseline measured in the same run, and the limit.

    ``limit`` applies to ``ratio`` when a baseline exists (``limit_on="ratio"``) or to ``measured``
    itself (``limit_on="measured"``); ``met`` is None for figures that are reported, not judged.
    """

    target: str
    name: str
    unit: str
    measured: float | None
    baseline: float | None = None
    baseline_name: str = ""
    limit: float | None = None
    limit_on: str = "ratio"
    judged: bool = True
    note: str = ""
    #: Why there is no baseline (e.g. "no Node.js"), shown in the table instead of it.
    unavailable: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.measured is None or not self.baseline:
            return None
        return self.measured / self.baseline

    @property
    def met(self) -> bool | None:
        if not self.judged or self.limit is None:
            return None
        value = self.ratio if self.limit_on == "ratio" else self.measured
        if value is None:
            return None
        return value <= self.limit

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        data["met"] = self.met
        return data


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -- /proc --------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from the parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """User + system CPU seconds of each live process (utime and stime from /proc/<pid>/stat)."""
    result = {}
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        result[pid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return result


def read_status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status, e.g. ``VmRSS`` or ``VmHWM`` (peak RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (``echo 5 > /proc/<pid>/clear_refs``); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- processes ------------------------------------------------------------------------------------------


def sdpipe_command() -> list[str]:
    """How a user runs sdpipe here: this environment's console script (``python -m cli`` without one)."""
    script = Path(sys.executable).with_name("sdpipe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def warm_env(**values: str) -> dict[str, str]:
    """:func:`child_env` that writes bytecode, as an installed CLI has it (``PYTHONDONTWRITEBYTECODE`` removed)."""
    env = child_env(**values)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def child_env(**values: str) -> dict[str, str]:
    """This environment without any sdpipe setting (SD_*, REDIS_*, OUTPUT_*, WORKER*), plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SD_", "REDIS_", "OUTPUT_", "WORKER"))}
    env.update(PYTHONUNBUFFERED="1", **values)
    return env


class Services:
    """``sdpipe mock-sd`` and ``sdpipe worker`` processes of one target, in one temp folder."""

    def __init__(self, folder: Path, redis_url: str) -> None:
        self.folder = folder
        self.redis_url = redis_url
        self.output_dir = folder / "outputs"
        self._procs: list[Proc] = []

    def _spawn(self, args: Sequence[str], env: dict[str, str], name: str) -> Proc:
        log = self.folder / f"{name}.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen([*SDPIPE, *args], env=env, stdout=handle, stderr=subprocess.STDOUT)
        proc = Proc(popen, log)
        self._procs.append(proc)
        return proc

    def mock_sd(self, *, latency_ms: int = 0, models: Sequence[str] = (), model_load_ms: int = 0) -> str:
        """Start a mock SD server over HTTP (``models``: its checkpoints, the first loaded); return its URL."""
        port = free_port()
        checkpoints = ["--models", ",".join(models), "--model-load-ms", str(model_load_ms)] if models else []
        proc = self._spawn(
            ["mock-sd", "--port", str(port), "--latency-ms", str(latency_ms), "--seed", "1", *checkpoints],
            child_env(),
            f"mock-sd-{port}",
        )
        if not wait_until(lambda: port_open(port) or proc.popen.poll() is not None, timeout_s=30, interval_s=0.01):
            raise RuntimeError(f"mock-sd did not start:\n{proc.output()}")
        if proc.popen.poll() is not None:
            raise RuntimeError(f"mock-sd exited:\n{proc.output()}")
        return f"http://127.0.0.1:{port}"

    def worker(
        self, sd_url: str, *, processes: int, threads: int | None = None, extra_env: Mapping[str, str] | None = None
    ) -> int:
        """Start ``sdpipe worker``; wait until its processes are ready; return the top process's pid."""
        args = ["worker", "--processes", str(processes)]
        if threads is not None:
            args += ["--threads", str(threads)]
        env = child_env(REDIS_URL=self.redis_url, SD_API_URL=sd_url, OUTPUT_DIR=str(self.output_dir))
        env.update(extra_env or {})
        proc = self._spawn(args, env, f"worker-{len(self._procs)}")
        ready = wait_until(
            lambda: proc.output().count("Worker process is ready") >= processes or proc.popen.poll() is not None,
            timeout_s=90,
            interval_s=0.05,
        )
        if not ready or proc.popen.poll() is not None:
            raise RuntimeError(f"sdpipe worker did not start:\n{proc.output()[-3000:]}")
        return proc.popen.pid

    def pids(self) -> list[int]:
        """The process ids of what this started (their children not included)."""
        return [proc.popen.pid for proc in self._procs]

    def close(self) -> None:
        for proc in reversed(self._procs):
            proc.stop()
        self._procs.clear()


@contextmanager
def services(folder: Path, redis_url: str) -> Iterator[Services]:
    started = Services(folder, redis_url)
    try:
        yield started
    finally:
        started.close()
