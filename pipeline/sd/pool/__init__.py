"""The SD server pool: which server renders a job, how many requests each gets, and their health.

- :mod:`~pipeline.sd.pool.pool`: :class:`SDPool`, the leases, retries and benching around one SD call.
- :mod:`~pipeline.sd.pool.state`: the shared state's interface and its in-memory implementation
  (embedded mode: one process by design).
- :mod:`~pipeline.sd.pool.redis_state`: the same state in Redis, shared by workers on every machine.
- :mod:`~pipeline.sd.pool.affinity`: which server a job that names a checkpoint should take.
- :mod:`~pipeline.sd.pool.checkpoints`: the pool's checkpoint half: claims, switches, what each server has loaded.
- :mod:`~pipeline.sd.pool.report`: each server as front ends show it (health in words, counters).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.sd.pool.affinity import Choice, checkpoint_key, choose, grouped_by_checkpoint, wanted
    from pipeline.sd.pool.pool import (
        SLOT_WAIT_S,
        PoolObserver,
        SDPool,
        is_out_of_memory,
        open_pool_state,
    )
    from pipeline.sd.pool.redis_state import (
        POOL_PREFIX,
        RedisPoolState,
    )
    from pipeline.sd.pool.report import backend_row, health_text
    from pipeline.sd.pool.state import (
        BackendStatus,
        HealthPolicy,
        MemoryPoolState,
        PoolState,
    )

__all__ = [
    "Choice",
    "checkpoint_key",
    "choose",
    "grouped_by_checkpoint",
    "wanted",
    "SLOT_WAIT_S",
    "PoolObserver",
    "SDPool",
    "is_out_of_memory",
    "open_pool_state",
    "BackendStatus",
    "HealthPolicy",
    "MemoryPoolState",
    "PoolState",
    "POOL_PREFIX",
    "RedisPoolState",
    "backend_row",
    "health_text",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".affinity": ["Choice", "checkpoint_key", "choose", "grouped_by_checkpoint", "wanted"],
        ".pool": ["SLOT_WAIT_S", "PoolObserver", "SDPool", "is_out_of_memory", "open_pool_state"],
        ".state": ["BackendStatus", "HealthPolicy", "MemoryPoolState", "PoolState"],
        ".redis_state": ["POOL_PREFIX", "RedisPoolState"],
        ".report": ["backend_row", "health_text"],
    },
)
