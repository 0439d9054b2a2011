"""sdpipe's error hierarchy for the pure core.

Whether an error is worth retrying is a property of its type (:attr:`PipelineError.transient`),
so the actors never inspect messages or status codes. Errors carry data (``field``, ``value``,
``limit``, ``expected``; ``url`` and ``status_code`` for the SD server's), never wording for one
front end: the CLI (``cli/errors.py``) and the HTTP API (``cli/api/errors.py``) each say how to fix
an error from its type (:attr:`PipelineError.code`) and that data::

    PipelineError                 code
    ├── ConfigError               invalid_config       bad settings (permanent)
    ├── InputError                invalid_input        bad user input: prompt, size, grid, file (permanent)
    │   ├── BatchFileError        invalid_batch        rows of a batch file are invalid; .problems lists them
    │   └── InputsRejected        invalid_inputs       several inputs of process are unusable; .problems lists them
    ├── ImageError                invalid_image        an image that cannot be decoded or is too large (permanent)
    │   └── UploadRejected        upload_rejected      an uploaded file refused; .problem says which check
    ├── JobNotFound               job_not_found        no job (or batch) with that id in the status store
    │   └── AmbiguousId           ambiguous_id         a short id that several jobs (or batches) start with
    ├── ScheduleNotFound          schedule_not_found   no schedule with that name (permanent)
    ├── JobCancelled              job_cancelled        the job was cancelled while a step ran (permanent)
    ├── StoreUnavailable          store_unavailable    the status store (Redis) cannot be reached (transient)
    ├── StorageUnavailable        storage_unavailable  the bucket of OUTPUT_URL cannot be reached or failed (transient)
    ├── StorageRefused            storage_refused      the object store refused: credentials, no such bucket (permanent)
    ├── QueueFull                 queue_full           more jobs queued than MAX_QUEUE_DEPTH allows (refused)
    ├── IdempotencyConflict       idempotency_conflict an Idempotency-Key reused with a different request
    ├── NoFreeSlot                no_free_slot         every SD server the job may use is busy (transient;
    │   │                                              waits, costs no retry)
    │   ├── Outranked             outranked            higher-priority work waits for the SD servers
    │   └── QueuePaused           queue_paused         the queue (or the job's batch) is paused
    └── SDError                   sd_error             anything the SD server did (.url, .status_code)
        ├── SDTransientError      sd_transient         worth retrying (transient)
        │   ├── SDUnavailable     sd_unreachable       connection refused / reset / DNS
        │   ├── SDTimeout         sd_timeout           connect or read timeout
        │   └── SDServerError     sd_server_error      5xx (OutOfMemoryError, NansException, ...), 429, 503
        └── SDPermanentError      sd_rejected          retrying cannot help (permanent)
            ├── SDRequestRejected sd_request_rejected  422 and other 4xx; a 500 for a mistake in the request
            ├── SDAuthError       sd_auth              401: SD_API_AUTH is wrong
            ├── SDNotFound        sd_not_found         404: no such route (API not enabled) or sampler
            ├── SDBadImage        sd_bad_image         a 200 answer whose image does not decode
            └── SDWrongCheckpoint sd_wrong_checkpoint  a 200 answer rendered with another checkpoint than asked

This module imports nothing heavy (no numpy, PIL, httpx or Redis client): any part may import it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from pipeline.batches.formats import RowProblem

__all__ = [
    "AmbiguousId",
    "PERMANENT_ERRORS",
    "BatchFileError",
    "ConfigError",
    "IdempotencyConflict",
    "ImageError",
    "InputError",
    "InputsRejected",
    "JobCancelled",
    "JobNotFound",
    "NoFreeSlot",
    "Outranked",
    "QueuePaused",
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
    "SDWrongCheckpoint",
    "ScheduleNotFound",
    "StorageRefused",
    "StorageUnavailable",
    "StoreUnavailable",
    "UploadProblem",
    "UploadRejected",
    "error_type",
]


class PipelineError(Exception):
    """Base class of every error sdpipe's core raises on purpose.

    Args:
        message: one line saying what went wrong (no advice: front ends add their own, from the data).
        field: the setting, option or request field at fault (``"seed"``, ``"SD_API_URL"``).
        value: the value given (never a secret).
        limit: the bound it broke, when there is one.
        expected: what would have been accepted (``"an integer"``, ``"one of: png, jpeg, webp"``).
    """

    #: A stable machine name of the error type (front ends key their wording on it).
    code: ClassVar[str] = "error"
    #: Whether retrying the same operation later may succeed.
    transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        value: object = None,
        limit: object = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.value = value
        self.limit = limit
        self.expected = expected

    def __str__(self) -> str:
        return self.message


class ConfigError(PipelineError):
    """A setting is malformed or inconsistent."""

    code = "invalid_config"


class InputError(PipelineError):
    """User input (prompt, size, grid, file, name) is invalid."""

    code = "invalid_input"


class BatchFileError(InputError):
    """Rows of a batch file are invalid; :attr:`problems` lists every one (nothing was enqueued)."""

    code = "invalid_batch"

    def __init__(self, file_name: str, problems: Sequence[RowProblem]) -> None:
        self.file_name = file_name
        self.problems = list(problems)
        lines = len({problem.line for problem in self.problems})
        super().__init__(f"{file_name}: {lines} bad row{'' if lines == 1 else 's'} (nothing was enqueued)")

    def __reduce__(self) -> tuple[type[BatchFileError], tuple[str, list[RowProblem]]]:
        return BatchFileError, (self.file_name, self.problems)  # picklable despite its own arguments


class InputsRejected(InputError):
    """Several inputs of ``process`` are unusable; :attr:`problems` has one line for each (nothing was queued)."""

    code = "invalid_inputs"

    def __init__(self, problems: Sequence[str], total: int) -> None:
        self.problems = list(problems)
        self.total = total
        super().__init__(
            f"{len(self.problems)} of {total} inputs cannot be processed (nothing was queued)",
            field="images",
            value=len(self.problems),
            limit=total,
        )

    def __reduce__(self) -> tuple[type[InputsRejected], tuple[list[str], int]]:
        return InputsRejected, (self.problems, self.total)  # picklable despite its own arguments


class ImageError(PipelineError):
    """An image cannot be decoded, is truncated, or exceeds the size limits."""

    code = "invalid_image"


class UploadProblem(enum.StrEnum):
    """Why an upload was refused (the HTTP layer picks its status code from this)."""

    EMPTY = "empty_upload"
    TOO_LARGE = "upload_too_large"
    UNSUPPORTED_TYPE = "unsupported_media_type"
    TOO_MANY_PIXELS = "too_many_pixels"
    UNREADABLE = "unreadable_image"


class UploadRejected(ImageError):
    """An uploaded file is not an image sdpipe accepts; :attr:`problem` says which check failed."""

    code = "upload_rejected"

    def __init__(self, problem: UploadProblem, message: str, *, limit: object = None) -> None:
        super().__init__(message, limit=limit)
        self.problem = problem

    def __reduce__(self) -> tuple[type[UploadRejected], tuple[UploadProblem, str]]:
        return UploadRejected, (self.problem, self.message)


class JobNotFound(PipelineError):
    """The status store has no job with that id (``field`` is ``"batch_id"`` for a batch)."""

    code = "job_not_found"


class AmbiguousId(JobNotFound):
    """A short id that several jobs (or batches) start with: not one of them is meant for sure."""

    code = "ambiguous_id"


class ScheduleNotFound(PipelineError):
    """The status store has no schedule with that name."""

    code = "schedule_not_found"


class JobCancelled(PipelineError):
    """The job was cancelled; its remaining steps do not run."""

    code = "job_cancelled"


class StoreUnavailable(PipelineError):
    """The status store (Redis) cannot be reached (``field="REDIS_PASSWORD"``: it refused the password)."""

    code = "store_unavailable"
    transient = True


class StorageUnavailable(PipelineError):
    """The object store of ``OUTPUT_URL`` cannot be reached or answered with a server error (``value``:
    the location, never a credential)."""

    code = "storage_unavailable"
    transient = True


class StorageRefused(PipelineError):
    """The object store refused a request retrying cannot fix: credentials refused, no such bucket,
    access denied (``field``: the setting to check)."""

    code = "storage_refused"


class QueueFull(PipelineError):
    """A submission was refused: the queues hold more jobs than ``MAX_QUEUE_DEPTH`` allows (``limit``)."""

    code = "queue_full"


class NoFreeSlot(PipelineError):
    """No SD server the job may use has a free slot: all are busy.

    Not a failure of the job: the generate message goes back to the queue without spending a retry.
    """

    code = "no_free_slot"
    transient = True


class Outranked(NoFreeSlot):
    """A job of a higher priority class waits for the SD servers: this one goes back to the queue."""

    code = "outranked"


class QueuePaused(NoFreeSlot):
    """The queue, or the job's batch, is paused: no new SD call starts until it is resumed."""

    code = "queue_paused"


