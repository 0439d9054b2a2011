"""Target 9 (issue 17): how long ``sdpipe`` takes as a whole process, beside ``python -c pass``.

A user feels a command's start-up, not its in-process time. Each command runs as the ``sdpipe``
console script of this environment (``python -m cli`` where there is none), stdout and stderr to
/dev/null, and the wall time from ``fork`` to exit is taken. The commands and ``python -c pass``
(the baseline: the interpreter's own start) alternate round by round, so drift on a busy machine
hits them alike; the median of the rounds is reported.

- ``sdpipe --help``;
- embedded mode (an ``OUTPUT_DIR`` holding one finished job): ``status ID``, ``jobs``;
- Redis mode (a private redis-server; an ``sdpipe mock-sd`` over HTTP): ``status ID``, ``jobs``, and
  ``generate PROMPT --no-wait`` (plans, checks the request against the server's catalog, enqueues).

Bytecode is written and warm (one untimed run of each command first), as for an installed CLI:
``PYTHONDONTWRITEBYTECODE`` is removed from the children's environment.

Target: each median ≤ 0.25 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench._common import Row, median, sdpipe_command, services, warm_env
from bench._redis import private_redis

LIMIT_S = 0.25
FULL_ROUNDS, TINY_ROUNDS = 15, 3


def _run(args: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one whole process; raises if it fails."""
    started = time.perf_counter()
    completed = subprocess.run(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {completed.returncode}: {completed.stderr.decode()[-500:]}")
    return elapsed


def _one_job(sdpipe: list[str], env: dict[str, str], cwd: Path, *extra: str) -> str:
    out = subprocess.run(
        [*sdpipe, "generate", "a lighthouse at dusk", "--width", "64", "--height", "64", "--json", *extra],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(out.stdout)[0]["job_id"])


def run(folder: Path, *, tiny: bool) -> list[Row]:
    rounds = TINY_ROUNDS if tiny else FULL_ROUNDS
    sdpipe = sdpipe_command()
    embedded = warm_env(OUTPUT_DIR=str(folder / "embedded"), SD_API_URL="mock://")
    embedded_id = _one_job(sdpipe, embedded, folder)
    with private_redis() as redis_url, services(folder, redis_url) as started:
        sd_url = started.mock_sd()
        redis = warm_env(REDIS_URL=redis_url, SD_API_URL=sd_url, OUTPUT_DIR=str(folder / "redis"))
        redis_id = _one_job(sdpipe, redis, folder, "--no-wait")
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], warm_env()),
            "sdpipe --help": ([*sdpipe, "--help"], warm_env()),
            "sdpipe status ID (embedded)": ([*sdpipe, "status", embedded_id], embedded),
            "sdpipe jobs (embedded)": ([*sdpipe, "jobs"], embedded),
            "sdpipe status ID (Redis)": ([*sdpipe, "status", redis_id], redis),
            "sdpipe jobs (Redis)": ([*sdpipe, "jobs"], redis),
            "sdpipe generate --no-wait (Redis)": (
                [*sdpipe, "generate", "a fox", "--width", "64", "--height", "64", "--no-wait"],
                redis,
            ),
        }
        for args, env in commands.values():  # warm: bytecode written, files in the page cache
            _run(args, env, folder)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, (args, env) in commands.items():
                times[name].append(_run(args, env, folder))
    baseline = median(times.pop("python -c pass"))
    return [
        Row(
            target="9",
            name=f"start-up: {name}",
            unit="s",
            measured=median(samples),
            baseline=baseline,
            baseline_name="python -c pass, same rounds",
            limit=LIMIT_S,
            limit_on="measured",
            details={"rounds": rounds, "samples_s": [round(s, 4) for s in samples]},
        )
        for name, samples in times.items()
    ]


if __name__ == "__main__":  # python -m bench.t9_startup: this target alone, quickly
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for row in run(Path(tmp), tiny="--tiny" in sys.argv):
            print(f"{row.name:45s} {row.measured:.3f} s  (python -c pass {row.baseline:.3f} s)")
