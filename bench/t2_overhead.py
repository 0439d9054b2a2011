"""Target 2: orchestration overhead in Redis mode.

Measured: a private redis-server, ``sdpipe mock-sd`` over HTTP at zero latency, ``sdpipe worker
--processes 2`` (default threads); after a warm-up, N jobs of 512² are submitted at once and the
CPU time (utime + stime from /proc) of the whole worker process tree over the run is divided by N.

Baseline, in this process: the same image work called directly in a loop on the mock's images for
the same jobs (fetched beforehand, kept as the base64 text the server sent): decode the SD image
from that base64 PNG, split, ``seam_blur_tile`` each tile, merge, encode the PNG with its infotext,
hash it, and write the image and a JSON sidecar atomically.
CPU from ``time.process_time()``, median of rounds.

Targets (issue 17): at SDXL's 1024², worker CPU per job ÷ direct CPU per job ≤ 1.2; at 512², where
the per-job costs weigh most, worker CPU minus the direct image work ≤ 7 ms per job (the ratio is
reported).
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

from bench._common import Row, cpu_seconds, descendants, median, services
from bench._jobs import redis_settings, specs, wait_batch
from bench._redis import private_redis
from pipeline.models import JobSpec
from pipeline.settings import Settings

#: Worker CPU per job ÷ the image work alone, at :data:`LARGE_SIZE`.
LIMIT = 1.2
#: Worker CPU minus the image work alone per job at :data:`SIZE`, in ms.
EXTRA_LIMIT_MS = 7.0
SIZE = 512
#: SDXL's native size: the ratio is judged there.
LARGE_SIZE = 1024
#: Distinct SD images the direct loop cycles through.
DIRECT_IMAGES = 20


def _direct_cpu_per_job(
    settings: Settings, images: list[tuple[str, str]], folder: Path, *, rounds: int, per_round: int
) -> float:
    """CPU seconds per image of the image work alone, called directly (median of ``rounds``)."""
    import pybase64

    from pipeline.images import seams
    from pipeline.images.codec import decode_image, encode_image
    from pipeline.images.infotext import insert_params
    from pipeline.jobs.files import atomic_write_bytes, atomic_write_json

    params = specs(settings, 1, size=SIZE)[0].step_params
    folder.mkdir(parents=True, exist_ok=True)

    def one(index: int, b64: str, infotext: str) -> None:
        data = pybase64.b64decode(b64, validate=True)  # the decoder the product uses (pipeline.sd.response)
        decoded = decode_image(data, max_pixels=settings.max_pixels, max_bytes=settings.max_image_bytes)
        width, height = decoded.width, decoded.height
        tiles = seams.split(decoded.array, params)
        blurred = [(box, seams.seam_blur_tile(tile, box, width, height, params)) for box, tile in tiles]
        merged = seams.merge(blurred, width, height)
        text = insert_params(
            infotext, {"Seam grid": params.grid, "Seam band": params.band_px, "Seam sigma": params.sigma}
        )
        png = encode_image(merged, format="png", infotext=text)
        path = folder / f"direct-{index}.png"
        atomic_write_bytes(path, png)
        atomic_write_json(
            path.with_suffix(".json"),
            {"image": str(path), "bytes": len(png), "sha256": hashlib.sha256(png).hexdigest(), "infotext": text},
        )

    one(0, *images[0])  # warm-up
    per_job = []
    for _ in range(rounds):
        started = time.process_time()
        for index in range(per_round):
            one(index, *images[index % len(images)])
        per_job.append((time.process_time() - started) / per_round)
    return median(per_job)


def direct_images(settings: Settings, jobs: list[JobSpec]) -> list[tuple[str, str]]:
    """The SD images of the first ``DIRECT_IMAGES`` jobs, as the server sent them (base64 text, infotext),
    fetched once for the direct loop (not timed)."""
    from pipeline.sd.client import SDClient

    with SDClient(settings) as client:
        images = []
        for spec in jobs[:DIRECT_IMAGES]:
            assert spec.generation is not None
            result = client.txt2img(spec.generation, job_id=spec.job_id)
            images.append((base64.b64encode(result.image_bytes).decode(), result.infotext or ""))
    return images


def _measure(
    folder: Path, *, size: int, jobs: int, runs: int, direct_rounds: int, per_round: int
) -> tuple[list[float], list[float], list[float], list[dict[int, float]]]:
    """Worker CPU ms per job of each run, direct CPU ms per job after each, wall times, CPU by pid."""
    from actors import open_runtime

    worker_ms: list[float] = []
    direct_ms: list[float] = []
    walls: list[float] = []
    per_process: list[dict[int, float]] = []
    folder.mkdir(parents=True, exist_ok=True)
    with private_redis() as url, services(folder, url) as started:
        mock = started.mock_sd(latency_ms=0)
        top = started.worker(mock, processes=2)
        settings = redis_settings(url, mock, started.output_dir)
        batches = [specs(settings, jobs, size=size, seed=1000 + run * jobs) for run in range(runs)]

        images = direct_images(settings, batches[0])

        with open_runtime(settings) as runtime:
            warm = specs(settings, 6, size=size, seed=1)
            runtime.submit(warm)
            wait_batch(runtime.store, warm[0].batch_id or "", len(warm), timeout_s=120)
            tree = descendants(top)
            # Worker runs and direct rounds alternate, so drift on a shared machine hits both alike.
            for batch in batches:
                before = cpu_seconds(tree)
                wall_started = time.perf_counter()
                runtime.submit(batch)
                wait_batch(runtime.store, batch[0].batch_id or "", jobs, timeout_s=600)
                walls.append(round(time.perf_counter() - wall_started, 2))
                after = cpu_seconds(tree)
                used = {pid: after[pid] - before[pid] for pid in after if pid in before}
                worker_ms.append(sum(used.values()) / jobs * 1000)
                per_process.append({pid: round(cpu / jobs * 1000, 2) for pid, cpu in used.items()})
                direct = _direct_cpu_per_job(
                    settings, images, folder / "direct", rounds=direct_rounds, per_round=per_round
                )
                direct_ms.append(direct * 1000)
    return worker_ms, direct_ms, walls, per_process


def _rows(folder: Path, *, size: int, jobs: int, runs: int, direct_rounds: int, per_round: int) -> list[Row]:
    """The ratio line of ``size`` (judged at :data:`LARGE_SIZE`) and, at :data:`SIZE`, the extra ms line."""
    worker_ms, direct_ms, walls, per_process = _measure(
        folder / str(size), size=size, jobs=jobs, runs=runs, direct_rounds=direct_rounds, per_round=per_round
    )
    baseline_name = f"the same image work called directly, CPU/job (median of {runs}×{direct_rounds} rounds)"
    details = {
        "jobs": jobs,
        "runs_worker_ms": [round(v, 2) for v in worker_ms],
        "runs_direct_ms": [round(v, 2) for v in direct_ms],
        "wall_s": walls,
        "cpu_ms_per_job_by_pid": per_process,
    }
    large = size == LARGE_SIZE
    rows = [
        Row(
            target="2",
            name=f"worker CPU/job, Redis, 2 procs, {jobs}×{size}²",
            unit="ms",
            measured=median(worker_ms),
            baseline=median(direct_ms),
            baseline_name=baseline_name,
            limit=LIMIT if large else None,
            judged=large,
            note=f"median of {runs} run(s) of {jobs} jobs" + ("" if large else "; ratio reported, extra judged below"),
            details=details,
        )
    ]
    if not large:
        extra_ms = [worker - direct for worker, direct in zip(worker_ms, direct_ms, strict=True)]
        rows.append(
            Row(
                target="2",
                name=f"worker CPU/job minus the image work, {size}²",
                unit="ms",
                measured=median(extra_ms),
                limit=EXTRA_LIMIT_MS,
                limit_on="measured",
                note=f"median over {runs} run(s) of (worker − direct) in the same run",
                details={"runs_extra_ms": [round(v, 2) for v in extra_ms]},
            )
        )
    return rows


def run(folder: Path, *, tiny: bool) -> list[Row]:
    if tiny:
        return _rows(folder, size=SIZE, jobs=10, runs=1, direct_rounds=2, per_round=5)
    return [
        *_rows(folder, size=SIZE, jobs=200, runs=3, direct_rounds=2, per_round=40),
        *_rows(folder, size=LARGE_SIZE, jobs=100, runs=2, direct_rounds=2, per_round=20),
    ]
