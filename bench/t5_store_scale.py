"""Target 5: ``sdpipe jobs`` and ``sdpipe status`` with 100,000 jobs in the store (Redis, and SQLite).

A private redis-server; database 0 gets N jobs (``store.create_jobs`` in chunks, 10 batches), database
1 gets N/100 (at least 100) as the baseline of the same run. Timed, median of repeats, for each database:

- the store calls the command makes: ``jobs`` -> ``list_jobs(limit=50)`` (also ``--state``), ``status
  ID`` -> ``resolve_id(8-char prefix)`` + ``get``, ``status`` alone (the queue) -> ``count_by_state()``;
- the whole command in this process through typer's ``CliRunner`` (settings, store, rendering).

The embedded store (SQLite) gets the same N and N/100 jobs in two files, and the same store calls.

Target: each under 100 ms at N = 100,000; the ratio to the small store shows what scale costs.
(tests/test_pipeline/test_store/test_jobs.py checks the answers at 100,000 jobs; how fast, only here.)
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import Row, median
from bench._redis import private_redis

LIMIT_MS = 100.0
CHUNK = 5_000


def _fill(store: Any, count: int) -> list[str]:
    """``count`` queued jobs in 10 batches, in ``store`` (closed at the end); returns their ids."""
    from pipeline.jobs.files import default_output_name
    from pipeline.jobs.planning import GenerationRequest, build_step_params, new_id, plan_generate
    from pipeline.settings import load_settings

    settings = load_settings(sd_api_url="mock://")
    params = build_step_params(settings, grid="2x2", band_px=16, sigma=4.0)
    ids = []
    try:
        per_batch = max(1, count // 10)
        now = time.time() - count  # one job per second of history, newest last
        for start in range(0, count, per_batch):
            batch_id = new_id()
            template = plan_generate(
                settings,
                GenerationRequest(prompt=f"a lighthouse, batch {start}", seed=1),
                params,
                batch_id=batch_id,
                now=now,
            )[0]
            specs = []
            for index in range(start, min(start + per_batch, count)):
                job_id = new_id()
                created = now + index
                specs.append(
                    template.model_copy(
                        update={
                            "job_id": job_id,
                            "created_at": created,
                            "output_name": default_output_name(created, job_id, "a lighthouse"),
                        }
                    )
                )
            for chunk in range(0, len(specs), CHUNK):
                store.create_jobs(specs[chunk : chunk + CHUNK])
            ids += [spec.job_id for spec in specs]
        stored = sum(store.count_by_state().values())
        if stored != count:
            raise RuntimeError(f"the store holds {stored} jobs, not {count}")
    finally:
        store.close()
    return ids


def _time_pair_ms(big: Callable[[], Any], small: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median ms of each call, alternating them so that drift and garbage collection hit both alike."""
    big(), small()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for call, sink in ((big, times[0]), (small, times[1])):
            started = time.perf_counter()
            call()
            sink.append((time.perf_counter() - started) * 1000)
    return median(times[0]), median(times[1])


def _store_calls(job_id: str, store: Any) -> dict[str, Callable[[], Any]]:
    """The store calls of ``sdpipe jobs``, ``sdpipe status ID`` and ``sdpipe status`` (the queue)."""
    from pipeline.models import JobState

    return {
        "jobs_store": lambda: store.list_jobs(limit=50),
        "jobs_state_store": lambda: store.list_jobs(state=JobState.QUEUED, limit=50),
        "status_store": lambda: store.get(store.resolve_id(job_id[:8])),
        "queue_store": lambda: store.count_by_state(),
    }


def _cli_calls(url: str, job_id: str) -> dict[str, Callable[[], Any]]:
    """``sdpipe jobs`` and ``sdpipe status ID`` against the Redis at ``url``."""
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    env = {"REDIS_URL": url, "REDIS_HOST": None, "OUTPUT_DIR": None}

    def cli(*args: str) -> Callable[[], None]:
        def call() -> None:
            result = runner.invoke(app, list(args), env=env)
            if result.exit_code != 0:
                raise RuntimeError(f"sdpipe {' '.join(args)} exited {result.exit_code}: {result.output[-500:]}")

        return call

    return {"jobs_cli": cli("jobs"), "status_cli": cli("status", job_id[:8])}


