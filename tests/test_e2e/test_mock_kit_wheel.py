"""The mock SD server as another project's test tool, installed the way that project would install it.

A scratch project that depends only on ``sdpipe``, in a fresh virtualenv holding the wheel ``uv build``
made from this tree (plus pytest and webuiapi, at the versions of uv.lock), runs its own tests with the
``sdpipe`` pytest plugin: a ~20-line webuiapi test file, a client that retries after an injected 500, a
test that uses no fixture and checks that the plugin started nothing, and ``-p no:sdpipe``.

Marked e2e: it builds a wheel and installs it with uv (from uv's cache; uv may ask PyPI for the index,
as ``uv sync`` in .ci/run does), then runs pytest in child processes, ~10 s in all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

CLIENT_TESTS = """\
import webuiapi


def client(sd_server):
    return webuiapi.WebUIApi(host=sd_server.host, port=sd_server.port, sampler="Euler a", steps=4)


def test_txt2img_gives_the_size_and_seed_asked(sd_server):
    result = client(sd_server).txt2img(prompt="a cat", width=64, height=96, seed=3)
    assert result.image.size == (64, 96)
    assert result.info["seed"] == 3
    sd_server.assert_called(prompt="a cat", times=1)


def test_the_model_names_the_mock_lists(sd_server):
    sd_server.set_model("sdxl_base.safetensors")
    api = client(sd_server)
    assert "sdxl_base" in api.util_get_current_model()
    assert len(api.util_get_model_names()) == 2
"""

RETRY_TESTS = """\
import json
import urllib.request
from urllib.error import HTTPError


def generate(url, prompt, tries=3):
    request = urllib.request.Request(
        f"{url}/sdapi/v1/txt2img",
        data=json.dumps({"prompt": prompt, "width": 64, "height": 64}).encode(),
        headers={"Content-Type": "application/json"},
    )
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.load(answer)
        except HTTPError as exc:
            if exc.code != 500 or attempt == tries - 1:
                raise


def test_generate_retries_after_a_500(sd_server):
    sd_server.faults("500")
    assert len(generate(sd_server.url, "a fox")["images"]) == 1
    first, second = sd_server.requests
    assert (first.answer.status, first.answer.fault, second.answer.status) == (500, "500", 200)
    assert first.body == second.body
"""

IDLE_TEST = """\
import os
import sys
import threading

import pipeline


def open_sockets():
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += [fd] if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") else []
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    return found


def test_the_plugin_is_loaded_from_the_wheel_and_starts_nothing():
    plugin_loaded = "pipeline.sd.mock.pytest_plugin" in sys.modules
    assert plugin_loaded == (os.environ["EXPECT_PLUGIN"] == "1")
    assert "site-packages" in pipeline.__file__  # the wheel, not a source tree
    assert [name for name in ("numpy", "PIL", "httpx", "pipeline.sd.mock.server") if name in sys.modules] == []
    assert [thread.name for thread in threading.enumerate()] == ["MainThread"]
    assert open_sockets() == []
"""


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH: this test builds sdpipe's wheel with `uv build` (install uv, as .ci/run does)")
    return uv


def _run(*args: str | Path, cwd: Path, env: dict[str, str], timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(project folder, its python, its environment): sdpipe from a freshly built wheel, pytest, webuiapi."""
    uv, root = _uv(), tmp_path_factory.mktemp("scratch")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PYTEST_", "UV_PROJECT"))}
    built = _run(uv, "build", "--out-dir", root / "dist", REPO, cwd=root, env=env)
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("sdpipe-*.whl")
    pins = _run(uv, "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-header", cwd=REPO, env=env)
    assert pins.returncode == 0, pins.stderr
    (root / "pins.txt").write_text(pins.stdout)
    venv = root / "venv"
    made = _run(uv, "venv", "--python", sys.executable, venv, cwd=root, env=env)
    assert made.returncode == 0, made.stderr
    env["VIRTUAL_ENV"] = str(venv)
    installed = _run(uv, "pip", "install", "-c", root / "pins.txt", wheel, "pytest", "webuiapi", cwd=root, env=env)
    assert installed.returncode == 0, installed.stderr
    project = root / "client"
    (project / "tests").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [project]
            name = "scratch-client"
            version = "0"
            dependencies = ["sdpipe"]
            """
        )
    )
    (project / "tests" / "test_client.py").write_text(CLIENT_TESTS)
    (project / "tests" / "test_retry.py").write_text(RETRY_TESTS)
    (project / "tests" / "test_idle.py").write_text(IDLE_TEST)
    return project, venv / "bin" / "python", env


def test_wheel_plugin_runs_a_client_projects_tests(scratch: tuple[Path, Path, dict[str, str]]) -> None:
    project, python, env = scratch
    assert len(CLIENT_TESTS.splitlines()) <= 20
    tests = ("tests/test_client.py", "tests/test_retry.py")
    result = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, cwd=project, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_wheel_plugin_starts_nothing_when_no_fixture_is_used(scratch: tuple[Path, Path, dict[str, str]]) -> None:
    project, python, env = scratch
    idle = ("tests/test_idle.py",)  # alone: other files' fixtures would start servers in the same process
    on = env | {"EXPECT_PLUGIN": "1"}
    result = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *idle, cwd=project, env=on)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheel_plugin_is_disabled_cleanly_with_p_no_sdpipe(scratch: tuple[Path, Path, dict[str, str]]) -> None:
    project, python, env = scratch
    off = env | {"EXPECT_PLUGIN": "0"}
    pytest_off = (python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:sdpipe")
    idle = _run(*pytest_off, "tests/test_idle.py", cwd=project, env=off)
    assert idle.returncode == 0, idle.stdout + idle.stderr
    using = _run(*pytest_off, "tests/test_client.py", cwd=project, env=off)
    assert using.returncode == 1 and "fixture 'sd_server' not found" in using.stdout, using.stdout
