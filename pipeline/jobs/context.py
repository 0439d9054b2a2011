"""What a step runs with: :class:`StepContext` (settings, the status store, the SD clients and pool).

Apart from the steps (:mod:`pipeline.jobs.steps`) so that whoever only sends work, as the CLI in Redis
mode does when it declares the actors to enqueue a job, builds a context without importing the
steps' image code (numpy, PIL): ``sdpipe generate --no-wait`` starts in half the time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.events.hub import EventHub
from pipeline.jobs.control import QueueControl
from pipeline.sd.client import SDClient
from pipeline.sd.pool.pool import PoolObserver, SDPool, open_pool_state
from pipeline.settings import Settings
from pipeline.storage.base import Storage, open_storage
from pipeline.store.base import StatusStore

__all__ = ["StepContext"]


@dataclass
class StepContext:
    """What a step needs: settings, the status store and (lazily) one SD client shared by threads."""

    settings: Settings
    store: StatusStore
    clock: Callable[[], float] = time.time
    sd_client_factory: Callable[[Settings], SDClient] = SDClient
    pool_observer: PoolObserver | None = None
    #: Where step, progress and end events go (None: nowhere, e.g. in unit tests of one step).
    events: EventHub | None = None
    #: Pause state (None: never paused).
    control: QueueControl | None = None
    _clients: dict[str | None, SDClient] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _pool: SDPool | None = field(default=None, init=False, repr=False)

    @property
    def pool(self) -> SDPool:
        """The SD server pool (opened on first use): slots, health and dispatch of txt2img calls."""
        with self._lock:
            if self._pool is None:
                self._pool = SDPool(
                    self.settings, open_pool_state(self.settings), self.sd_client, observer=self.pool_observer
                )
            return self._pool

    def storage(self, location: str | None = None) -> Storage:
        """The storage at ``location`` (a job's ``output_dir``: a folder or ``s3://...``; None: this
        process's OUTPUT_URL or OUTPUT_DIR), opened once per process."""
        return open_storage(location or self.settings.output_location, self.settings)

    def sd_client(self, base_url: str | None = None) -> SDClient:
        """The shared client for ``base_url`` (None: ``SD_API_URL``); httpx clients are thread-safe."""
        with self._lock:
            client = self._clients.get(base_url)
            if client is None:
                settings = self.settings
                if base_url is not None:
                    settings = settings.model_copy(update={"sd_api_url": base_url})
                client = self._clients[base_url] = self.sd_client_factory(settings)
            return client

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        if self.events is not None:
            self.events.close()
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
