"""Target 5: ``sdpipe jobs`` and ``sdpipe status`` with 100,000 jobs in the store (Redis).

A private redis-server; database 0 gets N jobs (``store.create_jobs`` in chunks, 10 batches), database
1 gets N/100 (at least 100) as the baseline of the same run. Timed, median of repeats, for each database:

- the store calls the command makes: ``jobs`` -> ``list_jobs(limit=50)`` (also ``--state``), ``status
  ID`` -> ``resolve_id(8-char prefix)`` + ``get``;
- the whole command in this process through typer's ``CliRunner`` (settings, store, rendering).

Target: each under 100 ms at N = 100,000; the ratio to the small store shows what scale costs.
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


def _fill(url: str, count: int) -> list[str]:
    """``count`` queued jobs in 10 batches; returns their ids."""
    from pipeline.jobs.files import default_output_name
    from pipeline.jobs.planning import GenerationRequest, build_step_params, new_id, plan_generate
    from pipeline.settings import load_settings
    from pipeline.store import RedisStatusStore

    settings = load_settings(redis_url=url, sd_api_url="mock://")
    params = build_step_params(settings, grid="2x2", band_px=16, sigma=4.0)
    store = RedisStatusStore.from_url(url)
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


def _calls(url: str, job_id: str, store: Any) -> dict[str, Callable[[], Any]]:
    """What ``sdpipe jobs`` and ``sdpipe status ID`` do against ``url``: the store calls, and the commands."""
    from typer.testing import CliRunner

    from cli.main import app
    from pipeline.models import JobState

    runner = CliRunner()
    env = {"REDIS_URL": url, "REDIS_HOST": None, "OUTPUT_DIR": None}

    def cli(*args: str) -> Callable[[], None]:
        def call() -> None:
            result = runner.invoke(app, list(args), env=env)
            if result.exit_code != 0:
                raise RuntimeError(f"sdpipe {' '.join(args)} exited {result.exit_code}: {result.output[-500:]}")

        return call

    return {
        "jobs_store": lambda: store.list_jobs(limit=50),
        "jobs_state_store": lambda: store.list_jobs(state=JobState.QUEUED, limit=50),
        "status_store": lambda: store.get(store.resolve_id(job_id[:8])),
        "jobs_cli": cli("jobs"),
        "status_cli": cli("status", job_id[:8]),
    }


def _measure(big: tuple[str, str], small: tuple[str, str], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    from pipeline.store import RedisStatusStore

    big_store, small_store = RedisStatusStore.from_url(big[0]), RedisStatusStore.from_url(small[0])
    try:
        big_calls, small_calls = _calls(*big, big_store), _calls(*small, small_store)
        gc.collect()
        timed = {name: _time_pair_ms(big_calls[name], small_calls[name], repeats) for name in big_calls}
    finally:
        big_store.close()
        small_store.close()
    return {name: pair[0] for name, pair in timed.items()}, {name: pair[1] for name, pair in timed.items()}


def run(folder: Path, *, tiny: bool) -> list[Row]:
    del folder
    count, repeats = (2_000, 5) if tiny else (100_000, 21)
    small_count = max(count // 100, 100)  # at least two pages of `jobs`
    with private_redis() as url:
        big_url, small_url = url, url.rsplit("/", 1)[0] + "/1"
        started = time.perf_counter()
        big_ids = _fill(big_url, count)
        fill_s = time.perf_counter() - started
        small_ids = _fill(small_url, small_count)
        # A job from the middle of the id order: a prefix search must not depend on where it sits.
        big, small = _measure(
            (big_url, sorted(big_ids)[len(big_ids) // 2]), (small_url, sorted(small_ids)[len(small_ids) // 2]), repeats
        )
    names = {
        "jobs_store": "jobs: store.list_jobs(limit=50)",
        "jobs_cli": "sdpipe jobs (CliRunner, in-process)",
        "status_store": "status: resolve_id + get",
        "status_cli": "sdpipe status ID (CliRunner)",
    }
    rows = []
    for key, name in names.items():
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
