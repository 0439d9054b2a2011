"""Processes the tests and the benchmarks start themselves: free ports, waiting, a private
redis-server, a background ``sdpipe`` process. Never a server they did not start.

No pytest here: ``bench/`` imports this module too. :mod:`tests.helpers` adds what only tests want
(a missing redis-server skips locally and fails under CI).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SDPIPE",
    "MotoServer",
    "Proc",
    "RedisServer",
    "RedisUnavailable",
    "S3Unavailable",
    "free_port",
    "port_open",
    "wait_until",
]

#: How to run the sdpipe CLI in a child process (the same interpreter and virtualenv as the caller).
SDPIPE = [sys.executable, "-m", "cli"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Proc:
    """A background process with its log file (stdout and stderr)."""

    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; its exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class RedisUnavailable(RuntimeError):
    """redis-server is not installed, or did not start."""


@dataclass
class RedisServer:
    """A redis-server started by the caller itself, on a private port and folder."""

    port: int
    directory: Path
    password: str | None = None
    appendonly: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it listens.

        Raises:
            RedisUnavailable: no ``redis-server`` binary, or it did not listen within 10 s.
        """
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable("redis-server is not installed")
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--protected-mode",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(lambda: port_open(self.port), timeout_s=10):
            self.stop()
            raise RedisUnavailable(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        _terminate(self.process)
        self.process = None


class S3Unavailable(RuntimeError):
    """moto_server (the dev dependency ``moto[server]``) is not installed, or did not start."""


@dataclass
class MotoServer:
    """moto's standalone S3-compatible server, started by the caller on a private port (in-memory:
    nothing is written to disk, everything is gone when it stops)."""

    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    #: Any key works against moto; these are what the tests pass as AWS_* settings.
    access_key_id: str = "sdpipe-test-key"
    secret_access_key: str = "sdpipe-test-secret-never-logged"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait until it answers.

        Raises:
            S3Unavailable: no ``moto_server`` next to this interpreter or on PATH, or it did not listen within 30 s.
        """
        local = Path(sys.executable).with_name("moto_server")
        binary = str(local) if local.exists() else shutil.which("moto_server")
        if binary is None:
            raise S3Unavailable("moto_server is not installed (uv sync installs moto[server], a dev dependency)")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [binary, "-H", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=subprocess.STDOUT
            )
        if not wait_until(lambda: port_open(self.port), timeout_s=30, interval_s=0.1):
            self.stop()
            raise S3Unavailable(f"moto_server did not start on port {self.port}: {self.log.read_text()[-500:]}")

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (moto accepts an unsigned ``PUT /<bucket>``)."""
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint_url}/{name}", method="PUT"), timeout=10).close()

    def stop(self) -> None:
        _terminate(self.process)
        self.process = None


def _terminate(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
