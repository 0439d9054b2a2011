"""The SD servers of the pool, parsed from ``SD_API_URL``.

``SD_API_URL`` is one URL or a comma-separated list. Each entry may carry its own credentials
(``http://user:pass@gpu2:7860``) and a concurrency cap as a ``;max=N`` suffix (default 1: an
AUTOMATIC1111 server renders one job at a time and queues the rest on a lock, holding their
connections, so more than one request in flight only adds waiting). ``mock://`` entries are the
built-in mock, one server per distinct URL.

A server's *key* is its URL without credentials: the name under which its slots and health live
in the pool state, and what sidecars, the status store, logs and metrics show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.errors import ConfigError
from pipeline.settings import DEFAULT_MAX_SLOTS, Settings, split_sd_entry, strip_credentials

__all__ = ["Backend", "backend_key", "backends_for", "parse_backends"]


@dataclass(frozen=True)
class Backend:
    """One SD server of the pool.

    Attributes:
        url: the entry's URL as configured, credentials included (never log it; use ``key``).
        key: the URL without credentials: its identity in the pool state, sidecars and metrics.
        max_slots: how many requests it may have in flight at once, across all workers.
    """

    url: str
    key: str
    max_slots: int = DEFAULT_MAX_SLOTS

    def __repr__(self) -> str:
        return f"Backend({self.key!r}, max_slots={self.max_slots})"


def backend_key(url: str) -> str:
    """A server's identity: its URL without credentials or trailing slash."""
    return url if url.startswith("mock://") else strip_credentials(url).rstrip("/")


def _split(entry: str) -> tuple[str, int]:
    try:
        return split_sd_entry(entry)
    except ValueError as exc:
        raise ConfigError(str(exc), field="SD_API_URL") from exc


def parse_backends(sd_api_url: str) -> list[Backend]:
    """The servers named by ``sd_api_url``, in order.

    Raises:
        ConfigError: an entry is empty, has an option other than ``;max=N``, its ``max`` is malformed,
            or two entries name one server.
    """
    backends: list[Backend] = []
    seen: set[str] = set()
    for entry in sd_api_url.split(","):
        if not entry.strip():
            raise ConfigError("SD_API_URL has an empty entry", field="SD_API_URL", value="")
        url, max_slots = _split(entry)
        key = backend_key(url)
        if key in seen:
            raise ConfigError(f"SD_API_URL names {key!r} twice", field="SD_API_URL", value=key, limit=1)
        seen.add(key)
        backends.append(Backend(url=url, key=key, max_slots=max_slots))
    return backends


def backends_for(settings: Settings, pinned: str | None = None) -> Sequence[Backend]:
    """The servers a job may use: the pool, or only ``pinned`` (a job sent with ``--sd-url``).

    A pinned URL that is in the pool keeps that entry's credentials and cap; any other is a pool
    of its own with one slot (credentials come from ``SD_API_AUTH``, never from the message).
    """
    pool = parse_backends(settings.sd_api_url)
    if pinned is None:
        return pool
    url, max_slots = _split(pinned)
    key = backend_key(url)
    for backend in pool:
        if backend.key == key:
            return [backend]
    return [Backend(url=url, key=key, max_slots=max_slots)]
