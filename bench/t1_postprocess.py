"""Target 1: post-processing one image through ``sdpipe process``'s code path (embedded), vs sharp.

Ours: one embedded :class:`~actors.Runtime` for all images (start-up excluded); per image, what
``sdpipe process`` does after start-up: :func:`~pipeline.jobs.planning.plan_process` (read and validate the
file), ``ingest``, ``Runtime.submit``, then wait until the job is terminal (the status store polled
every 2 ms). The same PNG files (detailed images from :func:`pipeline.sd.mock.render.render` with an
A1111 infotext, as the SD server sends them; a few different ones per size, since PNG speed and
size depend on the content) go to ``bench/sharp_postprocess.mjs``: the original service's operation
written the straightforward way with sharp, in one Node process per size. Sizes alternate between
the two sides (sharp then ours, size by size), so drift on a noisy machine hits both alike.

Target: median per-image time at 1024² ≤ 0.5 × sharp's, and our PNG no larger than sharp's default
PNG (total bytes over the same images). 512², 2048² and 4096² are reported. Two more rows time both
sides as whole processes on 20 PNGs of 1024² (issue 17): :mod:`bench.t1_whole_process`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import t1_whole_process
from bench._common import Row, median
from pipeline.images.infotext import build_infotext
from pipeline.sd.mock.render import encode_image as sd_encode
from pipeline.sd.mock.render import render

BENCH_DIR = Path(__file__).resolve().parent
NODE_DIR = BENCH_DIR / ".node"
SHARP_SCRIPT = BENCH_DIR / "sharp_postprocess.mjs"
#: The size the time target is judged at; the others are reported.
JUDGED_SIZE = 1024
TIME_LIMIT = 0.5
SIZE_LIMIT = 1.0
#: size -> (distinct images, timed runs of each)
FULL_PLAN = {512: (3, 5), 1024: (3, 4), 2048: (2, 3), 4096: (1, 3)}
TINY_PLAN = {256: (1, 2)}
BAND_PX, SIGMA = 16, 4.0
PROMPTS = ("a lighthouse at dusk, detailed", "a fox in a snowy forest", "city street at night, neon, rain")


def _write_inputs(folder: Path, size: int, count: int) -> list[Path]:
    """``count`` SD-like PNGs of ``size``²: detailed pixels, compress level 1, a ``parameters`` infotext."""
    paths = []
    for index in range(count):
        prompt = PROMPTS[index % len(PROMPTS)]
        params = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": size + index}
        params |= {"Size": f"{size}x{size}", "Model": "v1-5-pruned-emaonly", "Version": "v1.10.1"}
        path = folder / f"sd-{size}-{index}.png"
        path.write_bytes(
            sd_encode(render(prompt, size + index, size, size), infotext=build_infotext(prompt, "", params))
        )
        paths.append(path)
    return paths


def ensure_sharp() -> tuple[str, str] | None:
    """Install sharp into bench/.node (npm registry) if needed; None, or (short, long) why it is unavailable."""
    if shutil.which("node") is None:
        return "no Node.js", "Node.js not found: no sharp baseline (install node and npm to compare)"
    if (NODE_DIR / "node_modules" / "sharp" / "package.json").exists():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "no npm", "npm not found: sharp cannot be installed, no sharp baseline"
    proc = subprocess.run(
        [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error", "sharp"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return "no sharp", f"npm install sharp failed ({' '.join(last)[:120]}): no sharp baseline"
    return None


def _run_sharp(paths: list[Path], repeats: int, out: Path) -> dict[str, Any]:
    options = {"files": [str(p) for p in paths], "repeats": repeats, "warmup": 1, "band": BAND_PX, "sigma": SIGMA}
    options["out"] = str(out)
    proc = subprocess.run(
        ["node", str(SHARP_SCRIPT), json.dumps(options)], capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sharp_postprocess.mjs failed: {proc.stderr.strip()[-2000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "median_ms": median([t for entry in report["results"] for t in entry["times_ms"]]),
        "bytes": [entry["bytes"] for entry in report["results"]],
        "version": f"sharp {report['sharp']} / libvips {report['vips']}",
    }


class _Ours:
    """One embedded runtime, as ``sdpipe process`` opens, kept for every image of the run."""

    def __init__(self, folder: Path) -> None:
        from actors import open_runtime
        from pipeline.jobs.planning import build_step_params
        from pipeline.settings import load_settings

        self.settings = load_settings(
            output_dir=folder / "outputs", sd_api_url="mock://", redis_url=None, redis_host=None, output_format="png"
        )
        self.params = build_step_params(self.settings, grid="2x2", band_px=BAND_PX, sigma=SIGMA)
        self.output_dir = self.settings.output_dir.absolute()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.runtime = open_runtime(self.settings)

    def close(self) -> None:
        self.runtime.close()

    def one(self, path: Path) -> tuple[float, float, dict[str, float], int]:
        """Process one file; return (total ms, plan+ingest ms, step durations in ms, output bytes)."""
        from pipeline.jobs.planning import plan_process

        started = time.perf_counter()
        plans = plan_process(self.settings, [path], self.params, output_dir=self.output_dir, now=time.time())
        for plan in plans:
            plan.ingest()
        planned = time.perf_counter()
        self.runtime.submit([plan.spec for plan in plans])
        job_id = plans[0].spec.job_id
        while not (record := self.runtime.store.get(job_id)).state.terminal:
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
        if record.result is None:
            raise RuntimeError(f"job {job_id} {record.state.value}: {record.error}")
        Path(str(record.result.image)).unlink()
        Path(str(record.result.sidecar)).unlink()
        steps = {name: (step.duration_s or 0.0) * 1000 for name, step in record.steps.items()}
        return elapsed * 1000, (planned - started) * 1000, steps, int(record.result.bytes or 0)

    def run(self, paths: list[Path], repeats: int) -> dict[str, Any]:
        self.one(paths[0])  # warm-up
        times, plan_times, steps = [], [], []
        sizes = {}
        for path in paths:
            for _ in range(repeats):
                total, planned, step_ms, size = self.one(path)
                times.append(total)
                plan_times.append(planned)
                steps.append(step_ms)
                sizes[path] = size
        return {
            "median_ms": median(times),
            "bytes": [sizes[path] for path in paths],
            "phases_ms": {
                "plan_process+ingest": round(median(plan_times), 1),
                **{name: round(median([s[name] for s in steps]), 1) for name in steps[0]},
            },
        }


def run(folder: Path, *, tiny: bool) -> list[Row]:
    plan = TINY_PLAN if tiny else FULL_PLAN
    unavailable = ensure_sharp()
    out = folder / "sharp-out"
    out.mkdir()
    ours_runner = _Ours(folder)
    ours: dict[int, dict[str, Any]] = {}
    sharp: dict[int, dict[str, Any]] = {}
    try:
        for size, (count, repeats) in plan.items():
            paths = _write_inputs(folder, size, count)
            if unavailable is None:
                sharp[size] = _run_sharp(paths, repeats, out)
            ours[size] = ours_runner.run(paths, repeats)
    finally:
        ours_runner.close()

    rows = []
    for size, (count, repeats) in plan.items():
        theirs = sharp.get(size)
        judged = size == JUDGED_SIZE
        short, why = unavailable or ("", "")
        note = why or (theirs["version"] if judged and theirs else "")
        rows.append(
            Row(
                target="1",
                name=f"post-process {size}² (median/image)",
                unit="ms",
                measured=ours[size]["median_ms"],
                baseline=theirs["median_ms"] if theirs else None,
                baseline_name=f"sharp, same {count} image(s) × {repeats}",
                limit=TIME_LIMIT,
                judged=judged,
                note=note,
                unavailable=short,
                details={"images": count, "repeats": repeats, "ours": ours[size], "sharp": theirs},
            )
        )
        rows.append(
            Row(
                target="1",
                name=f"output PNG size {size}² (mean/image)",
                unit="MB",
                measured=sum(ours[size]["bytes"]) / count / 1e6,
                baseline=sum(theirs["bytes"]) / count / 1e6 if theirs else None,
                baseline_name="sharp's default PNG of the same images",
                limit=SIZE_LIMIT,
                note=why,
                unavailable=short,
            )
        )
    # Issue 17: the same work as a user runs it, start-up and orchestration included.
    rows += t1_whole_process.rows(folder, tiny=tiny, unavailable=unavailable, band_px=BAND_PX, sigma=SIGMA)
    return rows
