"""How long ``sdpipe batch`` takes to read, validate and enqueue a 10,000-row file in Redis mode.

Target (issue: batch rendering): under 10 s on this machine. Printed with its phases and, as the
baseline measured in the same run, the time Redis itself needs to take the same number of messages
in one pipelined write: the ratio says how much sdpipe adds over the broker's floor.

    uv run python -m bench.batch_enqueue [--rows 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import redis

from actors import open_runtime
from bench._redis import private_redis
from pipeline.batches.files import read_batch_file
from pipeline.jobs.planning import new_id
from pipeline.settings import load_settings


def _write_rows(path: Path, rows: int) -> None:
    samplers = ["Euler a", "DPM++ 2M", "Euler"]
    with path.open("w") as handle:
        for index in range(rows):
            row = {"prompt": f"a lighthouse at dusk, variation {index}", "seed": index, "steps": 20 + index % 10}
            if index % 3 == 0:
                row["sampler"] = samplers[index % len(samplers)]
            handle.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    with private_redis() as url, tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prompts.jsonl"
        _write_rows(path, args.rows)
        settings = load_settings(redis_url=url, output_dir=Path(folder) / "out", sd_api_url="mock://")

        # Baseline: the same number of ~600-byte messages in one pipelined write, nothing else.
        client = redis.Redis.from_url(url)
        payload = b"x" * 600
        started = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for index in range(args.rows):
            pipe.hset("bench:msgs", str(index), payload)
            pipe.rpush("bench:q", str(index))
        pipe.execute()
        baseline_s = time.perf_counter() - started
        client.flushall()

        started = time.perf_counter()
        batch_id = new_id()
        now = time.time()
        rows = read_batch_file(path, settings, defaults={}, batch_id=batch_id, now=now)
        read_s = time.perf_counter() - started
        with open_runtime(settings) as runtime:
            submit_started = time.perf_counter()
            runtime.submit_rows(rows, batch_id=batch_id, source=str(path), now=now)
            submit_s = time.perf_counter() - submit_started
        total_s = time.perf_counter() - started

    result = {
        "rows": args.rows,
        "read_validate_s": round(read_s, 3),
        "store_and_enqueue_s": round(submit_s, 3),
        "total_s": round(total_s, 3),
        "baseline_redis_pipeline_s": round(baseline_s, 3),
        "ratio_vs_baseline": round(total_s / baseline_s, 1),
        "target_s": 10.0,
        "target_met": total_s < 10.0,
    }
    print(f"batch of {args.rows} rows: read+validate {read_s:.2f} s, store+enqueue {submit_s:.2f} s")
    print(f"total {total_s:.2f} s (target < 10 s: {'met' if total_s < 10 else 'MISSED'})")
    print(f"baseline (Redis pipelined write of the same count): {baseline_s:.3f} s -> {total_s / baseline_s:.1f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