class IdempotencyConflict(PipelineError):
    """An idempotency key was used before with a different request (``value``: the key)."""

    code = "idempotency_conflict"


class SDError(PipelineError):
    """The SD server failed or refused a request.

    Args:
        message: what went wrong, including the server's own message when it sent one.
        url: the server URL, without credentials.
        status_code: the HTTP status, when there was an answer.
        server_message: the server's own error text (``errors``/``detail``/``message``).
        field, value, limit, expected: as for :class:`PipelineError` (``field="sampler"``,
            ``field="read_timeout"``...).
    """

    code = "sd_error"

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status_code: int | None = None,
        server_message: str | None = None,
        field: str | None = None,
        value: object = None,
        limit: object = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message, field=field, value=value, limit=limit, expected=expected)
        self.url = url
        self.status_code = status_code
        self.server_message = server_message


class SDTransientError(SDError):
    """An SD failure that may succeed when tried again."""

    code = "sd_transient"
    transient = True


class SDUnavailable(SDTransientError):
    """The SD server cannot be reached (refused, reset, unknown host); ``field="connection"``: lost mid-call."""

    code = "sd_unreachable"


class SDTimeout(SDTransientError):
    """The SD server did not answer within the timeout (``field``: which one, ``limit``: its seconds)."""

    code = "sd_timeout"


