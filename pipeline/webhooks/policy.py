"""When a webhook delivery is retried, as pure functions (no clock, no I/O: the tests feed them times).

- 2xx: delivered.
- Timeouts, connection errors, 408, 429 and 5xx: retried with exponential backoff (``min_s``,
  doubling per attempt, capped at ``max_s``, with up to 10% jitter), or after ``Retry-After`` when
  the receiver sends one (seconds or an HTTP date), within the cap of the window.
- Any other 4xx (and 3xx: redirects are not followed, a receiver's URL is given exactly): given up.
- Given up too when the next attempt would start more than ``window_s`` after the event.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

__all__ = ["Decision", "RetryPolicy", "parse_retry_after", "retryable"]

Outcome = Literal["delivered", "retry", "give_up"]


@dataclass(frozen=True)
class Decision:
    """What to do after an attempt: done, try again in ``delay_s``, or give up (``reason``)."""

    outcome: Outcome
    delay_s: float = 0.0
    reason: str = ""


def retryable(status: int | None) -> bool:
    """Whether an answer (None: no answer, a timeout or a connection error) is worth another attempt."""
    return status is None or status in (408, 429) or status >= 500


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff bounds and the total window, in seconds."""

    min_s: float
    max_s: float
    window_s: float

    def backoff_s(self, attempts: int, *, jitter: float = 0.0) -> float:
        """The pause after the ``attempts``-th failed attempt: min, 2 min, 4 min... capped; ``jitter`` in [0, 1)
        lengthens it by up to 10%."""
        base = min(self.min_s * 2.0 ** max(attempts - 1, 0), self.max_s)
        return base * (1 + 0.1 * jitter)

    def decide(
        self,
        status: int | None,
        *,
        attempts: int,
        first_at: float,
        now: float,
        retry_after_s: float | None = None,
        jitter: float | None = None,
    ) -> Decision:
        """What follows the ``attempts``-th attempt, answered ``status`` (None: no answer) at ``now``,
        of a delivery whose event happened at ``first_at``."""
        if status is not None and 200 <= status < 300:
            return Decision("delivered")
        if not retryable(status):
            return Decision("give_up", reason=f"the receiver answered {status}: not retried")
        spread = random.random() if jitter is None else jitter
        delay = retry_after_s if retry_after_s is not None else self.backoff_s(attempts, jitter=spread)
        delay = min(delay, self.max_s)
        if now + delay - first_at > self.window_s:
            return Decision("give_up", reason=f"still failing after {self.window_s:g} s (WEBHOOK_RETRY_WINDOW_S)")
        return Decision("retry", delay_s=delay)
