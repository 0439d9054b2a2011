"""The pytest plugin ``sdpipe`` as its users meet it: test files written the way a client's project would.

Each test writes a small test file into a pytester folder and runs pytest on it; the plugin comes from
the ``pytest11`` entry point, exactly as in a project that installed sdpipe.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

WEBUIAPI_TESTS = """
import webuiapi


def client(sd_server):
    return webuiapi.WebUIApi(host=sd_server.host, port=sd_server.port, sampler="Euler a", steps=4)


def test_txt2img_returns_the_size_asked(sd_server):
    result = client(sd_server).txt2img(prompt="a cat", width=64, height=96, seed=3)
    assert result.image.size == (64, 96)
    assert result.info["seed"] == 3
    sd_server.assert_called(prompt="a cat", times=1)


def test_a_queued_500_reaches_the_client(sd_server):
    sd_server.faults("500")
    try:
        client(sd_server).txt2img(prompt="a dog", width=64, height=64)
    except RuntimeError as exc:
        assert "OutOfMemoryError" in str(exc)
    else:
        raise AssertionError("the queued 500 did not reach webuiapi")
    assert [r.answer.status for r in sd_server.calls("/sdapi/v1/txt2img")] == [500]
"""


def test_plugin_drives_the_mock_with_webuiapi(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_client=WEBUIAPI_TESTS)
    pytester.runpytest("-q").assert_outcomes(passed=2)


def test_plugin_shows_a_retry_after_an_injected_500(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_retry="""
        import httpx


        def generate(url, prompt, tries=3):
            for _ in range(tries):
                answer = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": prompt, "width": 64, "height": 64})
                if answer.status_code != 500:
                    return answer.json()
            raise RuntimeError("no luck")


        def test_generate_retries_after_a_500(sd_server):
            sd_server.faults("500")
            assert len(generate(sd_server.url, "a fox")["images"]) == 1
            first, second = sd_server.requests
            assert (first.answer.status, second.answer.status) == (500, 200)
            assert first.body == second.body == {"prompt": "a fox", "width": 64, "height": 64}
            sd_server.assert_called(prompt="a fox", times=2)
        """
    )
    pytester.runpytest("-q").assert_outcomes(passed=1)


def test_plugin_session_scope_shares_one_server_reset_between_tests(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsd_server_scope = session\n")
    pytester.makepyfile(
        test_shared="""
        import httpx

        seen = []


        def test_first(sd_server):
            seen.append(sd_server.url)
            sd_server.faults("503", "503")
            assert httpx.get(f"{sd_server.url}/sdapi/v1/sd-models").status_code == 200
            assert len(sd_server.requests) == 1


        def test_second_sees_the_same_server_reset(sd_server, sd_server_session):
            assert seen == [sd_server.url] and sd_server is sd_server_session
            assert sd_server.requests == []
            body = {"prompt": "x", "width": 64, "height": 64}
            assert httpx.post(f"{sd_server.url}/sdapi/v1/txt2img", json=body).status_code == 200
        """
    )
    pytester.runpytest("-q").assert_outcomes(passed=2)
    pytester.makeini("[pytest]\n")
    pytester.runpytest("-q", "--sd-server-scope=session").assert_outcomes(passed=2)
    pytester.runpytest("-q").assert_outcomes(passed=1, failed=1)  # function scope: a new server each test


def test_plugin_marker_and_factory_give_servers_their_own_options(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_options="""
        import httpx
        import pytest


        @pytest.mark.sd_server(nowebui=True, models=("a.safetensors", "b.safetensors"))
        def test_marker_options(sd_server):
            assert httpx.post(f"{sd_server.url}/internal/progress", json={"id_task": "x"}).status_code == 404
            names = [m["model_name"] for m in httpx.get(f"{sd_server.url}/sdapi/v1/sd-models").json()]
            assert names == ["a", "b"]


        def test_factory_servers_are_separate(sd_server_factory):
            open_one = sd_server_factory()
            locked = sd_server_factory(api_auth="user:secret", faults="500:1")
            assert open_one.url != locked.url
            assert httpx.get(f"{locked.url}/sdapi/v1/sd-models").status_code == 401
            answer = httpx.post(f"{locked.url}/sdapi/v1/txt2img", json={}, auth=("user", "secret"))
            assert answer.status_code == 500
            assert open_one.requests == [] and [r.answer.fault for r in locked.requests] == [None, "500"]
        """
    )
    pytester.runpytest("-q").assert_outcomes(passed=2)


def test_plugin_assert_called_failure_reads_as_a_test_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_wrong="""
        def test_nothing_was_sent(sd_server):
            sd_server.assert_called(prompt="a cat", times=1)
        """
    )
    result = pytester.runpytest("-q")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*expected /sdapi/v1/txt2img with prompt='a cat' 1 time, got 0*", "*(no requests)*"])


def test_plugin_is_disabled_cleanly_with_p_no_sdpipe(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="def test_plain():\n    assert 1 + 1 == 2\n",
        test_uses_it="def test_uses_it(sd_server):\n    pass\n",
    )
    result = pytester.runpytest("-q", "-p", "no:sdpipe")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'sd_server' not found*"])
    assert "sd_server_scope" not in pytester.runpytest("--help", "-p", "no:sdpipe").stdout.str()
    assert "--sd-server-scope" in pytester.runpytest("--help").stdout.str()


def test_plugin_starts_nothing_until_a_fixture_is_used(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_idle="""
        import os
        import sys
        import threading


        def open_sockets():
            found = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    found += [fd] if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") else []
                except FileNotFoundError:  # the fd listdir itself used
                    pass
            return found


        def test_idle():
            assert "pipeline.sd.mock.pytest_plugin" in sys.modules  # loaded...
            mock = ("pipeline.sd.mock.server", "pipeline.sd.mock.kit", "numpy", "PIL")
            assert [m for m in mock if m in sys.modules] == []  # ...but inert
            assert [t.name for t in threading.enumerate()] == ["MainThread"]
            assert open_sockets() == []
        """
    )
    pytester.runpytest_subprocess("-q", "-p", "no:respx").assert_outcomes(passed=1)


def test_plugin_module_imports_no_heavy_library_and_starts_no_thread() -> None:
    probe = (
        "import sys, threading, json\n"
        "import pipeline.sd.mock.pytest_plugin\n"
        "print(json.dumps([[m for m in ('numpy', 'PIL', 'httpx', 'pipeline.sd.mock.server') if m in sys.modules],"
        " threading.active_count()]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [[], 1]