class SDServerError(SDTransientError):
    """The SD server answered 5xx, 429 or 503."""

    code = "sd_server_error"


class SDPermanentError(SDError):
    """An SD failure that retrying cannot fix."""

    code = "sd_rejected"


class SDRequestRejected(SDPermanentError):
    """The SD server rejected the request (422 or another 4xx; ``field="location"``: a redirect)."""

    code = "sd_request_rejected"


class SDAuthError(SDPermanentError):
    """The SD server wants other credentials (401)."""

    code = "sd_auth"


class SDNotFound(SDPermanentError):
    """The SD server has no such route (404, ``field="route"``: usually the API is not enabled) or
    sampler (``field="sampler"``)."""

    code = "sd_not_found"


class SDBadImage(SDPermanentError):
    """The SD server answered 200 but its image does not decode."""

    code = "sd_bad_image"


class SDWrongCheckpoint(SDPermanentError):
    """The SD server rendered with another checkpoint than the one asked for (A1111 ignores unknown ones)."""

    code = "sd_wrong_checkpoint"


#: Every error type that retrying cannot fix: actors list these in ``throws`` so they fail at once.
PERMANENT_ERRORS: tuple[type[PipelineError], ...] = (
    ConfigError,
    InputError,
    ImageError,
    JobNotFound,
    ScheduleNotFound,
    JobCancelled,
    QueueFull,
    StorageRefused,
    IdempotencyConflict,
    SDPermanentError,
)


def error_type(name: str) -> type[PipelineError] | None:
    """The error class a job record names (``ErrorInfo.type``), or None for another one
    (``RetriesExhausted``, ``Interrupted``, a built-in exception...)."""
    pending: list[type[PipelineError]] = [PipelineError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls
        pending.extend(cls.__subclasses__())
    return None
