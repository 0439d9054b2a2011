"""Where target 2's worker CPU goes, per job and by category, beside the direct loop's (not a judged target).

    uv run python -m bench.t2_breakdown [--jobs 200] [--size 512]

The setup of target 2 (private redis-server, ``sdpipe mock-sd`` at zero latency over HTTP,
``sdpipe worker --processes 2``, 512² jobs after a warm-up), with :mod:`bench._breakdown`'s wrappers
loaded into the workers; then the direct loop of target 2 with the same wrappers in this process.
Each line is CPU ms per job; "not attributed" is the rest of the process tree's CPU from /proc
(background threads, Dramatiq's parent process, thread switches, code between wrapped calls).
The wrappers cost CPU themselves (a few µs per call), so the worker total here reads a little
higher than target 2's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench import _breakdown
from bench._common import cpu_seconds, descendants, services
from bench._jobs import redis_settings, specs, wait_batch
from bench._redis import private_redis
from bench.t2_overhead import SIZE, _direct_cpu_per_job, direct_images

REPO = Path(__file__).resolve().parent.parent
#: Jobs before the measured batch (imports, first connections, caches).
WARM_JOBS = 10


def _worker_breakdown(folder: Path, jobs: int, size: int) -> tuple[dict[str, float], float, list[tuple[str, str]]]:
    """Per-job CPU ms by category in the workers, the process tree's total, and SD images for the direct loop."""
    from actors import open_runtime

    totals_dir = folder / "totals"
    totals_dir.mkdir(parents=True)
    path = os.pathsep.join([str(REPO / "bench" / "breakdown_site"), str(REPO), os.environ.get("PYTHONPATH", "")])
    with private_redis() as url, services(folder, url) as started:
        mock = started.mock_sd(latency_ms=0)
        top = started.worker(
            mock, processes=2, extra_env={_breakdown.ENV_DIR: str(totals_dir), "PYTHONPATH": path.rstrip(os.pathsep)}
        )
        settings = redis_settings(url, mock, started.output_dir)
        batch = specs(settings, jobs, size=size, seed=5000)
        images = direct_images(settings, batch)
        with open_runtime(settings) as runtime:
            warm = specs(settings, WARM_JOBS, size=size, seed=1)
            runtime.submit(warm)
            wait_batch(runtime.store, warm[0].batch_id or "", len(warm), timeout_s=120)
            tree = descendants(top)
            time.sleep(1.0)  # every process has written its warm-up totals
            before, cpu_before = _breakdown.read_dir(totals_dir), cpu_seconds(tree)
            runtime.submit(batch)
            wait_batch(runtime.store, batch[0].batch_id or "", jobs, timeout_s=600)
            cpu_after = cpu_seconds(tree)
            time.sleep(1.0)
            after = _breakdown.read_dir(totals_dir)
    per_job = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / jobs * 1000 for k in _breakdown.CATEGORIES}
    total = sum(cpu_after[p] - cpu_before[p] for p in cpu_after if p in cpu_before) / jobs * 1000
    return per_job, total, images


def _direct_breakdown(
    folder: Path, images: list[tuple[str, str]], settings_folder: Path
) -> tuple[dict[str, float], float]:
    from pipeline.settings import load_settings

    _breakdown.install()
    settings = load_settings(output_dir=settings_folder, sd_api_url="mock://")
    rounds, per_round = 2, 40
    jobs = rounds * per_round + 1  # the helper's warm-up call counts too
    before, cpu_before = _breakdown.snapshot(), time.process_time()
    _direct_cpu_per_job(settings, images, folder, rounds=rounds, per_round=per_round)
    total = (time.process_time() - cpu_before) / jobs * 1000
    after = _breakdown.snapshot()
    per_job = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / jobs * 1000 for k in _breakdown.CATEGORIES}
    return per_job, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.t2_breakdown", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs in the measured batch (default 200)")
    parser.add_argument("--size", type=int, default=SIZE, help=f"image side in pixels (default {SIZE}, target 2's)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if not 64 <= args.size <= 2048 or args.size % 8:
        parser.error("--size must be a multiple of 8 from 64 to 2048 (what the mock renders)")
    with tempfile.TemporaryDirectory(prefix="sdpipe-breakdown-") as tmp:
        folder = Path(tmp)
        worker, worker_total, images = _worker_breakdown(folder / "worker", args.jobs, args.size)
        direct, direct_total = _direct_breakdown(folder / "direct", images, folder / "direct-out")
    width = max(len(c) for c in _breakdown.CATEGORIES) + 2
    print(
        f"CPU ms per {args.size}² job: {args.jobs} jobs, Redis mode, 2 worker processes; direct loop in one process\n"
    )
    print(f"{'':{width}}{'worker':>8}{'direct':>8}{'extra':>8}")
    for category in _breakdown.CATEGORIES:
        w, d = worker.get(category, 0.0), direct.get(category, 0.0)
        print(f"{category:{width}}{w:8.2f}{d:8.2f}{w - d:8.2f}")
    rest_w, rest_d = worker_total - sum(worker.values()), direct_total - sum(direct.values())
    print(f"{'not attributed':{width}}{rest_w:8.2f}{rest_d:8.2f}{rest_w - rest_d:8.2f}")
    print(f"{'total':{width}}{worker_total:8.2f}{direct_total:8.2f}{worker_total - direct_total:8.2f}")
    print(f"\nratio {worker_total / direct_total:.2f}× (with the wrappers' own cost; target 2 measures without them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
