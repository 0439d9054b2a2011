"""Settings errors met through ``load()`` (and the first Redis call): exit 2, one line, nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli.conftest import Invoke


def _assert_config_error(result: object, fragment: str) -> None:
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    stderr = result.stderr  # type: ignore[attr-defined]
    assert stderr.startswith("error: ") and fragment in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in result.output  # type: ignore[attr-defined]


def test_redis_url_non_numeric_database_exits_2(sdpipe: Invoke) -> None:
    result = sdpipe("jobs", env={"REDIS_URL": "redis://127.0.0.1:9/abc"})
    _assert_config_error(result, "invalid setting REDIS_URL: its database part is not /N")


def test_redis_url_database_out_of_range_exits_2(sdpipe: Invoke, redis_url: str) -> None:
    result = sdpipe("jobs", env={"REDIS_URL": redis_url.removesuffix("/0") + "/99"})
    _assert_config_error(result, "has no database 99")
    assert "databases" in result.stderr and "REDIS_URL" in result.stderr


def test_sd_api_url_unknown_entry_option_exits_2(sdpipe: Invoke) -> None:
    result = sdpipe("backends", env={"SD_API_URL": "http://127.0.0.1:17860;foo=1"})
    _assert_config_error(result, "unknown option 'foo' in SD_API_URL entry 'http://127.0.0.1:17860'")
    assert "invalid port" not in result.stderr


@pytest.mark.parametrize(
    ("url", "fragment"),
    [("mock://?latency_ms=abc", "latency_ms='abc'"), ("mock://?bogus=1", "unknown mock:// option 'bogus'")],
)
def test_sd_url_bad_mock_option_exits_2_before_any_job(sdpipe: Invoke, out_dir: Path, url: str, fragment: str) -> None:
    generated = sdpipe("generate", "x", "--sd-url", url, "--width", "64", "--height", "64")
    _assert_config_error(generated, fragment)
    assert "job" not in generated.stdout and not out_dir.exists()
    _assert_config_error(sdpipe("backends", env={"SD_API_URL": url}), fragment)


def test_redis_url_database_out_of_range_exits_2_from_the_sd_pool_too(sdpipe: Invoke, redis_url: str) -> None:
    # `backends` reads the SD pool's state in Redis, which connects on its own
    result = sdpipe("backends", env={"REDIS_URL": redis_url.removesuffix("/0") + "/99", "SD_API_URL": "mock://"})
    _assert_config_error(result, "has no such database")
    assert "databases" in result.stderr and "REDIS_URL" in result.stderr
