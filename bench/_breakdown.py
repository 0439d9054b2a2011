"""CPU accounting by category for ``python -m bench.t2_breakdown``: where a worker's CPU goes per job.

:func:`install` wraps named functions of sdpipe, Dramatiq, redis-py's callers and ``logging`` so
that each call adds its *exclusive* CPU time (``time.thread_time``, minus the time of wrapped calls
nested inside it) to a category. Summed over a run and divided by the jobs, the categories add up to
the CPU of the threads that ran them; what no wrapper saw (background threads, the Dramatiq parent
process, thread switches) is the remainder, which the runner reports from /proc.

Worker processes load this through ``bench/breakdown_site/sitecustomize.py`` when
:data:`ENV_DIR` is set: the Dramatiq parent installs the wrappers before it forks, and each child
writes its totals to ``<dir>/<pid>.json`` every half second. Measurement code only: it patches
module attributes at run time and is never imported by sdpipe itself.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["ENV_DIR", "CATEGORIES", "install", "read_dir", "snapshot", "start_dumping"]

#: Folder the worker processes write their totals to; setting it turns the accounting on.
ENV_DIR = "SDPIPE_BENCH_BREAKDOWN_DIR"

IMAGE_DECODE = "image work: base64 and PNG decode"
IMAGE_SEAMS = "image work: split, seam blur, merge"
IMAGE_ENCODE = "image work: PNG encode"
FILES_FINAL = "files: final image and sidecar"
FILES_SOURCE = "files: SD image and sd.json"
FILES_WRITTEN = "files: intermediates written"
FILES_READ = "files: intermediates read, work folder removed"
SD_ANSWER = "SD answer: HTTP, JSON, checks"
POOL = "SD server pool (Redis)"
STORE = "status store (Redis)"
FETCH = "Dramatiq: fetching and idle polling"
ACK = "Dramatiq: acks"
ENQUEUE = "Dramatiq: enqueueing the next step"
MESSAGE = "Dramatiq: per-message handling, middleware"
LOGS = "logging"
STEPS = "steps: other Python (records, paths, hashing, sidecar)"
#: Every category, in the order the runner prints them (image work first: the baseline's part).
CATEGORIES = (
    IMAGE_DECODE,
    IMAGE_SEAMS,
    IMAGE_ENCODE,
    FILES_FINAL,
    FILES_SOURCE,
    FILES_WRITTEN,
    FILES_READ,
    SD_ANSWER,
    POOL,
    STORE,
    FETCH,
    ACK,
    ENQUEUE,
    MESSAGE,
    LOGS,
    STEPS,
)

_totals: dict[str, float] = {}
_totals_lock = threading.Lock()
_local = threading.local()


def _stack() -> list[float]:
    stack: list[float] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _add(category: str, seconds: float) -> None:
    with _totals_lock:
        _totals[category] = _totals.get(category, 0.0) + seconds


def _timed(category: str | Callable[[], str], fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` adding its exclusive thread CPU time to ``category`` (or to what ``category()`` names)."""
    if getattr(fn, "_sdpipe_timed", False):
        return fn

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        stack = _stack()
        stack.append(0.0)
        started = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.thread_time() - started
            nested = stack.pop()
            if stack:
                stack[-1] += spent
            _add(category if isinstance(category, str) else category(), spent - nested)

    timed._sdpipe_timed = True  # type: ignore[attr-defined]
    return timed


class _TimedContext:
    """A context manager whose ``__enter__`` and ``__exit__`` count as calls of ``category``."""

    def __init__(self, category: str, inner: Any) -> None:
        self._enter = _timed(category, inner.__enter__)
        self._exit = _timed(category, inner.__exit__)

    def __enter__(self) -> Any:
        return self._enter()

    def __exit__(self, *exc: Any) -> Any:
        return self._exit(*exc)


def _timed_context(category: str, factory: Callable[..., Any]) -> Callable[..., _TimedContext]:
    @functools.wraps(factory)
    def make(*args: Any, **kwargs: Any) -> _TimedContext:
        return _TimedContext(category, factory(*args, **kwargs))

    return make


@contextmanager
def _in_step(step: str) -> Iterator[None]:
    previous = getattr(_local, "step", None)
    _local.step = step
    try:
        yield
    finally:
        _local.step = previous


def _step_files() -> str:
    """Which files category a write belongs to, by the step that makes it."""
    step = getattr(_local, "step", None)
    return {"generate": FILES_SOURCE, "split": FILES_WRITTEN, "seam_blur": FILES_WRITTEN}.get(step or "", FILES_FINAL)


def _patch_methods(cls: type, category: str, *, skip: tuple[str, ...] = ()) -> None:
    for name, value in list(vars(cls).items()):
        if name.startswith("__") or name in skip or isinstance(value, (staticmethod, classmethod, property)):
            continue
        if callable(value):
            setattr(cls, name, _timed(category, value))


