"""Pause and resume (the whole queue or one batch), and idempotency keys of submissions.

**Pause.** A paused queue or batch starts no new SD call: a generation (or upscale tile) that finds
its job paused goes back to the queue without spending a retry, and one already on a GPU finishes.
The image steps after it go on. State: ``paused`` (the whole queue) and the set ``paused-batches``
in the shared key-value store.

**Idempotency.** A client that retries a submission after a timeout sends the same key: the first
request claims ``idem:<scope>:<key>`` with the hash of its body and the batch id it will create; a
later request with the same key and the same body gets that batch back (no second job, no second SD
call), one with a different body is refused (:class:`~pipeline.errors.IdempotencyConflict`). Keys
expire after ``IDEMPOTENCY_TTL_S``. A submission that fails gives its key back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from pipeline.errors import IdempotencyConflict, InputError
from pipeline.store.keyvalue import KeyValue

__all__ = ["MAX_IDEMPOTENCY_KEY_CHARS", "Claim", "Idempotency", "QueueControl", "body_hash"]

logger = logging.getLogger(__name__)

#: Longest idempotency key accepted (Stripe's limit; a UUID is 36).
MAX_IDEMPOTENCY_KEY_CHARS = 255
_PAUSED = "paused"
_PAUSED_BATCHES = "paused-batches"


class QueueControl:
    """Pause state of the queue and of batches, shared by every process."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    def pause(self, batch_id: str | None = None) -> None:
        """Pause the whole queue (``batch_id`` None) or one batch."""
        if batch_id is None:
            self._kv.put(_PAUSED, "1")
        else:
            self._kv.add_member(_PAUSED_BATCHES, batch_id)
        logger.info("paused %s", f"batch {batch_id}" if batch_id else "the queue")

    def resume(self, batch_id: str | None = None) -> None:
        """Resume the whole queue (``batch_id`` None: batches paused on their own stay paused) or one batch."""
        if batch_id is None:
            self._kv.delete(_PAUSED)
        else:
            self._kv.remove_member(_PAUSED_BATCHES, batch_id)
        logger.info("resumed %s", f"batch {batch_id}" if batch_id else "the queue")

    def queue_paused(self) -> bool:
        return self._kv.get(_PAUSED) is not None

    def paused_batches(self) -> list[str]:
        return self._kv.members(_PAUSED_BATCHES)

    def is_paused(self, batch_id: str | None) -> bool:
        """Whether a job of ``batch_id`` may not start an SD call now (one round trip in Redis mode)."""
        if batch_id is None:
            return self.queue_paused()
        queue, batch = self._kv.get_with_member(_PAUSED, _PAUSED_BATCHES, batch_id)
        return queue is not None or batch


def body_hash(body: Any) -> str:
    """The sha256 of ``body`` as canonical JSON (sorted keys): two equal requests hash alike."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Claim:
    """A claimed key: :meth:`release` it when the submission fails, so the key can be used again."""

    def __init__(self, idempotency: Idempotency, name: str) -> None:
        self._idempotency = idempotency
        self._name = name

    def release(self) -> None:
        self._idempotency.kv.delete(self._name)


class Idempotency:
    """Idempotency keys in the shared key-value store, remembered ``ttl_s``."""

    def __init__(self, kv: KeyValue, *, ttl_s: float) -> None:
        self.kv = kv
        self.ttl_s = ttl_s

    def claim(self, scope: str, key: str, digest: str, new_id: str) -> tuple[str, Claim | None]:
        """Claim ``key`` for a request of body hash ``digest`` that will create ``new_id``.

        Returns ``(new_id, claim)`` for a first use, or ``(original id, None)`` for a repeat of the
        same request.

        Raises:
            InputError: the key is empty or too long.
            IdempotencyConflict: the key was used with another request (another ``scope`` or body).
        """
        if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
            raise InputError(
                f"an idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters",
                field="Idempotency-Key",
                limit=MAX_IDEMPOTENCY_KEY_CHARS,
            )
        name = f"idem:{key}"
        record = json.dumps({"scope": scope, "hash": digest, "id": new_id})
        existing = self.kv.put_if_absent(name, record, ttl_s=self.ttl_s)
        if existing is None:
            return new_id, Claim(self, name)
        found = json.loads(existing)
        if found.get("scope") != scope or found.get("hash") != digest:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was used with a different request", field="Idempotency-Key", value=key
            )
        logger.info("idempotency key %r: a repeat of %s %s", key, scope, found["id"])
        return str(found["id"]), None
