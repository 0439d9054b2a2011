"""``sdpipe doctor`` over a pool of SD servers: one row per server, failing only when none is ready."""

from __future__ import annotations

from tests.helpers import free_port
from tests.test_cli.conftest import Invoke


def _dead() -> str:
    """A server URL with credentials that nothing listens on."""
    return f"http://user:topsecret@127.0.0.1:{free_port()}"


def _flat(text: str) -> str:
    """The output with table borders and line wrapping taken out (cells wrap at 80 columns)."""
    return " ".join(text.replace("│", " ").split())


def test_doctor_pool_checks_every_server_by_key(sdpipe: Invoke) -> None:
    result = sdpipe("doctor", env={"SD_API_URL": "mock://a,mock://b;max=2"})
    assert result.exit_code == 0, result.output
    assert "✓ SD server mock://a" in result.stdout
    assert "✓ SD server mock://b" in result.stdout


def test_doctor_pool_one_server_down_is_reported_but_not_fatal(sdpipe: Invoke) -> None:
    dead = _dead()
    result = sdpipe("doctor", env={"SD_API_URL": f"mock://,{dead}"})
    assert result.exit_code == 0, result.output
    key = dead.replace("user:topsecret@", "")
    flat = _flat(result.stdout)
    assert f"✗ SD server {key}" in flat
    assert "workers bench it and send its jobs to the others" in flat
    assert "✓ SD server mock://" in flat
    assert "topsecret" not in result.output


def test_doctor_pool_no_server_ready_exit_3(sdpipe: Invoke) -> None:
    result = sdpipe("doctor", env={"SD_API_URL": f"{_dead()},{_dead()}"})
    assert result.exit_code == 3, result.output
    assert _flat(result.stdout).count("✗ SD server http://127.0.0.1:") == 2
    assert "send its jobs to the others" not in _flat(result.stdout)  # there are no others
    assert "topsecret" not in result.output


def test_doctor_pool_bad_entry_exit_2(sdpipe: Invoke) -> None:
    result = sdpipe("doctor", env={"SD_API_URL": "mock://a,mock://a"})
    assert result.exit_code == 2, result.output
    assert "names 'mock://a' twice" in _flat(result.output)


def test_doctor_redis_mode_without_any_worker_exit_3(sdpipe: Invoke, redis_url: str) -> None:
    # Everything answers, but no `sdpipe worker` runs: jobs would wait in Redis for ever
    result = sdpipe("doctor", env={"SD_API_URL": "mock://", "REDIS_URL": redis_url})
    assert result.exit_code == 3, result.output
    flat = _flat(result.stdout)
    assert "✓ status store" in flat and "✓ SD server mock://" in flat
    assert "✗ workers no sdpipe worker has sent a heartbeat" in flat


def test_doctor_warns_when_redis_keeps_neither_aof_nor_rdb(sdpipe: Invoke, redis_url: str) -> None:
    # The test Redis runs with --save "" --appendonly no: a restart would lose every queued job
    result = sdpipe("doctor", env={"SD_API_URL": "mock://", "REDIS_URL": redis_url})
    flat = _flat(result.stdout)
    assert "⚠ Redis persistence Redis keeps neither an AOF nor RDB snapshots" in flat
    assert "appendonly yes" in flat
