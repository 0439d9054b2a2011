"""sdpipe's error hierarchy for the pure core.

Whether an error is worth retrying is a property of its type (:attr:`PipelineError.transient`),
so the actors never inspect messages or status codes::

    PipelineError
    ├── ConfigError               bad settings (permanent)
    ├── InputError                bad user input: prompt, size, grid, file (permanent)
    ├── ImageError                an image that cannot be decoded or is too large (permanent)
    ├── JobNotFound               no job (or batch) with that id in the status store (permanent)
    │   └── AmbiguousId           a short id that several jobs (or batches) start with
    ├── ScheduleNotFound          no schedule with that name (permanent)
    ├── JobCancelled              the job was cancelled while a step ran (permanent)
    ├── StoreUnavailable          the status store (Redis) cannot be reached (transient)
    ├── QueueFull                 more jobs queued than MAX_QUEUE_DEPTH allows (permanent: refused)
    ├── NoFreeSlot                every SD server the job may use is busy (transient; waits, costs no retry)
    └── SDError                   anything the SD server did
        ├── SDTransientError      worth retrying (transient)
        │   ├── SDUnavailable     connection refused / reset / DNS
        │   ├── SDTimeout         connect or read timeout
        │   └── SDServerError     5xx (OutOfMemoryError, NansException, ...), 429, 503
        └── SDPermanentError      retrying cannot help (permanent)
            ├── SDRequestRejected 422 and other 4xx
            ├── SDAuthError       401 (hint: SD_API_AUTH)
            ├── SDNotFound        404 (hint: start the server with --api)
            └── SDBadImage        a 200 answer whose image does not decode
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AmbiguousId",
    "PERMANENT_ERRORS",
    "ConfigError",
    "ImageError",
    "InputError",
    "JobCancelled",
    "JobNotFound",
    "NoFreeSlot",
    "PipelineError",
    "QueueFull",
    "SDAuthError",
    "SDBadImage",
    "SDError",
    "SDNotFound",
    "SDPermanentError",
    "SDRequestRejected",
    "SDServerError",
    "SDTimeout",
    "SDTransientError",
    "SDUnavailable",
    "ScheduleNotFound",
    "StoreUnavailable",
]


class PipelineError(Exception):
    """Base class of every error sdpipe's core raises on purpose.

    Args:
        message: one line saying what went wrong.
        hint: one short sentence saying how to fix it, shown after the message.
        field: the setting, option or request field at fault (``"seed"``, ``"SD_API_URL"``).
        value: the value given (never a secret).
        limit: the bound it broke, when there is one.
        expected: what would have been accepted (``"an integer"``, ``"one of: png, jpeg, webp"``).
    """

    #: Whether retrying the same operation later may succeed.
    transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        field: str | None = None,
        value: object = None,
        limit: object = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.field = field
        self.value = value
        self.limit = limit
        self.expected = expected

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(PipelineError):
    """A setting is malformed or inconsistent."""


class InputError(PipelineError):
    """User input (prompt, size, grid, file, name) is invalid."""


class ImageError(PipelineError):
    """An image cannot be decoded, is truncated, or exceeds the size limits."""


class JobNotFound(PipelineError):
    """The status store has no job with that id."""


class AmbiguousId(JobNotFound):
    """A short id that several jobs (or batches) start with: not one of them is meant for sure."""


class ScheduleNotFound(PipelineError):
    """The status store has no schedule with that name."""


class JobCancelled(PipelineError):
    """The job was cancelled; its remaining steps do not run."""


class StoreUnavailable(PipelineError):
    """The status store (Redis) cannot be reached."""

    transient = True


class QueueFull(PipelineError):
    """A submission was refused: the queues hold more jobs than ``MAX_QUEUE_DEPTH`` allows."""


class NoFreeSlot(PipelineError):
    """No SD server the job may use has a free slot: all are busy.

    Not a failure of the job: the generate message goes back to the queue without spending a retry.
    """

    transient = True


class SDError(PipelineError):
    """The SD server failed or refused a request.

    Args:
        message: what went wrong, including the server's own message when it sent one.
        url: the server URL, without credentials.
        status_code: the HTTP status, when there was an answer.
        server_message: the server's own error text (``errors``/``detail``/``message``).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status_code: int | None = None,
        server_message: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.url = url
        self.status_code = status_code
        self.server_message = server_message


class SDTransientError(SDError):
    """An SD failure that may succeed when tried again."""

    transient = True


class SDUnavailable(SDTransientError):
    """The SD server cannot be reached (refused, reset, unknown host)."""


class SDTimeout(SDTransientError):
    """The SD server did not answer within the timeout."""


class SDServerError(SDTransientError):
    """The SD server answered 5xx, 429 or 503."""


class SDPermanentError(SDError):
    """An SD failure that retrying cannot fix."""


class SDRequestRejected(SDPermanentError):
    """The SD server rejected the request (422 or another 4xx)."""


class SDAuthError(SDPermanentError):
    """The SD server wants other credentials (401)."""


class SDNotFound(SDPermanentError):
    """The SD server has no such route (404): usually the API is not enabled."""


class SDBadImage(SDPermanentError):
    """The SD server answered 200 but its image does not decode."""


#: Every error type that retrying cannot fix: actors list these in ``throws`` so they fail at once.
PERMANENT_ERRORS: tuple[type[PipelineError], ...] = (
    ConfigError,
    InputError,
    ImageError,
    JobNotFound,
    ScheduleNotFound,
    JobCancelled,
    QueueFull,
    SDPermanentError,
)
