"""The SD servers sdpipe talks to: who they are, the client that calls them, the pool that shares them.

- :mod:`~pipeline.sd.backends`: the servers named by ``SD_API_URL`` (credentials, slots per server).
- :mod:`~pipeline.sd.client`: a synchronous client of ``/sdapi/v1``; every failure leaves it as a
  :mod:`pipeline.errors` type, transient or permanent by type.
- :mod:`~pipeline.sd.catalog`: a server's checkpoints, samplers, schedulers and request fields, checked
  before enqueue.
- :mod:`~pipeline.sd.response`: reading answers (error bodies of A1111, Forge and SD.Next, images, ``info``).
- :mod:`pipeline.sd.pool`: slots, health and the choice of server, shared by every worker.
- :mod:`pipeline.sd.mock`: the mock A1111 server (``sdpipe mock-sd``, ``mock://``); nothing outside it
  imports it except ``sdpipe mock-sd`` (:mod:`cli.worker`) and, lazily, where ``mock://`` is resolved
  (the client and the settings' URL check): a contract in pyproject.toml's ``[tool.importlinter]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.sd.backends import (
        Backend,
        backend_key,
        backends_for,
        parse_backends,
    )
    from pipeline.sd.catalog import ServerCatalog, open_catalog
    from pipeline.sd.client import (
        HEALTH_TIMEOUT_S,
        SDClient,
        sd_task_id,
    )

__all__ = [
    "Backend",
    "backend_key",
    "backends_for",
    "parse_backends",
    "ServerCatalog",
    "open_catalog",
    "HEALTH_TIMEOUT_S",
    "SDClient",
    "sd_task_id",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".backends": ["Backend", "backend_key", "backends_for", "parse_backends"],
        ".catalog": ["ServerCatalog", "open_catalog"],
        ".client": ["HEALTH_TIMEOUT_S", "SDClient", "sd_task_id"],
    },
)
