"""Which S3 client library for ``OUTPUT_URL=s3://...`` (issue 19): obstore, boto3 and s3fs side by side.

    uv run python -m bench.s3_clients            # 20 rounds of each
    uv run python -m bench.s3_clients --rounds 5 # quicker

Against a private moto server (zero network latency, so the figures are each library's own cost per
request plus moto's): PUT and GET of a 2 MB object (a 1024² intermediate or output) and of a 1 KB one
(a sidecar, a claim), HEAD of a missing key (a step checking for its output), and the time to import
the library in a fresh interpreter (the CLI imports the client only when an s3:// location is used,
but every worker process pays it). Beside them, the same writes and reads through Redis (``SET``/``GET``
of the same bytes: the other way the issue allows for intermediates) and on the local disk
(``atomic_write_bytes`` and a read: the baseline of each ratio). Libraries that are not installed are
reported as such (only obstore is a dependency; boto3 comes with moto in the dev group).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._redis import private_redis
from tests.procs import MotoServer, free_port

BUCKET = "bench"
SIZES = {"2 MB": 2 * 1024 * 1024, "1 KB": 1024}
KEY = "AKIDBENCH"
SECRET = "bench-secret"


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm-up: connections, first-request setup
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _import_ms(module: str, rounds: int = 3) -> float | None:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    best = None
    for _ in range(rounds):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode != 0:
            return None
        taken = float(done.stdout.strip()) * 1000
        best = taken if best is None else min(best, taken)
    return best


def _obstore(endpoint: str) -> dict[str, Callable[..., Any]]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=endpoint,
        access_key_id=KEY,
        secret_access_key=SECRET,
        region="us-east-1",
        client_options={"allow_http": True},
    )

    def head_missing() -> None:
        try:
            obstore.head(store, "missing")
        except FileNotFoundError:
            pass

    return {
        "put": lambda key, data: obstore.put(store, key, data),
        "get": lambda key: obstore.get(store, key).bytes(),
        "head_missing": head_missing,
    }


def _boto3(endpoint: str) -> dict[str, Callable[..., Any]]:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1"
    )

    def head_missing() -> None:
        try:
            client.head_object(Bucket=BUCKET, Key="missing")
        except client.exceptions.ClientError:
            pass

    return {
        "put": lambda key, data: client.put_object(Bucket=BUCKET, Key=key, Body=data),
        "get": lambda key: client.get_object(Bucket=BUCKET, Key=key)["Body"].read(),
        "head_missing": head_missing,
    }


def _s3fs(endpoint: str) -> dict[str, Callable[..., Any]]:
    import s3fs

    fs = s3fs.S3FileSystem(key=KEY, secret=SECRET, endpoint_url=endpoint, use_listings_cache=False)
    return {
        "put": lambda key, data: fs.pipe_file(f"{BUCKET}/{key}", data),
        "get": lambda key: fs.cat_file(f"{BUCKET}/{key}"),
        "head_missing": lambda: fs.exists(f"{BUCKET}/missing"),
    }


def _redis(url: str) -> dict[str, Callable[..., Any]]:
    import redis

    client = redis.Redis.from_url(url)
    return {
        "put": lambda key, data: client.set(key, data, ex=3600),
        "get": lambda key: client.get(key),
        "head_missing": lambda: client.exists("missing"),
    }


def _local(folder: Path) -> dict[str, Callable[..., Any]]:
    from pipeline.jobs.files import atomic_write_bytes

    return {
        "put": lambda key, data: atomic_write_bytes(folder / key, data),
        "get": lambda key: (folder / key).read_bytes(),
        "head_missing": lambda: (folder / "missing").exists(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    payloads = {label: os.urandom(size) for label, size in SIZES.items()}
    with tempfile.TemporaryDirectory(prefix="sdpipe-bench-s3-") as folder, private_redis() as redis_url:
        server = MotoServer(port=free_port(), log=Path(folder) / "moto.log")
        server.start()
        try:
            server.create_bucket(BUCKET)
            clients: dict[str, Callable[[], dict[str, Callable[..., Any]]]] = {
                "local disk (baseline)": lambda: _local(Path(folder)),
                "obstore": lambda: _obstore(server.endpoint_url),
                "boto3": lambda: _boto3(server.endpoint_url),
                "s3fs": lambda: _s3fs(server.endpoint_url),
                "redis SET/GET": lambda: _redis(redis_url),
            }
            results: dict[str, dict[str, float]] = {}
            for name, make in clients.items():
                try:
                    ops = make()
                except ImportError:
                    print(f"{name}: not installed")
                    continue
                row: dict[str, float] = {}
                for label, data in payloads.items():
                    key = f"obj-{label.replace(' ', '')}"
                    put, get = ops["put"], ops["get"]
                    row[f"put {label}"] = _median_ms(lambda p=put, k=key, d=data: p(k, d), args.rounds)
                    row[f"get {label}"] = _median_ms(lambda g=get, k=key: g(k), args.rounds)
                row["head missing"] = _median_ms(ops["head_missing"], args.rounds)
                results[name] = row
        finally:
            server.stop()
    base = results["local disk (baseline)"]
    columns = list(base)
    print(f"{'median ms (ratio to local disk)':32}" + "".join(f"{c:>20}" for c in columns))
    for name, row in results.items():
        cells = "".join(f"{row[c]:>10.2f} ({row[c] / base[c]:>5.1f}x)" for c in columns)
        print(f"{name:32}{cells}")
    print()
    python = _import_ms("json") or 0.0
    for module in ("obstore", "boto3", "s3fs"):
        taken = _import_ms(module)
        shown = "not installed" if taken is None else f"{taken:7.1f} ms ({python:.1f} ms json)"
        print(f"import {module:8}: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
