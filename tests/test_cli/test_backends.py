"""``sdpipe backends``: the pool's servers from the shared Redis state, or a live probe when embedded."""

from __future__ import annotations

import json

import redis

from pipeline.sd.backends import parse_backends
from pipeline.sd.pool.redis_state import RedisPoolState
from pipeline.sd.pool.state import HealthPolicy
from tests.helpers import free_port, wait_until
from tests.test_cli.conftest import Invoke

#: A server that refuses connections (nothing listens on port 9), with credentials that must never show.
DEAD = "http://user:topsecret@127.0.0.1:9"
POLICY = HealthPolicy(failure_threshold=3, cooldown_min_s=120, cooldown_max_s=600)


def _open(redis_url: str) -> RedisPoolState:
    return RedisPoolState(redis.Redis.from_url(redis_url), dsn_masked=redis_url)


def test_backends_embedded_probes_each_server_and_says_nothing_is_shared(sdpipe: Invoke) -> None:
    result = sdpipe("backends", env={"SD_API_URL": f"mock://,{DEAD};max=2"})
    assert result.exit_code == 0, result.output
    assert "embedded mode" in result.stdout
    assert "mock://" in result.stdout and "answers" in result.stdout
    assert "http://127.0.0.1:9" in result.stdout and "connection refused" in result.stdout
    assert "topsecret" not in result.output


def test_backends_embedded_json_has_one_object_per_server(sdpipe: Invoke) -> None:
    result = sdpipe("backends", "--json", env={"SD_API_URL": f"mock://,{DEAD};max=2"})
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(row["key"], row["max_slots"], row["answers"]) for row in rows] == [
        ("mock://", 1, True),
        ("http://127.0.0.1:9", 2, False),
    ]
    assert rows[0]["done"] is None  # no shared state: counters unknown, not zero
    assert "topsecret" not in result.output


def test_backends_embedded_exit_3_when_no_server_answers(sdpipe: Invoke) -> None:
    result = sdpipe("backends", env={"SD_API_URL": DEAD})
    assert result.exit_code == 3, result.output
    assert "no SD server answers" in result.output
    assert "topsecret" not in result.output


def test_backends_redis_shows_health_slots_and_counters(sdpipe: Invoke, redis_url: str) -> None:
    # Given the shared state: one server did two jobs, the other was benched (out of memory)
    good, bad = parse_backends(f"mock://a,{DEAD};max=2")
    state = _open(redis_url)
    try:
        state.record_success(good.key, 2.0)
        state.record_success(good.key, 4.0)
        oom = "500 OutOfMemoryError: CUDA out of memory" + " x" * 80
        state.record_failure(bad.key, oom, bench=True, policy=POLICY)
        assert state.acquire([bad], "job-1:x", lease_s=30, avoid=None) == bad.key
    finally:
        state.close()
    env = {"REDIS_URL": redis_url, "SD_API_URL": f"mock://a,{DEAD};max=2"}
    # When listing the backends
    rows = json.loads(sdpipe("backends", "--json", env=env).stdout)
    table = sdpipe("backends", env=env)
    # Then each shows its health, slots, counters and last error
    assert rows[0]["key"] == "mock://a" and rows[0]["health"] == "healthy"
    assert (rows[0]["done"], rows[0]["failures"], rows[0]["mean_s"], rows[0]["in_use"]) == (2, 0, 3.0, 0)
    assert rows[1]["key"] == "http://127.0.0.1:9" and rows[1]["healthy"] is False
    assert rows[1]["health"].startswith("benched, back in ") and rows[1]["health"].endswith(" s")
    assert (rows[1]["in_use"], rows[1]["max_slots"], rows[1]["failures"], rows[1]["consecutive_failures"]) == (
        1,
        2,
        1,
        1,
    )
    assert "OutOfMemoryError" in rows[1]["last_error"]
    assert "probe" not in rows[0]  # the shared state only, unless --probe
    assert table.exit_code == 0, table.output
    assert "embedded" not in table.stdout
    assert "benched, back in" in table.stdout and "1/2" in table.stdout and "3.00" in table.stdout
    assert "last error: 500 OutOfMemoryError" in " ".join(table.stdout.split())
    assert "…" in table.stdout  # the long error is cut
    assert "topsecret" not in table.output


