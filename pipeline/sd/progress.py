"""Sampling progress of a running SD call: a thread polls the server while the call blocks.

A1111 and Forge answer ``GET /sdapi/v1/progress`` while a txt2img runs (it takes no lock). The
worker that holds the server's slot asks it every ``PROGRESS_POLL_S`` and hands each new reading
(step i of N, ETA; the preview image when asked for) to a callback, which publishes ``job.progress``.
A reading that is the same as the last one is not handed on, and a failing poll is only logged:
progress is a courtesy, never a reason for the call to fail.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.errors import PipelineError
from pipeline.sd.client import SDClient, sd_task_id

__all__ = ["ProgressCallback", "watch_progress"]

logger = logging.getLogger(__name__)

#: Receives each new reading: ``{"step", "steps", "progress", "eta_s"}`` and maybe ``"image"``.
ProgressCallback = Callable[[dict[str, Any]], None]


@contextmanager
def watch_progress(
    client: SDClient, job_id: str, on_progress: ProgressCallback | None, *, every_s: float, image: bool = False
) -> Iterator[None]:
    """Poll ``client``'s server for ``job_id``'s task every ``every_s`` while the block runs.

    Nothing is started when ``on_progress`` is None or ``every_s`` is 0.
    """
    if on_progress is None or every_s <= 0:
        yield
        return
    stop = threading.Event()
    task_id = sd_task_id(job_id)

    def poll() -> None:
        last: tuple[int, int] | None = None
        failures = 0
        while not stop.wait(every_s):
            try:
                reading = client.task_progress(task_id, image=image)
            except PipelineError as exc:
                failures += 1
                if failures == 1:
                    logger.debug("job %s: progress not available (%s)", job_id, exc)
                continue
            if reading is None or stop.is_set():
                continue
            key = (reading["step"], reading["steps"])
            if key == last and "image" not in reading:
                continue
            last = key
            try:
                on_progress(reading)
            except Exception:  # a publishing problem must never reach the SD call
                logger.warning("job %s: could not publish progress", job_id, exc_info=True)

    thread = threading.Thread(target=poll, name=f"sdpipe-progress-{job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 1)
