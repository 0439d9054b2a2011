"""Target 1, whole process (issue 17): ``sdpipe process`` on 20 PNGs of 1024² vs the sharp script, each one process.

The per-image line of target 1 leaves out what a user also waits for: the interpreter's start-up,
the imports, opening the embedded runtime, and the per-job orchestration. Here both sides are timed
from ``fork`` to exit on the same files: ``sdpipe process FOLDER --out DIR`` (embedded) and
``node bench/sharp_postprocess.mjs`` with every file once (no warm-up run). Runs alternate A/B, so
drift on a busy machine hits both alike; the medians are compared. Bytecode is warm for ours (one
untimed run first, ``PYTHONDONTWRITEBYTECODE`` removed), and node's first run is untimed too.

Targets: median wall time ≤ 0.4 × sharp's; our PNGs no larger than sharp's (total bytes).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench._common import Row, median, sdpipe_command, warm_env

TIME_LIMIT = 0.4
SIZE_LIMIT = 1.0
#: (size, images, alternating runs of each side)
FULL_PLAN = (1024, 20, 5)
TINY_PLAN = (256, 3, 1)


def _timed(args: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} … exited {done.returncode}: {done.stderr.decode()[-1500:]}")
    return elapsed


def _png_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.glob("*.png"))


def run_whole(folder: Path, paths: list[Path], *, runs: int, band_px: int, sigma: float) -> dict[str, Any]:
    """Alternate ``runs`` whole-process runs of each side on ``paths``; medians, and output bytes."""
    from bench.t1_postprocess import SHARP_SCRIPT

    env = warm_env()
    sharp_out, ours_out = folder / "whole-sharp", folder / "whole-ours"
    options = {"files": [str(p) for p in paths], "repeats": 1, "warmup": 0, "band": band_px, "sigma": sigma}
    sharp = ["node", str(SHARP_SCRIPT), json.dumps(options | {"out": str(sharp_out)})]
    inputs = folder / "whole-inputs"
    inputs.mkdir()
    for path in paths:
        shutil.copy(path, inputs / path.name)
    ours = [*sdpipe_command(), "process", str(inputs), "--out", str(ours_out), "--band-px", str(band_px)]
    ours += ["--sigma", str(sigma), "--grid", "2x2", "--format", "png"]

    def fresh(out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)

    times: dict[str, list[float]] = {"ours": [], "sharp": []}
    for index in range(runs + 1):  # the first round warms both (bytecode, page cache) and is not kept
        fresh(sharp_out)
        sharp_s = _timed(sharp)
        fresh(ours_out)
        ours_s = _timed(ours, env)
        if index:
            times["sharp"].append(sharp_s)
            times["ours"].append(ours_s)
    return {
        "ours_s": median(times["ours"]),
        "sharp_s": median(times["sharp"]),
        "ours_bytes": _png_bytes(ours_out),
        "sharp_bytes": _png_bytes(sharp_out),
        "runs_s": {side: [round(t, 3) for t in values] for side, values in times.items()},
    }


def rows(folder: Path, *, tiny: bool, unavailable: tuple[str, str] | None, band_px: int, sigma: float) -> list[Row]:
    """The two whole-process rows of target 1 (time, output size); without sharp, ours alone."""
    from bench.t1_postprocess import _write_inputs

    size, count, runs = TINY_PLAN if tiny else FULL_PLAN
    work = folder / "whole"
    work.mkdir()
    paths = _write_inputs(work, size, count)
    short, why = unavailable or ("", "")
    if unavailable is not None:
        env = warm_env()
        out = work / "whole-ours"
        cmd = [*sdpipe_command(), "process", *map(str, paths), "--out", str(out), "--band-px", str(band_px)]
        alone = median([_timed([*cmd, "--sigma", str(sigma), "--overwrite"], env) for _ in range(runs)])
        result = {"ours_s": alone, "sharp_s": None, "ours_bytes": _png_bytes(out), "sharp_bytes": None}
    else:
        result = run_whole(work, paths, runs=runs, band_px=band_px, sigma=sigma)
    name = f"whole process: sdpipe process, {count} PNGs of {size}²"
    return [
        Row(
            target="1",
            name=name,
            unit="s",
            measured=result["ours_s"],
            baseline=result["sharp_s"],
            baseline_name=f"node sharp_postprocess.mjs on the same {count} files, one process, alternating × {runs}",
            limit=TIME_LIMIT,
            judged=size == FULL_PLAN[0],
            note=why,
            unavailable=short,
            details=result,
        ),
        Row(
            target="1",
            name=f"whole process: output PNG bytes, {count} × {size}²",
            unit="MB",
            measured=result["ours_bytes"] / 1e6,
            baseline=result["sharp_bytes"] / 1e6 if result["sharp_bytes"] else None,
            baseline_name="sharp's PNGs of the same run",
            limit=SIZE_LIMIT,
            note=why,
            unavailable=short,
        ),
    ]
