"""The status store: where every job's state, attempts, errors, timings and result live.

:func:`open_store` picks the implementation from the settings: Redis when Redis is configured
(every worker on every machine shares it), else a SQLite file under ``OUTPUT_DIR``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports
from pipeline.errors import JobNotFound, StoreUnavailable
from pipeline.store.base import DEFAULT_LIST_LIMIT, StatusStore

if TYPE_CHECKING:
    from pipeline.settings import Settings
    from pipeline.store.redis import RedisStatusStore
    from pipeline.store.sqlite import SqliteStatusStore

__all__ = [
    # Interface
    "DEFAULT_LIST_LIMIT",
    "StatusStore",
    # Implementations
    "RedisStatusStore",
    "SqliteStatusStore",
    # Factory
    "open_store",
]

# The two implementations load on first use: a CLI in embedded mode never imports the Redis client.
__getattr__, __dir__ = lazy_exports(__name__, {".redis": ["RedisStatusStore"], ".sqlite": ["SqliteStatusStore"]})

#: Where embedded mode keeps its state, relative to ``OUTPUT_DIR``.
EMBEDDED_STORE_PATH = ".sdpipe/status.sqlite3"


def open_store(settings: Settings, *, create: bool = True) -> StatusStore:
    """The status store ``settings`` describe: Redis in Redis mode, else ``OUTPUT_DIR/.sdpipe/status.sqlite3``.

    The Redis client connects lazily; call :meth:`StatusStore.ping` to check it answers. With
    ``create=False`` (readers such as ``sdpipe status``) a missing SQLite file is not created.

    Raises:
        ConfigError: the Redis URL is malformed.
        JobNotFound: ``create=False`` and there is no embedded store under OUTPUT_DIR yet.
        StoreUnavailable: the SQLite file cannot be created or opened.
    """
    if settings.redis_mode:
        from pipeline.connections import RedisSettings
        from pipeline.store.redis import RedisStatusStore

        return RedisStatusStore.open(RedisSettings.from_settings(settings))
    path = settings.output_dir / EMBEDDED_STORE_PATH
    if not create and not path.exists():
        raise JobNotFound(
            f"no sdpipe jobs under {settings.output_dir.absolute()}",
            field="OUTPUT_DIR",
            value=str(settings.output_dir.absolute()),
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot create {path.parent}: {exc.strerror or exc}", field="OUTPUT_DIR", value=str(path.parent)
        ) from exc
    from pipeline.store.sqlite import SqliteStatusStore

    return SqliteStatusStore(path)
