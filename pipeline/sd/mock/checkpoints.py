"""The mock's checkpoints and settings: which model is loaded, ``/options``, and A1111's override rules.

A1111 v1.10 (``modules/processing.py`` ``process_images``, ``modules/api/api.py`` ``set_config``):

- ``override_settings`` are applied one by one through ``opts.set``, so an unknown key is a 500 ``KeyError``
  (keys before it are applied, then restored). A ``sd_model_checkpoint`` naming no checkpoint is dropped
  silently and the selected model is (re)loaded instead.
- With ``override_settings_restore_afterwards`` (the default) the settings are put back afterwards but
  the overriding model stays loaded: the next request without the override reloads the selected one,
  paying the load time again. Without it, the override stays in force.
- ``POST /options`` with an unknown checkpoint is a 500 ``RuntimeError`` ``model '...' not found``; a new
  checkpoint is loaded at once, after the generation in progress (the load waits on the queue lock).

Each load takes ``load_ms`` and is counted (:attr:`Checkpoints.load_count`, :attr:`Checkpoints.load_log`),
so tests can assert how many loads a run caused.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.sd.mock import catalog

__all__ = ["LOAD_HISTORY", "Checkpoints"]

#: Model loads remembered by ``/mock/stats`` (``model_load_log``), the most recent ones.
LOAD_HISTORY = 1000


class Checkpoints:
    """Checkpoints listed and loaded, and the ``/options`` dict; mutations happen under ``lock``.

    Args:
        files: checkpoint file names (the first one is loaded at start); may be empty.
        load_ms: how long loading a checkpoint takes, in milliseconds.
        lock: the server's state lock.
    """

    def __init__(self, files: tuple[str, ...], load_ms: int, lock: threading.Lock) -> None:
        self.models = [catalog.model_entry(name) for name in files]
        self.options: dict[str, Any] = catalog.default_options(self.models[0] if self.models else None)
        self.load_ms = load_ms
        self.loaded: dict[str, Any] | None = self.models[0] if self.models else None
        self.load_count = 0
        self.load_log: deque[dict[str, Any]] = deque(maxlen=LOAD_HISTORY)
        self._lock = lock

    def find(self, name: object) -> dict[str, Any] | None:
        """The checkpoint an alias names (``checkpoint_aliases``), or None."""
        return catalog.find_model(self.models, name if isinstance(name, str) else None)

    def selected(self) -> dict[str, Any]:
        """``select_checkpoint``: the one ``sd_model_checkpoint`` names, else the first listed."""
        with self._lock:
            current = self.options.get("sd_model_checkpoint")
        return self.find(current) or self.models[0]

    def ensure_loaded(self, model: dict[str, Any], *, write_option: bool = True) -> bool:
        """``reload_model_weights``: load ``model`` unless it is loaded (taking ``load_ms``); True if it loaded.

        ``write_option`` false is A1111's ``SkipWritingToConfig`` (refiner and hires checkpoints): the
        load does not change ``sd_model_checkpoint``.
        """
        with self._lock:
            if self.loaded is not None and self.loaded["title"] == model["title"]:
                return False
        time.sleep(self.load_ms / 1000)
        with self._lock:
            self.loaded = model
            self.load_count += 1
            self.load_log.append({"model": model["title"], "at": time.time()})
            self.options["sd_checkpoint_hash"] = model["sha256"]
            if write_option:
                self.options["sd_model_checkpoint"] = model["title"]
        return True

    @contextmanager
    def overrides(self, overrides: dict[str, Any], *, restore: bool) -> Iterator[None]:
        """Apply a request's ``override_settings`` for the duration of the block, as ``process_images`` does.

        Raises:
            KeyError: a key that is no setting (A1111's ``opts.set``), before the block runs.
        """
        overrides = dict(overrides)
        with self._lock:
            stored = {key: self.options[key] for key in overrides if key in self.options}
        try:
            if self.find(overrides.get("sd_model_checkpoint")) is None:
                overrides.pop("sd_model_checkpoint", None)
                self.ensure_loaded(self.selected())
            for key, value in overrides.items():
                with self._lock:
                    if key not in self.options:
                        raise KeyError(key)
                    self.options[key] = value
                if key == "sd_model_checkpoint":
                    self.ensure_loaded(self.find(value) or self.selected())
            yield
        finally:
            if restore:
                with self._lock:
                    self.options.update(stored)

    def set_options(self, changes: dict[str, Any], queued: Callable[[Callable[[], object]], object]) -> None:
        """``POST /options``: set each key; a new checkpoint is loaded through ``queued`` (the queue lock).

        Raises:
            RuntimeError: ``sd_model_checkpoint`` names no checkpoint (``model '...' not found``).
            KeyError: a key that is no setting (the keys before it are set).
        """
        checkpoint = changes.get("sd_model_checkpoint")
        if checkpoint is not None and self.find(checkpoint) is None:
            raise RuntimeError(f"model {checkpoint!r} not found")
        for key, value in changes.items():
            with self._lock:
                if key not in self.options:
                    raise KeyError(key)
                if self.options[key] == value:
                    continue  # opts.set: no change, no onchange callback
                self.options[key] = value
            if key == "sd_model_checkpoint":
                model = self.find(value) or self.selected()
                queued(lambda model=model: self.ensure_loaded(model))  # type: ignore[misc]

    def reset_counts(self) -> None:
        """Forget the loads counted so far (``/mock/reset``); call with the lock held."""
        self.load_count = 0
        self.load_log.clear()