def test_backends_redis_benched_past_cooldown_reads_probing(sdpipe: Invoke, redis_url: str) -> None:
    (backend,) = parse_backends(DEAD)
    state = _open(redis_url)
    try:
        state.record_failure(backend.key, "refused", bench=True, policy=HealthPolicy(3, 0.01, 0.01))
    finally:
        state.close()
    env = {"REDIS_URL": redis_url, "SD_API_URL": DEAD}
    assert wait_until(
        lambda: json.loads(sdpipe("backends", "--json", env=env).stdout)[0]["health"] == "benched, probing",
        timeout_s=5,
    )


def test_backends_redis_probe_adds_live_answer_and_exit_3_when_none_answers(sdpipe: Invoke, redis_url: str) -> None:
    ok = sdpipe("backends", "--probe", "--json", env={"REDIS_URL": redis_url, "SD_API_URL": f"mock://,{DEAD}"})
    assert ok.exit_code == 0, ok.output
    assert [row["answers"] for row in json.loads(ok.stdout)] == [True, False]
    assert [row["health"] for row in json.loads(ok.stdout)] == ["healthy", "healthy"]  # probing changes nothing
    dead = sdpipe("backends", "--probe", env={"REDIS_URL": redis_url, "SD_API_URL": DEAD})
    assert dead.exit_code == 3, dead.output
    assert "probe now: cannot reach" in " ".join(dead.stdout.split()) and "no SD server answers" in dead.output


def test_backends_redis_unreachable_exit_3_one_line(sdpipe: Invoke) -> None:
    result = sdpipe(
        "backends", env={"REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0", "SD_API_URL": "mock://"}
    )
    assert result.exit_code == 3, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    assert "hunter2" not in result.output


def test_backends_redis_shows_each_servers_checkpoint_loads_and_load_times(sdpipe: Invoke, redis_url: str) -> None:
    # Given the shared state: the pool switched one server to b twice (2 s, then 4 s), the other loads c now
    first, second = parse_backends("mock://ck1,mock://ck2")
    state = _open(redis_url)
    try:
        state.set_model(first.key, "b.safetensors [1e6b36ed98]", "1e6b36ed98")
        state.record_load(first.key, "b", 2.0)
        state.record_load(first.key, "b", 4.0)
        state.set_model(second.key, "c.safetensors", None, loading=True)
    finally:
        state.close()
    env = {"REDIS_URL": redis_url, "SD_API_URL": "mock://ck1,mock://ck2"}
    # When listing the backends
    rows = json.loads(sdpipe("backends", "--json", env=env).stdout)
    table = sdpipe("backends", env=env)
    # Then each shows its checkpoint, its loads and the mean load time per checkpoint
    assert (rows[0]["model"], rows[0]["model_hash"], rows[0]["model_loads"], rows[0]["load_s"]) == (
        "b.safetensors [1e6b36ed98]",
        "1e6b36ed98",
        2,
        {"b": 3.0},
    )
    assert (rows[1]["model"], rows[1]["loading"]) == ("c.safetensors", True)
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())
    assert "b.safetensors" in text and "c.safetensors (loading)" in text
    assert "checkpoint load times: b 3.0 s" in text


def test_backends_embedded_probe_reads_the_loaded_checkpoint(sdpipe: Invoke) -> None:
    result = sdpipe("backends", "--json", env={"SD_API_URL": "mock://emb?models=x;y"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["model"].startswith("x.safetensors [")


def test_backends_on_a_narrow_terminal_gives_each_server_a_block_instead_of_folded_columns() -> None:
    from rich.console import Console

    from cli.backends import _report

    row = {"key": "http://gpu-node-01.internal:7860", "health": "benched, back in 12 s", "healthy": False,
           "in_use": 0, "max_slots": 1, "done": 22, "failures": 3, "consecutive_failures": 3, "mean_s": 0.31,
           "model": "juggernautXL_v9Rdphoto2Lightning.safetensors [c9e3e68f89]", "model_loads": 1}  # fmt: skip

    def shown(width: int) -> list[str]:
        console = Console(width=width, record=True)
        for part in _report([row], shared=True, console=console):
            console.print(part)
        return [line.rstrip() for line in console.export_text().splitlines() if line.strip()]

    narrow, wide = shown(80), shown(200)
    # The server's URL whole on a line, its numbers and checkpoint below it (nothing folded away)
    assert narrow == [
        "http://gpu-node-01.internal:7860",
        "  benched, back in 12 s, slots 0/1, done 22, failed 3 (3 in a row), 0.31 s/image",
        "  checkpoint juggernautXL_v9Rdphoto2Lightning.safetensors (1 load(s))",
    ]
    # Where the columns fit, the table
    assert any(line.split()[:2] == ["server", "health"] for line in wide)
    assert any("http://gpu-node-01.internal:7860" in line and "juggernautXL" in line for line in wide)
