"""How the command line words sdpipe's errors, and the exit code each one means.

The core's errors carry data (type, ``field``, ``value``, ``limit``, ``expected``), never advice;
this module adds the fix, in the CLI's terms (options, commands, settings): :func:`render` gives the
one line ``<message> (<hint>)``. The hint comes from :data:`HINTS`, keyed by the error type's
``code`` and the ``field`` at fault (``None``: any field), looked up along the type's ancestry, so a
specific entry wins over its parent's. The HTTP API words the same errors in ``cli/api/errors.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.errors import (
    ConfigError,
    PipelineError,
    SDAuthError,
    SDNotFound,
    SDTimeout,
    SDUnavailable,
    StoreUnavailable,
    error_type,
)
from pipeline.models import ErrorInfo, JobState

__all__ = [
    "HINTS",
    "RET_FAILED",
    "RET_OK",
    "RET_UNREACHABLE",
    "RET_USAGE",
    "exit_code_for",
    "exit_code_of_type",
    "hint_for",
    "record_hint",
    "render",
]

#: Exit codes.
RET_OK = 0
#: A job failed.
RET_FAILED = 1
#: Bad usage or input (also Click's own code for usage errors), or settings the servers refuse.
RET_USAGE = 2
#: Redis or the SD server cannot be reached.
RET_UNREACHABLE = 3

#: Exit code of each error type (the first match along the error's type wins); anything else is 2
#: for a command's own error and 1 for a failed job (:func:`exit_code_of_type`).
EXIT_CODES: tuple[tuple[type[PipelineError], int], ...] = (
    (SDUnavailable, RET_UNREACHABLE),
    (SDTimeout, RET_UNREACHABLE),
    (StoreUnavailable, RET_UNREACHABLE),
    (SDAuthError, RET_USAGE),
    (SDNotFound, RET_USAGE),
    (ConfigError, RET_USAGE),
)

#: A hint: fixed text, or a function of the error (its data decides the wording).
Hint = str | Callable[[PipelineError], str | None]


def _band_px(exc: PipelineError) -> str:
    value, limit = exc.value, exc.limit
    if isinstance(value, int) and isinstance(limit, int) and value > limit:  # wider than half a tile
        return f"use --band-px {limit} or less, or a coarser --grid"
    return "use e.g. --band-px 16"


def _grid(exc: PipelineError) -> str:
    if exc.expected is not None:
        return "use e.g. --grid 2x2"
    if exc.limit == 1:
        return "rows and columns must be at least 1"
    if exc.limit == 2:
        return "use at least 1x2 or 2x1"
    return "use a coarser --grid"


def _sd_api_url(exc: PipelineError) -> str:
    if exc.expected is not None:
        return f"use e.g. {exc.expected}"
    if exc.value == "":
        return "separate servers with single commas"
    if exc.limit == 1:
        return "list each server once; use ;max=N for slots"
    return "fix the entry in SD_API_URL (or --sd-url)"


def _path(exc: PipelineError) -> str:
    if exc.expected is not None:
        return f"give the path of {exc.expected}"
    return "check the path and the current directory"


def _sd_url_option(exc: PipelineError) -> str:
    if exc.expected is not None:  # credentials in it, in Redis mode
        return "set SD_API_AUTH on the workers and give --sd-url without user:pass@"
    return "drop --sd-url (a job pinned to a server when it was submitted stays pinned to it)"


def _upscale_scale(exc: PipelineError) -> str | None:
    if exc.limit is None:  # a value out of range: the message gives the range
        return None
    if exc.expected is not None:  # an output too small for SD to render
        return f"use a larger {exc.field} or a larger image"
    return f"use a smaller {exc.field} or raise MAX_PIXELS"


def _upscale_source_job(exc: PipelineError) -> str:
    if exc.limit in (JobState.FAILED.value, JobState.CANCELLED.value):
        return f"`sdpipe retry {exc.value}` first, then upscale it"
    return f"wait for it to succeed (`sdpipe status {exc.value}`)"


def _retry_state(exc: PipelineError) -> str:
    if exc.value in {state.value for state in JobState if not state.terminal}:
        return "it has not ended: wait for it, or `sdpipe cancel` it first"
    return "it needs no retry: `sdpipe status` shows its result"


_FAULTS_EXAMPLE = "use e.g. --faults 500:0.2,reset:0.1,hang:0.05,garbage:0.05; --fail-rate P is the same as 500:P"
_SD_TIMEOUTS = {
    "connect_timeout": "is the host up? raise SD_CONNECT_TIMEOUT_S if it is just slow to accept",
    "read_timeout": "raise SD_TIMEOUT_S if the server is just slow; the job may still run on the server",
    "write_timeout": "the server stopped reading the request; it may be overloaded",
    "pool_timeout": "too many concurrent calls share this client; raise SD_CONNECT_TIMEOUT_S",
    "health_timeout": "the server may be saturated: a long request queue blocks even /progress",
}

#: The CLI's hint per (error code, field); ``None`` as the field: any field of that type.
HINTS: dict[tuple[str, str | None], Hint] = {
    # settings
    ("invalid_config", None): "fix it in the environment or .env",
    ("invalid_config", "env_file"): "check the path given to --env-file, or leave it out to read ./.env",
    ("invalid_config", "SD_API_URL"): _sd_api_url,
    ("invalid_config", "SD_API_AUTH"): "set it to the server's --api-auth, e.g. user:pass",
    ("invalid_config", "REDIS_URL"): lambda e: (
        f"use {e.expected} in REDIS_URL" if e.expected else "set REDIS_URL or REDIS_HOST"
    ),
    ("invalid_config", "REDIS_DB"): (
        "use a database below the server's `databases` setting (16 by default) in REDIS_URL"
    ),
    ("invalid_config", "METRICS_PORT"): (
        "stop what listens there (`ss -ltnp` names it), or choose another METRICS_PORT"
    ),
    # input
    ("invalid_input", None): lambda e: f"use {e.expected}" if e.expected else None,
    ("invalid_input", "prompt"): 'give a prompt, e.g. sdpipe generate "a lighthouse at dusk"',
    ("invalid_input", "width"): "use e.g. --width 512",
    ("invalid_input", "height"): "use e.g. --height 512",
    ("invalid_input", "count"): "use e.g. --count 4",
    ("invalid_input", "seed"): "use -1 for a random seed, or e.g. --seed 42",
    ("invalid_input", "MAX_PIXELS"): "choose a smaller --width/--height or raise MAX_PIXELS",
    ("invalid_input", "grid"): _grid,
    ("invalid_input", "band_px"): _band_px,
    ("invalid_input", "sigma"): "use e.g. --sigma 4",
    ("invalid_input", "quality"): "use e.g. --quality 90",
    ("invalid_input", "override"): "e.g. --override CLIP_stop_at_last_layers=2",
    ("invalid_input", "image"): "the image must have at least one pixel",
    ("invalid_input", "images"): "name one or more files: sdpipe process photo.png",
    ("invalid_input", "OUTPUT_DIR"): lambda e: (
        "choose another folder with --out or OUTPUT_DIR, or fix its permissions"
        if e.expected == "a writable folder"
        else "set OUTPUT_DIR or --out to a folder"
    ),
    ("invalid_input", "path"): _path,
    ("invalid_input", "permissions"): "check the file's permissions",
    ("invalid_input", "encoding"): "save the file as UTF-8",
    ("invalid_input", "syntax"): lambda e: (
        "check its indentation and quotes" if e.value == "yaml" else "check its quotes"
    ),
    ("invalid_input", "rows"): lambda e: f"write {e.expected}" if e.expected else "add some rows",
    ("invalid_input", "cron"): (
        'use 5 fields "minute hour day-of-month month day-of-week", e.g. "0 2 * * *" for 02:00 daily, '
        "or @hourly, @daily, @weekly, @monthly"
    ),
    ("invalid_input", "timezone"): lambda e: (
        f"did you mean {e.expected!r}?" if e.expected else "use an IANA name such as Europe/Berlin or UTC"
    ),
    ("invalid_input", "faults"): _FAULTS_EXAMPLE,
    ("invalid_input", "port"): "stop what uses that port, or choose another --port or --host",
    ("invalid_input", "name"): lambda e: f"use {e.expected}" if e.expected else "use a short name like nightly",
    ("invalid_input", "schedule"): "use --replace, or another name",
    ("invalid_input", "REDIS_URL"): "set REDIS_URL (e.g. redis://localhost:6379/0)",
    ("invalid_input", "API_TOKEN"): "set API_TOKEN to a long random value (e.g. openssl rand -hex 32), or unset it",
    ("invalid_input", "API_HOST"): "set API_TOKEN, listen on 127.0.0.1, or pass --insecure",
    ("invalid_input", "--no-wait"): "set REDIS_URL and run `sdpipe worker`, or drop --no-wait",
    ("invalid_input", "--sd-url"): _sd_url_option,
    ("invalid_input", "--resume"): "use one of them",
    ("invalid_input", "--failed"): lambda e: (
        f"drop --failed: `sdpipe retry {e.value}`" if e.value else "e.g. sdpipe retry --batch 3f2a --failed"
    ),
    ("invalid_input", "JOB_ID"): "`sdpipe jobs` lists the jobs",
    ("invalid_input", "--scale"): _upscale_scale,
    ("invalid_input", "--upscale"): _upscale_scale,
    ("invalid_input", "source_job"): _upscale_source_job,
    ("invalid_input", "source_image"): lambda e: (
        f"give the image's path if it was moved, or render job {e.value} again: `sdpipe status {e.value}` "
        "shows its settings"
    ),
    ("invalid_input", "state"): _retry_state,
    ("invalid_batch", None): "fix the lines listed and run the command again",
    ("invalid_inputs", None): "fix or leave out the files listed and run the command again",
    # images
    ("invalid_image", None): "the file may be truncated or corrupt",
    ("invalid_image", "MAX_PIXELS"): "use a smaller image or raise MAX_PIXELS",
    ("invalid_image", "bytes"): "use a smaller image or raise the size limit",
    ("invalid_image", "first_frame"): "pass --first-frame to process its first frame",
    ("invalid_image", "format"): lambda e: (
        "write PNG or WebP instead" if e.value == "jpeg" else "give an image in one of these formats"
    ),
    # the status store and the queues
    ("job_not_found", None): "`sdpipe jobs` lists the jobs",
    ("job_not_found", "batch_id"): "`sdpipe jobs` shows each job's batch; `sdpipe jobs --batch ID` lists one batch",
    ("job_not_found", "persistence"): (
        "enable Redis persistence (appendonly yes) so queued jobs survive a restart; `sdpipe doctor` checks it"
    ),
    ("job_not_found", "OUTPUT_DIR"): (
        "run `sdpipe generate` first, or point --out / OUTPUT_DIR at the folder it wrote to"
    ),
    ("schedule_not_found", None): "`sdpipe schedule list` shows them",
    ("store_unavailable", None): "is redis-server running? check REDIS_URL",
    ("store_unavailable", "REDIS_PASSWORD"): "check REDIS_PASSWORD or the password in REDIS_URL",
    ("store_unavailable", "OUTPUT_DIR"): "check that OUTPUT_DIR is writable, on a local disk, and not full",
    ("queue_full", None): "try again later, pass --wait-for-room, or raise MAX_QUEUE_DEPTH",
    ("idempotency_conflict", None): "use a new key for a new request (keys are kept IDEMPOTENCY_TTL_S)",
    ("queue_paused", None): "`sdpipe resume` (or `sdpipe resume --batch ID`)",
    ("no_free_slot", None): "add servers to SD_API_URL or raise their ;max=N",
    # the SD server
    ("sd_unreachable", None): "is it running? set SD_API_URL or --sd-url",
    ("sd_unreachable", "connection"): (
        "the server may have crashed or a proxy cut the call; the job may still run on the server"
    ),
    ("sd_timeout", None): lambda e: _SD_TIMEOUTS.get(e.field or "", _SD_TIMEOUTS["read_timeout"]),
    ("sd_auth", None): "set SD_API_AUTH=user:pass to the server's --api-auth",
    ("sd_not_found", "route"): "start the server with --api (or --nowebui, port 7861)",
    ("sd_not_found", "sampler_name"): (
        'send the sampler without a scheduler suffix, e.g. "DPM++ 2M" with scheduler "Karras"'
    ),
    ("sd_request_rejected", "location"): "set SD_API_URL to the address the API really answers on",
    ("sd_bad_image", "content_type"): "is SD_API_URL an A1111-compatible API (and not a proxy or login page)?",
    ("sd_bad_image", "images"): "the job may have been interrupted on the server (POST /sdapi/v1/interrupt)",
    ("sd_rejected", "sd_model_checkpoint"): "put a checkpoint in models/Stable-diffusion and restart the server",
}


def lookup_hint(table: dict[tuple[str, str | None], Any], exc: PipelineError) -> str | None:
    """The hint ``table`` holds for ``exc``: (code, field) then (code, any field), along the type's ancestry."""
    for cls in type(exc).__mro__:
        code = cls.__dict__.get("code")
        if code is None:
            continue
        for key in ((code, exc.field), (code, None)):
            hint = table.get(key)
            if hint is not None:
                text = hint(exc) if callable(hint) else hint
                return str(text) if text else None
    return None


def hint_for(exc: PipelineError) -> str | None:
    """How to fix ``exc``, in the CLI's terms (or None)."""
    return lookup_hint(HINTS, exc)


def render(exc: PipelineError) -> str:
    """The one line the CLI prints for ``exc``: the problem, then the fix."""
    hint = hint_for(exc)
    return f"{exc.message} ({hint})" if hint else exc.message


def record_hint(error: ErrorInfo) -> str | None:
    """How to fix a job's recorded error, from its type and field (None for an unknown type)."""
    cls = error_type(error.type)
    if cls is None:
        return None
    bare = PipelineError.__new__(cls)
    PipelineError.__init__(bare, error.message, field=error.field)
    return hint_for(bare)


def exit_code_of_type(cls: type[BaseException] | None, default: int) -> int:
    """The exit code :data:`EXIT_CODES` gives an error type, else ``default``."""
    for error_cls, code in EXIT_CODES:
        if cls is not None and issubclass(cls, error_cls):
            return code
    return default


def exit_code_for(exc: PipelineError) -> int:
    """3 for anything unreachable (Redis, the SD server), 2 for bad input or settings."""
    return exit_code_of_type(type(exc), RET_USAGE)
