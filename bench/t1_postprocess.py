"""Target 1: post-processing one image through ``sdpipe process``'s code path (embedded), vs sharp.

Ours: one embedded :class:`~actors.Runtime` for all images (start-up excluded); per image, what
``sdpipe process`` does after start-up: :func:`~pipeline.jobs.plan_process` (read and validate the
file), ``ingest``, ``Runtime.submit``, then wait until the job is terminal (the status store polled
every 2 ms). The same PNG files (detailed images from :func:`pipeline.mock_render.render` with an
A1111 infotext, as the SD server sends them) go to ``bench/sharp_postprocess.mjs``: the original
service's operation written the straightforward way with sharp, in one Node process.

Target: median per-image time at 1024² ≤ 0.5 × sharp's, and our PNG no larger than sharp's default
PNG. 512², 2048² and 4096² are reported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench._common import Row, median
from pipeline.mock_render import encode_image as sd_encode
from pipeline.mock_render import format_infotext, render

BENCH_DIR = Path(__file__).resolve().parent
NODE_DIR = BENCH_DIR / ".node"
SHARP_SCRIPT = BENCH_DIR / "sharp_postprocess.mjs"
#: The size the target is judged at; the others are reported.
JUDGED_SIZE = 1024
TIME_LIMIT = 0.5
SIZE_LIMIT = 1.0
FULL_REPEATS = {512: 15, 1024: 11, 2048: 5, 4096: 3}
TINY_REPEATS = {256: 2}


def _write_inputs(folder: Path, sizes: list[int]) -> dict[int, Path]:
    """One SD-like PNG per size: detailed pixels, compress level 1, a ``parameters`` infotext."""
    paths = {}
    for size in sizes:
        prompt = "a lighthouse at dusk, detailed, intricate"
        infotext = format_infotext(
            prompt,
            "blurry",
            {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": size, "Size": f"{size}x{size}"}
            | {"Model": "v1-5-pruned-emaonly", "Version": "v1.10.1"},
        )
        path = folder / f"sd-{size}.png"
        path.write_bytes(sd_encode(render(prompt, size, size, size), infotext=infotext))
        paths[size] = path
    return paths


def ensure_sharp() -> str | None:
    """Install sharp into bench/.node (npm registry) if needed; return why it is unavailable, or None."""
    if shutil.which("node") is None:
        return "Node.js not found: sharp baseline skipped"
    if (NODE_DIR / "node_modules" / "sharp" / "package.json").exists():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm not found: sharp baseline skipped"
    proc = subprocess.run(
        [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "sharp"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        return f"npm install sharp failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
    return None


def _run_sharp(paths: dict[int, Path], repeats: dict[int, int], out: Path) -> dict[int, dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    for size, path in paths.items():
        # One warm-up run per size, dropped, like ours.
        options = {"files": [str(path)], "repeats": repeats[size] + 1, "band": 16, "sigma": 4, "out": str(out)}
        proc = subprocess.run(
            ["node", str(SHARP_SCRIPT), json.dumps(options)], capture_output=True, text=True, timeout=900, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"sharp_postprocess.mjs failed: {proc.stderr.strip()[-2000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        entry = report["results"][0]
        results[size] = {
            "median_ms": median(entry["times_ms"][1:]),
            "bytes": entry["bytes"],
            "version": f"sharp {report['sharp']} / libvips {report['vips']}",
        }
    return results


def _run_ours(paths: dict[int, Path], repeats: dict[int, int], folder: Path) -> dict[int, dict[str, Any]]:
    from actors import open_runtime
    from pipeline.jobs import build_step_params, plan_process
    from pipeline.settings import load_settings

    settings = load_settings(
        output_dir=folder / "outputs", sd_api_url="mock://", redis_url=None, redis_host=None, output_format="png"
    )
    params = build_step_params(settings, grid="2x2", band_px=16, sigma=4.0)
    output_dir = settings.output_dir.absolute()
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, Any]] = {}
    with open_runtime(settings) as runtime:
        for size, path in paths.items():
            times, plan_times, steps, sizes = [], [], [], []
            for index in range(repeats[size] + 1):
                started = time.perf_counter()
                plans = plan_process(settings, [path], params, output_dir=output_dir, now=time.time())
                for plan in plans:
                    plan.ingest()
                planned = time.perf_counter()
                runtime.submit([plan.spec for plan in plans])
                job_id = plans[0].spec.job_id
                while not (record := runtime.store.get(job_id)).state.terminal:
                    time.sleep(0.002)
                elapsed = time.perf_counter() - started
                if record.result is None:
                    raise RuntimeError(f"job {job_id} {record.state.value}: {record.error}")
                image = Path(record.result["image"])
                if index == 0:  # warm-up
                    image.unlink()
                    continue
                times.append(elapsed * 1000)
                plan_times.append((planned - started) * 1000)
                steps.append({name: step.duration_s or 0.0 for name, step in record.steps.items()})
                sizes.append(record.result["bytes"])
                image.unlink()
                Path(record.result["sidecar"]).unlink()
            results[size] = {
                "median_ms": median(times),
                "bytes": sizes[-1],
                "phases_ms": {
                    "plan_process+ingest": round(median(plan_times), 1),
                    **{name: round(median([s[name] for s in steps]) * 1000, 1) for name in steps[0]},
                },
            }
    return results


def run(folder: Path, *, tiny: bool) -> list[Row]:
    repeats = TINY_REPEATS if tiny else FULL_REPEATS
    paths = _write_inputs(folder, sorted(repeats))
    unavailable = ensure_sharp()
    sharp: dict[int, dict[str, Any]] = {}
    if unavailable is None:
        out = folder / "sharp-out"
        out.mkdir()
        sharp = _run_sharp(paths, repeats, out)
    ours = _run_ours(paths, repeats, folder)
    rows = []
    for size in sorted(repeats):
        theirs = sharp.get(size)
        note = unavailable or (theirs["version"] if theirs else "")
        judged = size == JUDGED_SIZE
        rows.append(
            Row(
                target="1",
                name=f"post-process {size}² (median/image)",
                unit="ms",
                measured=ours[size]["median_ms"],
                baseline=theirs["median_ms"] if theirs else None,
                baseline_name="sharp, same images",
                limit=TIME_LIMIT,
                judged=judged,
                note=note if judged or unavailable else "reported, not judged",
                details={"repeats": repeats[size], "ours": ours[size], "sharp": theirs},
            )
        )
        rows.append(
            Row(
                target="1",
                name=f"output PNG size {size}²",
                unit="MB",
                measured=ours[size]["bytes"] / 1e6,
                baseline=theirs["bytes"] / 1e6 if theirs else None,
                baseline_name="sharp default PNG",
                limit=SIZE_LIMIT,
                note=unavailable or "",
            )
        )
    return rows
