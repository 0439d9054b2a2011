"""Target 7 (issue 15): a batch that mixes checkpoints pays for few checkpoint loads.

Three ``sdpipe mock-sd --latency-ms 300 --model-load-ms 3000`` servers listing the checkpoints
a, b and c (a loaded at start, as A1111 loads its first), ``sdpipe worker`` with 2 processes × 3
threads, and N jobs naming a, b and c in turn, row by row (as ``--model`` sends them:
``override_settings.sd_model_checkpoint`` with the server's title). Each mode gets its own Redis,
mock servers and workers:

- **checkpoint-aware** (``MODEL_AFFINITY=true``, the default): judged. At most 6 loads, and wall
  time ≤ 1.15 × (N × 300 ms / 3 + 3 s): each server settles on one checkpoint after one load.
- **blind** (``MODEL_AFFINITY=false``: any free server, the checkpoint loaded for each request and
  put back afterwards): measured beside it, reported.

Loads are the mocks' own count (``/mock/stats`` ``model_loads``); every image's ``info`` is checked
to be of the checkpoint its job named. ``--tiny``: 12 jobs, 100 ms/image, 500 ms per load.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import Row, services
from bench._jobs import redis_settings, specs, wait_batch
from bench._redis import private_redis
from pipeline.models import JobSpec

LIMIT = 1.15
MOST_LOADS = 6
SERVERS = 3
MODELS = ("a.safetensors", "b.safetensors", "c.safetensors")
SIZE = 256


def _titles(mock: str) -> list[str]:
    """The server's checkpoint titles (``name.safetensors [hash]``), as ``--model`` resolves them."""
    return [str(m["title"]) for m in httpx.get(f"{mock}/sdapi/v1/sd-models", timeout=10).json()]


def _naming(batch: list[JobSpec], titles: list[str]) -> list[JobSpec]:
    """Job i names checkpoint i mod 3: the three interleaved row by row."""
    named = []
    for index, spec in enumerate(batch):
        generation = spec.generation
        assert generation is not None
        override = {"sd_model_checkpoint": titles[index % len(titles)]}
        named.append(
            spec.model_copy(update={"generation": generation.model_copy(update={"override_settings": override})})
        )
    return named


def _loads(mocks: list[str]) -> int:
    return sum(int(httpx.get(f"{mock}/mock/stats", timeout=10).json()["model_loads"]) for mock in mocks)


def _run_mode(folder: Path, *, affinity: bool, jobs: int, latency_ms: int, load_ms: int) -> dict[str, Any]:
    """One mode on its own Redis, mocks and workers: wall time, loads, and the checkpoints rendered."""
    from actors import open_runtime

    folder.mkdir(parents=True, exist_ok=True)
    with private_redis() as url, services(folder, url) as started:
        mocks = [started.mock_sd(latency_ms=latency_ms, models=MODELS, model_load_ms=load_ms) for _ in range(SERVERS)]
        pool_url = ",".join(mocks)
        started.worker(pool_url, processes=2, threads=3, extra_env={"MODEL_AFFINITY": str(affinity).lower()})
        settings = redis_settings(url, pool_url, started.output_dir)
        titles = _titles(mocks[0])
        with open_runtime(settings) as runtime:
            warm = specs(settings, 2 * SERVERS, size=SIZE, seed=1)  # naming no checkpoint: no load
            runtime.submit(warm)
            wait_batch(runtime.store, warm[0].batch_id or "", len(warm), timeout_s=120)
            loads_before = _loads(mocks)
            batch = _naming(specs(settings, jobs, size=SIZE, seed=100), titles)
            started_at = time.perf_counter()
            runtime.submit(batch)
            timeout_s = jobs * (latency_ms + load_ms) / 1000 + 120
            wait_batch(runtime.store, batch[0].batch_id or "", jobs, timeout_s=timeout_s)
            wall_s = time.perf_counter() - started_at
            records = runtime.store.list_jobs(batch_id=batch[0].batch_id, limit=jobs)
        loads = _loads(mocks) - loads_before
    wrong = []
    for record in records:
        generation = record.spec.generation
        asked = (generation.override_settings or {}).get("sd_model_checkpoint", "") if generation else ""
        info: Any = record.sd_info
        rendered = info.get("model_name") if isinstance(info, dict) else getattr(info, "model_name", None)
        if not str(asked).startswith(f"{rendered}."):
            wrong.append((record.job_id, asked, rendered))
    if wrong:
        raise RuntimeError(f"{len(wrong)} image(s) rendered with another checkpoint than asked: {wrong[:3]}")
    return {"wall_s": wall_s, "loads": loads}


def run(folder: Path, *, tiny: bool) -> list[Row]:
    jobs, latency_ms, load_ms = (12, 100, 500) if tiny else (60, 300, 3000)
    aware = _run_mode(folder / "aware", affinity=True, jobs=jobs, latency_ms=latency_ms, load_ms=load_ms)
    blind = _run_mode(folder / "blind", affinity=False, jobs=jobs, latency_ms=latency_ms, load_ms=load_ms)
    nominal_s = jobs * latency_ms / 1000 / SERVERS + load_ms / 1000
    setup = f"{jobs} jobs, 3 checkpoints interleaved, {SERVERS} mocks at {latency_ms} ms/image + {load_ms} ms/load"
    return [
        Row(
            target="7",
            name=f"{setup}, 6 threads, checkpoint-aware",
            unit="s",
            measured=aware["wall_s"],
            baseline=nominal_s,
            baseline_name=f"{jobs} × {latency_ms} ms / {SERVERS} + one load of {load_ms} ms",
            limit=LIMIT,
            details={"aware": aware, "blind": blind},
        ),
        Row(
            target="7",
            name="checkpoint loads, checkpoint-aware",
            unit="",
            measured=float(aware["loads"]),
            baseline=float(blind["loads"]),
            baseline_name="blind dispatch (MODEL_AFFINITY=false), same jobs and servers",
            limit=float(MOST_LOADS),
            limit_on="measured",
            note=f"at most {MOST_LOADS}",
        ),
        Row(
            target="7",
            name=f"{setup}, 6 threads, blind dispatch",
            unit="s",
            measured=blind["wall_s"],
            baseline=nominal_s,
            baseline_name=f"{jobs} × {latency_ms} ms / {SERVERS} + one load of {load_ms} ms",
            judged=False,
            note="MODEL_AFFINITY=false: any free server, the checkpoint loaded per request and put back",
        ),
    ]
