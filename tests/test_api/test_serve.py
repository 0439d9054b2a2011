"""``sdpipe serve``: refuses a public address without a token, and needs the ``api`` extra."""

from __future__ import annotations

import re
import signal
import sys

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.serve import EXTRA_MISSING, is_loopback
from tests.helpers import free_port, port_open, wait_until
from tests.test_e2e.conftest import SDPIPE


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.com", False)],
)  # fmt: skip
def test_serve_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_refuses_public_host_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPUT_DIR", "outputs")
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without API_TOKEN" in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_an_empty_api_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPUT_DIR", "outputs")
    monkeypatch.setenv("API_TOKEN", "  ")
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "API_TOKEN is set but empty" in result.output


def test_serve_warns_about_a_short_api_token(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    # A short token still works (tests and local set-ups use them) but the operator is told
    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path))
    monkeypatch.setenv("API_TOKEN", "abc")
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # stop right after the checks: no server is started
    result = CliRunner().invoke(app, ["serve"])
    assert "warning: API_TOKEN has 3 characters" in result.output
    assert "openssl rand -hex 32" in result.output


def test_serve_without_the_api_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {EXTRA_MISSING}"


def test_serve_on_a_taken_port_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    # Given a port something else listens on
    import socket

    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port)])
    # Then serve refuses before announcing anything, with the reason and the fix
    assert result.exit_code == 2
    assert result.output.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "choose another --port" in result.output
    assert "sdpipe API on" not in result.output and "Traceback" not in result.output


def test_serve_plain_cli_does_not_import_fastapi() -> None:
    import subprocess

    code = "import sys, cli.main; assert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_serve_runs_standalone_in_embedded_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    # Given `sdpipe serve` on a public address with a token, and no Redis
    import os
    import subprocess

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SD_", "REDIS_", "OUTPUT_", "API_"))}
    env.update(SD_API_URL="mock://", OUTPUT_DIR=str(tmp_path), API_TOKEN="tok", PORT=str(port))
    proc = subprocess.Popen([*SDPIPE, "serve", "--host", "0.0.0.0"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: port_open(port) or proc.poll() is not None, timeout_s=30)
        assert proc.poll() is None
        headers = {"Authorization": "Bearer tok"}
        response = httpx.post(
            f"http://127.0.0.1:{port}/api/generate",
            params={"wait": "true"},
            json={"prompt": "x", "width": 64, "height": 64, "band_px": 4},
            headers=headers,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json()["jobs"][0]["state"] == "succeeded"
    finally:
        # When it is stopped with SIGTERM, it shuts down cleanly
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), stderr  # uvicorn re-raises the signal after shutdown
    assert "sdpipe API on http://0.0.0.0:" in stderr
    # and it wrote an access log: local time with its offset, method, path, status, duration, job
    job_id = response.json()["jobs"][0]["job_id"]
    access = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} POST /api/generate 200 \d+\.\d ms job=" + job_id
    assert re.search(access, stderr), stderr