def _measure(
    big: dict[str, Callable[[], Any]], small: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms of each of ``big``'s calls and of ``small``'s call of the same name."""
    gc.collect()
    timed = {name: _time_pair_ms(big[name], small[name], repeats) for name in big}
    return {name: pair[0] for name, pair in timed.items()}, {name: pair[1] for name, pair in timed.items()}


def _middle(ids: list[str]) -> str:
    """A job from the middle of the id order: a prefix search must not depend on where it sits."""
    return sorted(ids)[len(ids) // 2]


def _redis(count: int, small_count: int, repeats: int) -> tuple[dict[str, float], dict[str, float], float]:
    from pipeline.store import RedisStatusStore

    with private_redis() as url:
        big_url, small_url = url, url.rsplit("/", 1)[0] + "/1"
        started = time.perf_counter()
        big_id = _middle(_fill(RedisStatusStore.from_url(big_url), count))
        fill_s = time.perf_counter() - started
        small_id = _middle(_fill(RedisStatusStore.from_url(small_url), small_count))
        big_store, small_store = RedisStatusStore.from_url(big_url), RedisStatusStore.from_url(small_url)
        try:
            big, small = _measure(
                _store_calls(big_id, big_store) | _cli_calls(big_url, big_id),
                _store_calls(small_id, small_store) | _cli_calls(small_url, small_id),
                repeats,
            )
        finally:
            big_store.close()
            small_store.close()
    return big, small, fill_s


def _sqlite(
    folder: Path, count: int, small_count: int, repeats: int
) -> tuple[dict[str, float], dict[str, float], float]:
    from pipeline.store import SqliteStatusStore

    big_path, small_path = folder / "big.sqlite3", folder / "small.sqlite3"
    started = time.perf_counter()
    big_id = _middle(_fill(SqliteStatusStore(big_path), count))
    fill_s = time.perf_counter() - started
    small_id = _middle(_fill(SqliteStatusStore(small_path), small_count))
    big_store, small_store = SqliteStatusStore(big_path), SqliteStatusStore(small_path)
    try:
        big, small = _measure(_store_calls(big_id, big_store), _store_calls(small_id, small_store), repeats)
    finally:
        big_store.close()
        small_store.close()
    return big, small, fill_s


def run(folder: Path, *, tiny: bool) -> list[Row]:
    count, repeats = (2_000, 5) if tiny else (100_000, 21)
    small_count = max(count // 100, 100)  # at least two pages of `jobs`
    measured = {"Redis": _redis(count, small_count, repeats), "SQLite": _sqlite(folder, count, small_count, repeats)}
    names = {
        ("Redis", "jobs_store"): "jobs: store.list_jobs(limit=50)",
        ("Redis", "jobs_cli"): "sdpipe jobs (CliRunner, in-process)",
        ("Redis", "status_store"): "status: resolve_id + get",
        ("Redis", "status_cli"): "sdpipe status ID (CliRunner)",
        ("Redis", "queue_store"): "status (the queue): store.count_by_state()",
        ("SQLite", "jobs_store"): "embedded (SQLite) jobs: store.list_jobs(limit=50)",
        ("SQLite", "status_store"): "embedded (SQLite) status: resolve_id + get",
        ("SQLite", "queue_store"): "embedded (SQLite) status (the queue): store.count_by_state()",
    }
    rows = []
    for (backend, key), name in names.items():
        big, small, fill_s = measured[backend]
        rows.append(
            Row(
                target="5",
                name=f"{name}, {count:,} jobs",
                unit="ms",
                measured=big[key],
                baseline=small[key],
                baseline_name=f"same, {small_count:,} jobs",
                limit=LIMIT_MS,
                limit_on="measured",
                details={"all_big_ms": big, "all_small_ms": small, "fill_s": round(fill_s, 1), "repeats": repeats},
            )
        )
    return rows