def install() -> None:
    """Wrap the functions of every category (idempotent)."""
    import dramatiq.broker
    import dramatiq.worker
    import pybase64
    from dramatiq.brokers import redis as dramatiq_redis

    from actors.redis_broker import WakingConsumer
    from pipeline.images import codec, png, seams
    from pipeline.jobs import arrays, steps
    from pipeline.jobs import files as storage
    from pipeline.sd import response as sd_response
    from pipeline.sd.client import SDClient
    from pipeline.sd.pool.pool import SDPool
    from pipeline.sd.pool.redis_state import RedisPoolState
    from pipeline.storage import local as local_storage
    from pipeline.store.redis import RedisStatusStore

    _replace(base64, "b64decode", IMAGE_DECODE)
    _replace(pybase64, "b64decode", IMAGE_DECODE)  # the SD answer's decoder (and the direct loop's)
    for module in (codec, steps):  # steps imported them by name: replace them there too
        _put(module, "decode_image", _timed(IMAGE_DECODE, codec.decode_image))
        _put(module, "encode_image", _timed(IMAGE_ENCODE, codec.encode_image))
    _replace(png, "_deflate_band", IMAGE_ENCODE)  # also in the encoder's pool threads (large images)
    for name in ("split", "seam_blur_tile", "merge"):
        _replace(seams, name, IMAGE_SEAMS)
    # Every local write of a step goes through pipeline.storage.local.atomic_write_bytes (LocalStorage.write).
    _put(local_storage, "atomic_write_bytes", _timed(_step_files, local_storage.atomic_write_bytes))
    for module in (arrays, steps):  # the arrays module (pipeline.jobs.arrays) and the step code's name for it
        _put(module, "load_arrays", _timed(FILES_READ, arrays.load_arrays))
    _replace(storage.JobFiles, "remove_work_dir", FILES_READ)
    for name, fn in list(steps._STEPS.items()):
        steps._STEPS[name] = _timed(STEPS, functools.partial(_run_in_step, name, fn))
    # The actors import these from the step module each time a step runs: replaced there, they are timed.
    _put(steps, "run_step", _timed(STEPS, steps.run_step))
    _put(steps, "sd_slot", _timed_context(POOL, steps.sd_slot))
    _patch_methods(SDPool, POOL, skip=("slot",))
    _replace(SDClient, "txt2img", SD_ANSWER)
    _replace(sd_response, "build_result", SD_ANSWER)
    _patch_methods(RedisPoolState, POOL)
    _patch_methods(RedisStatusStore, STORE)
    consumer = getattr(dramatiq_redis, "_RedisConsumer", None)
    if consumer is not None:  # private in Dramatiq: without it, fetching lands in the remainder
        _replace(consumer, "__next__", FETCH)
    # sdpipe's consumer replaces Dramatiq's __next__ (it waits on a wake list instead of polling)
    _replace(WakingConsumer, "__next__", FETCH)
    _replace(dramatiq.worker.ConsumerThread, "post_process_message", ACK)
    _replace(dramatiq_redis.RedisBroker, "enqueue", ENQUEUE)
    for name in ("emit_before", "emit_after"):
        _replace(dramatiq.broker.Broker, name, MESSAGE)
    _replace(dramatiq.worker.WorkerThread, "process_message", MESSAGE)
    _replace(logging.Logger, "handle", LOGS)


def _replace(owner: Any, name: str, category: str) -> None:
    _put(owner, name, _timed(category, getattr(owner, name)))


def _put(owner: Any, name: str, value: Any) -> None:
    """Monkeypatch ``owner.name`` (untyped on purpose: this replaces functions at run time)."""
    setattr(owner, name, value)


def _run_in_step(step: str, fn: Callable[..., Any], *args: Any) -> Any:
    with _in_step(step):
        return fn(*args)


def snapshot() -> dict[str, float]:
    """CPU seconds per category so far, in this process."""
    with _totals_lock:
        return dict(_totals)


def start_dumping(folder: Path, *, interval_s: float = 0.5) -> None:
    """In this process, write :func:`snapshot` to ``folder/<pid>.json`` every ``interval_s``."""
    path = folder / f"{os.getpid()}.json"

    def dump() -> None:
        while True:
            time.sleep(interval_s)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(snapshot()))
            os.replace(tmp, path)

    threading.Thread(target=dump, name="sdpipe-bench-breakdown", daemon=True).start()


def read_dir(folder: Path) -> dict[str, float]:
    """The categories summed over every process that wrote to ``folder``."""
    totals: dict[str, float] = {}
    for path in folder.glob("*.json"):
        for category, seconds in json.loads(path.read_text()).items():
            totals[category] = totals.get(category, 0.0) + seconds
    return totals
