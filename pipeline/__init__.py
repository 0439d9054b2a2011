"""sdpipe's pure core. It never imports Dramatiq, Typer, Rich or FastAPI: ``actors`` wraps it in
actors, ``cli`` (with ``cli.api``) parses, calls it and renders.

Its concepts, one entry each::

    settings   the one typed Settings, read once by the CLI and passed down
    connections the one factory of Redis clients (broker, status store, SD pool) and their options
    errors     the error tree; transient or permanent is a property of the type
    models     what travels between the parts: requests, job specs, job records, SD results
    sd/        the SD servers: client, response reading, backends; pool/ (slots, health), mock/ (the mock server)
    images/    codec, PNG encoder, A1111 infotext, split / seam-blur / merge
    jobs/      planning requests into job specs, the steps, a job's files, uploads
    prompts/   prompt templates (variants, wildcards) and parameter sweeps
    batches/   batch files and formats, manifests and resume, cron schedules
    store/     the status store: Redis (shared) or SQLite (embedded)
    upscale/   tiled upscaling: the request, tile planning and blend weights, the first pass, tiles, merge
    events/    the event stream: every job's steps, progress and end (Redis Stream or SQLite), waiting on it
    webhooks/  signed webhook deliveries: URLs, signing, the retry rule, delivery state

Callers import a name from the subpackage or module that owns it; importing this package loads
nothing else (``import pipeline.errors`` costs no numpy, PIL, httpx or Redis client).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "batches",
    "connections",
    "errors",
    "events",
    "images",
    "jobs",
    "models",
    "prompts",
    "sd",
    "settings",
    "store",
    "upscale",
    "webhooks",
]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
