"""sdpipe's performance suite (issue 5): five targets, each against a baseline measured in the same run.

    uv run python -m bench            # full size (about 5-10 minutes on 2 cores); writes bench/results.json
    uv run python -m bench --tiny     # every target at a tiny size, well under a minute (CI); never fails on a target
    uv run python -m bench --only 1,3 # some targets

1. post-processing one image through ``sdpipe process`` (embedded) vs sharp (Node), 512²…4096², and output size;
   and (issue 17) ``sdpipe process`` on 20 PNGs of 1024² vs the sharp script, each as one whole process (≤ 0.4×)
2. orchestration overhead: worker CPU per job in Redis mode ÷ the same image work called directly
   (1024², judged ≤ 1.2×; 512², reported) and, at 512², worker CPU minus that image work per job
   (≤ 7 ms, issue 17); ``python -m bench.t2_breakdown`` shows where that CPU goes
3. throughput against a slow GPU (mock at 500 ms/image): wall time ÷ N × 500 ms
4. memory: a 4096² job's peak RSS over idle ÷ decoded size; RSS growth over 500 jobs
5. ``sdpipe jobs`` / ``status`` with 100,000 jobs in Redis: store calls and whole commands, ms
6. (issue 6) a pool of 3 mock SD servers at 300 ms/image, 60 jobs on 6 threads: wall time ÷ 60 × 300 ms / 3,
   and the most requests one server held at once (must be 1)
7. (issue 15) the same pool with 3 checkpoints (3 s per load), 60 jobs naming them in turn: checkpoint loads
   (at most 6) and wall time ÷ (60 × 300 ms / 3 + 3 s), checkpoint-aware beside blind dispatch
9. (issue 17) start-up: ``sdpipe --help``, ``status``, ``jobs`` (embedded and Redis), ``generate --no-wait``
   (Redis) as whole processes, median wall time (≤ 0.25 s each) beside ``python -c pass``
10. (issue 18) a batch's wall time with a webhook receiver that never answers ÷ the same without a webhook
   (≤ 1.10×)

Prints one table (target, measured, baseline, ratio, limit, met?) and a JSON line; writes the figures
atomically to bench/results.json (``--tiny``: to a file in the temp folder, unless ``--out``). Exit
code 1 when a target errors, or (full size only) when a judged target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    t1_postprocess,
    t2_overhead,
    t3_throughput,
    t4_memory,
    t5_store_scale,
    t6_pool,
    t7_checkpoints,
    t8_upscale,
    t9_startup,
    t10_webhooks,
)
from bench._common import Row

TARGETS: dict[str, tuple[str, Callable[..., list[Row]]]] = {
    "1": ("post-processing vs sharp", t1_postprocess.run),
    "2": ("orchestration overhead", t2_overhead.run),
    "3": ("throughput against a slow GPU", t3_throughput.run),
    "4": ("worker memory", t4_memory.run),
    "5": ("store scale: jobs / status", t5_store_scale.run),
    "6": ("SD server pool (issue 6)", t6_pool.run),
    "7": ("checkpoint-aware dispatch (issue 15)", t7_checkpoints.run),
    "8": ("distributed tiled upscaling (issue 21)", t8_upscale.run),
    "9": ("CLI start-up, whole processes (issue 17)", t9_startup.run),
    "10": ("hanging webhook receiver (issue 18)", t10_webhooks.run),
}
RESULTS = Path(__file__).resolve().parent / "results.json"


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2 if abs(value) >= 1 else 3
    return f"{value:,.{digits}f}{(' ' + unit) if unit else ''}"


def _limit_text(row: Row) -> str:
    if row.limit is None:
        return "–"
    if row.limit_on == "measured":
        return f"< {_fmt(row.limit, row.unit)}"
    return f"≤ {row.limit:g}×"


def _met_text(row: Row, error: str | None = None) -> str:
    if error is not None:
        return "ERROR"
    if row.unavailable:
        return "skipped"
    if not row.judged:
        return "(info)"
    met = row.met
    return "n/a" if met is None else "yes" if met else "NO"


def print_table(rows: list[Row], errors: dict[str, str]) -> None:
    header = ("#", "measure", "measured", "baseline", "ratio", "limit", "met?")
    lines = [
        (
            row.target,
            row.name,
            _fmt(row.measured, row.unit),
            _fmt(row.baseline, row.unit) if row.baseline is not None or not row.unavailable else row.unavailable,
            "–" if row.ratio is None else f"{row.ratio:.3f}×",
            _limit_text(row),
            _met_text(row),
        )
        for row in rows
    ]
    lines += [
        (target, f"{TARGETS[target][0]}: {message}", "", "", "", "", "ERROR") for target, message in errors.items()
    ]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    right = {2, 3, 4}
    for index, line in enumerate([header, *lines]):
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))
    notes = [
        f"  [{row.target}] {row.name}: "
        + "; ".join(part for part in (row.baseline_name and f"baseline = {row.baseline_name}", row.note) if part)
        for row in rows
        if row.baseline_name or row.note
    ]
    if notes:
        print("\nbaselines and notes:")
        print("\n".join(notes))


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes (CI smoke run): targets are reported, never fail"
    )
    parser.add_argument("--only", default=",".join(TARGETS), help="comma-separated targets to run (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the results JSON")
    args = parser.parse_args(argv)
    wanted = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    out = args.out or (Path(tempfile.gettempdir()) / "sdpipe-bench-results-tiny.json" if args.tiny else RESULTS)

    rows: list[Row] = []
    errors: dict[str, str] = {}
    durations: dict[str, float] = {}
    started = time.perf_counter()
    for target in wanted:
        title, run = TARGETS[target]
        print(f"[bench] target {target}: {title}{' (tiny)' if args.tiny else ''} …", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=f"sdpipe-bench-t{target}-") as folder:
                rows += run(Path(folder), tiny=args.tiny)
        except Exception as exc:
            traceback.print_exc()
            errors[target] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        durations[target] = round(time.perf_counter() - began, 1)
        print(f"[bench] target {target} took {durations[target]:.1f} s", file=sys.stderr, flush=True)

    total_s = time.perf_counter() - started
    print()
    print_table(rows, errors)
    missed = [row for row in rows if row.met is False]
    print(
        f"\n{'tiny run: ' if args.tiny else ''}{sum(row.met is True for row in rows)} judged figures met, "
        f"{len(missed)} missed, {len(errors)} target(s) errored; {total_s:.0f} s"
    )
    results = {
        "mode": "tiny" if args.tiny else "full",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "total_s": round(total_s, 1),
        "target_s": durations,
        "rows": [row.to_dict() for row in rows],
        "errors": errors,
    }
    write_atomically(out, results)
    print(f"results written to {out}")
    summary = [
        {k: r[k] for k in ("target", "name", "unit", "measured", "baseline", "ratio", "limit", "met")}
        for r in results["rows"]
    ]
    print(json.dumps({"mode": results["mode"], "rows": summary, "errors": errors}, ensure_ascii=False))
    if errors:
        return 1
    return 0 if args.tiny or not missed else 1


if __name__ == "__main__":
    sys.exit(main())
