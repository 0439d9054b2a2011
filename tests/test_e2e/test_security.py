"""Secrets never leak (logs, sidecars, status store, errors, doctor) and wrong credentials fail clearly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.helpers import RedisServer, free_port
from tests.test_e2e.conftest import Proc, run_sdpipe, start_mock, start_worker

pytestmark = pytest.mark.e2e

REDIS_SECRET = "r3dis-s3cret-pw"
SD_SECRET = "sd-s3cret-pw"


def _redis_dump(url: str) -> str:
    client = redis.Redis.from_url(url)
    parts = []
    for key in client.scan_iter():
        kind = client.type(key).decode()
        if kind == "string":
            parts.append(repr(client.get(key)))
        elif kind == "hash":
            parts.append(repr(client.hgetall(key)))
        elif kind == "list":
            parts.append(repr(client.lrange(key, 0, -1)))
        elif kind == "set":
            parts.append(repr(client.smembers(key)))
        elif kind == "zset":
            parts.append(repr(client.zrange(key, 0, -1)))
    client.close()
    return "\n".join(parts)


def test_secrets_never_appear_anywhere(e2e_env: dict[str, str], spawn: Callable[..., Proc], tmp_path: Path) -> None:
    server = RedisServer(port=free_port(), directory=tmp_path, password=REDIS_SECRET)
    server.start()
    try:
        env = {**e2e_env, "REDIS_URL": server.url, "SD_API_AUTH": f"painter:{SD_SECRET}", "WIDTH": "64", "HEIGHT": "64"}
        mock = start_mock(spawn, env, "--api-auth", f"painter:{SD_SECRET}")
        env["SD_API_URL"] = mock
        worker = start_worker(spawn, env, processes=1, threads=2)
        generated = run_sdpipe("generate", "a secret garden", "--count", "2", env=env)
        assert generated.returncode == 0, generated.stderr + worker.output()
        doctor = run_sdpipe("doctor", env=env)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "***" in doctor.stdout
        wrong = run_sdpipe("jobs", env={**env, "REDIS_URL": server.url.replace(REDIS_SECRET, "wrong-pw")})
        assert wrong.returncode == 3
        assert "check REDIS_PASSWORD" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
        haystacks = {
            "generate output": generated.stdout + generated.stderr,
            "doctor": doctor.stdout + doctor.stderr,
            "wrong password": wrong.stdout + wrong.stderr,
            "worker log": worker.output(),
            "status store and queues": _redis_dump(server.url),
            "outputs": "\n".join(p.read_text(errors="replace") for p in Path(env["OUTPUT_DIR"]).rglob("*.json")),
        }
        for where, text in haystacks.items():
            assert REDIS_SECRET not in text, where
            assert SD_SECRET not in text, where
            assert "wrong-pw" not in text, where
    finally:
        server.stop()


def test_sd_wrong_credentials_fail_at_once_with_hint(e2e_env: dict[str, str], spawn: Callable[..., Proc]) -> None:
    env = {**e2e_env, "SD_API_AUTH": "painter:wrong", "WIDTH": "64", "HEIGHT": "64"}
    mock = start_mock(spawn, env, "--api-auth", f"painter:{SD_SECRET}")
    env["SD_API_URL"] = mock
    start_worker(spawn, env, processes=1, threads=1)
    result = run_sdpipe("generate", "x", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "Incorrect username or password" in line and "SD_API_AUTH" in line
