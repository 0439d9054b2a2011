"""Typed settings, read once from the environment and ``.env`` and passed down.

Names follow the original service (``SD_API_URL``, ``REDIS_URL``, ``WORKERS_COUNT``, ...): no
prefix. Library code never reads ``os.environ``; only :func:`load_settings` does, through
pydantic-settings, and the CLI calls it once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import ConfigError, InputError
from pipeline.jobs.naming import DEFAULT_NAME_TEMPLATE, check_name_template
from pipeline.storage.base import parse_s3_url

__all__ = [
    "DEFAULT_BAND_PX",
    "DEFAULT_CFG_SCALE",
    "DEFAULT_GRID",
    "DEFAULT_HEIGHT",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_OUTPUT_QUALITY",
    "DEFAULT_REDIS_CONNECT_TIMEOUT_S",
    "DEFAULT_REDIS_HEALTH_CHECK_INTERVAL_S",
    "DEFAULT_REDIS_RETRIES",
    "DEFAULT_REDIS_SOCKET_TIMEOUT_S",
    "DEFAULT_SAMPLER",
    "DEFAULT_SCHEDULER",
    "DEFAULT_SD_API_URL",
    "DEFAULT_SD_TIMEOUT_S",
    "DEFAULT_SIGMA",
    "DEFAULT_STEPS",
    "DEFAULT_WIDTH",
    "OutputFormat",
    "Settings",
    "load_settings",
    "mask_url",
    "settings_env",
    "split_sd_entry",
    "strip_credentials",
    "strip_credentials_in_text",
]

#: How long a presigned result URL the API redirects to stays valid.
DEFAULT_S3_PRESIGN_EXPIRY_S = 3600
#: Where the SD server listens by default (A1111 with ``--api``).
DEFAULT_SD_API_URL = "http://localhost:7860"
#: Read timeout of one txt2img call. SDXL, hires fix and model loads need minutes.
DEFAULT_SD_TIMEOUT_S = 300.0
#: Connect timeout: a server that does not accept within this is down, not busy.
DEFAULT_SD_CONNECT_TIMEOUT_S = 5.0
#: Redis connections (broker, status store, SD pool): a server that does not accept a TCP
#: connection within this is unreachable.
DEFAULT_REDIS_CONNECT_TIMEOUT_S = 5.0
#: Longest wait for a Redis reply (beyond a blocking command's own wait): a hung server is reported,
#: not waited on forever.
DEFAULT_REDIS_SOCKET_TIMEOUT_S = 15.0
#: A pooled Redis connection idle for this long is PINGed before reuse, so a connection a server or
#: a firewall dropped is noticed before a command is sent on it.
DEFAULT_REDIS_HEALTH_CHECK_INTERVAL_S = 30
#: Retries of a Redis command after a connection error or timeout (redis-py's default of 10 makes a
#: dead server slow to report).
DEFAULT_REDIS_RETRIES = 2
#: Worker processes started by ``sdpipe worker``.
DEFAULT_WORKERS_COUNT = 2
#: Threads per worker process.
DEFAULT_WORKER_THREADS = 4
#: Default grid for split/seam-blur/merge: the original service's "4 equal parts".
DEFAULT_GRID = "2x2"
#: Half-width of the blended band on each side of an inner cut, in pixels.
DEFAULT_BAND_PX = 16
#: Standard deviation of the Gaussian blur inside the band, in pixels.
DEFAULT_SIGMA = 4.0
#: Generation defaults, sent explicitly (A1111's API defaults differ from its UI's).
DEFAULT_STEPS = 20
DEFAULT_CFG_SCALE = 7.0
DEFAULT_WIDTH = 512
DEFAULT_HEIGHT = 512
DEFAULT_SAMPLER = "Euler a"
DEFAULT_SCHEDULER = "Automatic"
#: Largest image (width x height) sdpipe requests, decodes or writes.
DEFAULT_MAX_PIXELS = 8192 * 8192
#: JPEG/WebP quality of written images (1..100; PNG is lossless).
DEFAULT_OUTPUT_QUALITY = 95
#: Largest image file sdpipe reads, in bytes.
#: Most prompts one template expands to in combinatorial mode, unless --max-prompts says otherwise.
DEFAULT_MAX_PROMPTS = 100
DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024
#: Retries of a transient failure per step, and the backoff between them.
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRY_MIN_BACKOFF_MS = 1_000
DEFAULT_RETRY_MAX_BACKOFF_MS = 60_000
#: A worker process silent for this long is dead: Redis hands its unacknowledged messages to
#: others. Heartbeats are refreshed by every dispatch call (about once a second per queue, busy or
#: not), so 20 s is far above any pause while a third of Dramatiq's 60 s default.
DEFAULT_BROKER_HEARTBEAT_TIMEOUT_MS = 20_000
#: Deliveries of one step that killed their worker (no outcome recorded) before the job is quarantined.
DEFAULT_MAX_DELIVERIES = 3
#: Failed calls in a row after which an SD server is benched (taken out of the pool for a cool-down).
DEFAULT_SD_FAILURE_THRESHOLD = 3
#: First cool-down of a benched SD server; it doubles on each failed probe, up to the maximum.
DEFAULT_SD_COOLDOWN_MIN_S = 10.0
DEFAULT_SD_COOLDOWN_MAX_S = 300.0
#: Lifetime of an SD server slot lease. A live holder renews it; a killed worker's slot frees after this.
DEFAULT_SD_SLOT_LEASE_S = 30.0
#: Longest a job naming a checkpoint waits for a busy server that has it loaded while another is free.
DEFAULT_MODEL_AFFINITY_WAIT_S = 5.0
#: Jobs waiting in the queues above which ``generate``/``batch`` refuse or wait. 0: unlimited.
DEFAULT_MAX_QUEUE_DEPTH = 0
#: ``sdpipe serve``: address and port of the HTTP API.
DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
#: Largest upload the HTTP API accepts, in bytes.
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
#: Longest an HTTP request with ``?wait=true`` (or ``POST /api/files``) blocks before answering.
DEFAULT_API_WAIT_TIMEOUT_S = 300.0
#: How long a dashboard sign-in lasts (7 days: a screen left open on a wall stays signed in for a week).
DEFAULT_DASHBOARD_SESSION_TTL_S = 7 * 24 * 3600.0
#: Events kept in the event stream (Redis Stream ``MAXLEN ~``, or rows of the SQLite table).
DEFAULT_EVENTS_MAX_LEN = 100_000
#: ``GET /api/events``: a comment line this often keeps idle connections (and proxies) open.
DEFAULT_SSE_HEARTBEAT_S = 15.0
#: How often a worker asks the SD server for a running generation's progress; 0: never.
DEFAULT_PROGRESS_POLL_S = 1.0
#: Webhook deliveries: each attempt's timeout, the first and longest pause between attempts, and
#: the window after which a delivery that keeps failing is given up (Standard Webhooks: about a day).
DEFAULT_WEBHOOK_TIMEOUT_S = 10.0
DEFAULT_WEBHOOK_RETRY_MIN_S = 5.0
DEFAULT_WEBHOOK_RETRY_MAX_S = 3600.0
DEFAULT_WEBHOOK_RETRY_WINDOW_S = 86_400.0
#: Threads per worker process that deliver webhooks (their own: a slow receiver never takes image threads).
DEFAULT_WEBHOOK_THREADS = 4
#: Embedded mode: how long a command that is done with its jobs waits for its pending webhooks before it
#: exits (what is still pending then is resent by the next embedded command, or ``sdpipe webhooks retry``).
DEFAULT_WEBHOOK_EXIT_WAIT_S = 15.0
#: Redis mode: a pending webhook delivery due this long ago and not tried since has lost its message (a
#: process killed between writing its record and enqueuing it): a worker's sweep sends it again. Above
#: WEBHOOK_TIMEOUT_S (an attempt under way is not tried yet) and above how far the webhooks queue may lag.
DEFAULT_WEBHOOK_STALE_AFTER_S = 300.0
#: How long an ``Idempotency-Key`` (``--idempotency-key``) is remembered.
DEFAULT_IDEMPOTENCY_TTL_S = 86_400.0
#: A queued job's priority rises one class (low -> normal -> high) per this many seconds of waiting.
DEFAULT_PRIORITY_AGING_S = 600.0
#: Longest a queued high or normal job holds lower classes back (its ticket); it lets go sooner when it
#: gets an SD server, is cancelled or ends. A bound for tickets of lost jobs: aging limits what they cost.
DEFAULT_PRIORITY_TICKET_S = 3600.0

#: Concurrent requests one SD server gets unless its ``SD_API_URL`` entry says ``;max=N``. An
#: AUTOMATIC1111 server renders one job at a time; more requests only wait on its lock.
DEFAULT_MAX_SLOTS = 1
#: The largest ``;max=N`` accepted.
MAX_SLOTS_LIMIT = 64

#: The formats a final image can be written in (the one spelling: CLI options, API schemas and job specs use it).
OutputFormat = Literal["png", "webp", "jpeg"]

#: The last ``;name=value`` option of an ``SD_API_URL`` entry. A value holds no ``@`` or ``/``, so a
#: ``;`` inside credentials or a path is not an option; a ``mock://`` fault plan's ``;reset:0.1``
#: items have no ``=``.
_OPTION_RE = re.compile(r";\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*([^;,@/]*?)\s*$")
#: The database part of a ``redis://`` URL: empty, ``/`` or ``/N``.
_REDIS_DB_PATH_RE = re.compile(r"^(/\d*)?$")

_GRID_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9._\-:\[\]]+$")


#: Where a URL's authority (``user:password@host:port``) ends.
_AUTHORITY_END_RE = re.compile(r"[/?#]")
#: A URL inside a text (a server's error message): scheme, ``://`` and everything up to a blank.
_URL_IN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _split_credentials(url: str) -> tuple[str, str, str] | None:
    """``url`` as ``(scheme://, userinfo, host and the rest)``, or None when it carries no credentials.

    The one parser behind :func:`strip_credentials` and :func:`mask_url`. When ``httpx.URL`` finds
    credentials, they run to the last ``@`` of the authority, so an unencoded ``@`` in a password
    stays in the password (``http://user:p@ss@gpu:7860`` is host ``gpu``). A password with an
    unencoded ``/``, ``?`` or ``#`` ends the authority early (the URL does not parse, or seems to
    have a path with an ``@``): then everything up to the last ``@`` is taken as credentials if it
    holds a ``:``, since a leak costs more than a vague URL.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return None
    import httpx  # only for a URL with an @: every command masks URLs, few have credentials in them

    try:
        userinfo_found = bool(httpx.URL(url).userinfo)
    except (httpx.InvalidURL, TypeError, ValueError):
        userinfo_found = False
    if userinfo_found:
        userinfo = _AUTHORITY_END_RE.split(rest, maxsplit=1)[0].rpartition("@")[0]
    else:
        userinfo = rest.rpartition("@")[0]
        if ":" not in userinfo:
            return None
    return f"{scheme}://", userinfo, rest[len(userinfo) + 1 :]


def strip_credentials(url: str) -> str:
    """``url`` without its ``user:password@`` part: for keys and records (``http://gpu:7860``)."""
    parts = _split_credentials(url)
    return url if parts is None else parts[0] + parts[2]


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, the user name kept: for display
    (``http://user:***@gpu:7860``)."""
    parts = _split_credentials(url)
    if parts is None:
        return url
    prefix, userinfo, rest = parts
    user = userinfo.partition(":")[0]
    return f"{prefix}{user}:***@{rest}" if user else f"{prefix}***@{rest}"


def strip_credentials_in_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`strip_credentials` (a server's error message)."""
    return _URL_IN_TEXT_RE.sub(lambda match: strip_credentials(match[0]), text)


def split_sd_entry(entry: str) -> tuple[str, int]:
    """Split one ``SD_API_URL`` entry into its URL and its ``;max=N`` slot cap (default 1).

    Raises:
        ValueError: an option other than ``max``, ``max`` given twice, or ``max`` not a whole number
            between 1 and ``MAX_SLOTS_LIMIT``.
    """
    url = entry.strip()
    max_slots: int | None = None
    while (match := _OPTION_RE.search(url)) is not None:
        url = url[: match.start()].strip()
        name, value = match[1], match[2]
        if name.lower() != "max":
            example = "mock://?seed=3&latency_ms=50;max=2" if url.startswith("mock://") else "http://gpu1:7860;max=2"
            raise ValueError(
                f"unknown option {name!r} in SD_API_URL entry {mask_url(url)!r}; the only option is ;max=N, "
                f"e.g. {example}"
            )
        if max_slots is not None:
            raise ValueError(f"SD_API_URL entry {mask_url(url)!r} gives ;max twice; give it once")
        if not value.isdigit() or not 1 <= int(value) <= MAX_SLOTS_LIMIT:
            raise ValueError(
                f"SD_API_URL entry {mask_url(url)!r} has max={value!r}; expected a whole number "
                f"1..{MAX_SLOTS_LIMIT}, e.g. http://gpu1:7860;max=2"
            )
        max_slots = int(value)
    return url, DEFAULT_MAX_SLOTS if max_slots is None else max_slots


class Settings(BaseSettings):
    """Every setting of sdpipe, from the environment and ``.env``."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", validate_default=True)

    # SD server
    sd_api_url: str = DEFAULT_SD_API_URL
    sd_api_auth: SecretStr | None = None
    sd_timeout_s: Annotated[float, Field(gt=0)] = DEFAULT_SD_TIMEOUT_S
    sd_connect_timeout_s: Annotated[float, Field(gt=0)] = DEFAULT_SD_CONNECT_TIMEOUT_S

    # Redis (broker + status store). Unset: embedded mode (in-process workers, SQLite store).
    redis_url: SecretStr | None = None
    redis_host: str | None = None
    redis_port: Annotated[int, Field(gt=0, lt=65536)] = 6379
    redis_password: SecretStr | None = None
    redis_db: Annotated[int, Field(ge=0)] = 0
    redis_connect_timeout_s: Annotated[float, Field(gt=0)] = DEFAULT_REDIS_CONNECT_TIMEOUT_S
    redis_socket_timeout_s: Annotated[float, Field(gt=0)] = DEFAULT_REDIS_SOCKET_TIMEOUT_S
    redis_health_check_interval_s: Annotated[int, Field(ge=0)] = DEFAULT_REDIS_HEALTH_CHECK_INTERVAL_S
    redis_retries: Annotated[int, Field(ge=0)] = DEFAULT_REDIS_RETRIES

    # Workers
    workers_count: Annotated[int, Field(ge=1)] = DEFAULT_WORKERS_COUNT
    worker_threads: Annotated[int, Field(ge=1)] = DEFAULT_WORKER_THREADS
    max_retries: Annotated[int, Field(ge=0)] = DEFAULT_MAX_RETRIES
    retry_min_backoff_ms: Annotated[int, Field(gt=0)] = DEFAULT_RETRY_MIN_BACKOFF_MS
    retry_max_backoff_ms: Annotated[int, Field(gt=0)] = DEFAULT_RETRY_MAX_BACKOFF_MS
    max_deliveries: Annotated[int, Field(ge=1)] = DEFAULT_MAX_DELIVERIES
    broker_heartbeat_timeout_ms: Annotated[int, Field(ge=1000)] = DEFAULT_BROKER_HEARTBEAT_TIMEOUT_MS

    # SD server pool (several comma-separated SD_API_URL entries)
    sd_failure_threshold: Annotated[int, Field(ge=1)] = DEFAULT_SD_FAILURE_THRESHOLD
    sd_cooldown_min_s: Annotated[float, Field(gt=0)] = DEFAULT_SD_COOLDOWN_MIN_S
    sd_cooldown_max_s: Annotated[float, Field(gt=0)] = DEFAULT_SD_COOLDOWN_MAX_S
    sd_slot_lease_s: Annotated[float, Field(ge=1)] = DEFAULT_SD_SLOT_LEASE_S
    #: Checkpoint-aware dispatch (issue 15); false: any free server, the checkpoint loaded per request.
    model_affinity: bool = True
    model_affinity_wait_s: Annotated[float, Field(ge=0)] = DEFAULT_MODEL_AFFINITY_WAIT_S
    max_queue_depth: Annotated[int, Field(ge=0)] = DEFAULT_MAX_QUEUE_DEPTH
    metrics_port: Annotated[int, Field(gt=0, lt=65536)] | None = None

    # HTTP API (sdpipe serve)
    api_host: str = DEFAULT_API_HOST
    port: Annotated[int, Field(gt=0, lt=65536)] = DEFAULT_PORT
    api_token: SecretStr | None = None
    enable_documentation: bool = False
    max_upload_bytes: Annotated[int, Field(gt=0)] = DEFAULT_MAX_UPLOAD_BYTES
    api_wait_timeout_s: Annotated[float, Field(gt=0)] = DEFAULT_API_WAIT_TIMEOUT_S
    dashboard_session_ttl_s: Annotated[float, Field(gt=0)] = DEFAULT_DASHBOARD_SESSION_TTL_S
    #: Seconds between two heartbeat comments of ``GET /api/events``.
    sse_heartbeat_s: Annotated[float, Field(gt=0)] = DEFAULT_SSE_HEARTBEAT_S
    #: Comma-separated hosts (``example.com``, ``*.example.com``, ``host:port``) a webhook given over the
    #: HTTP API may name; empty: the API accepts no per-request webhook (``WEBHOOK_URL`` still applies).
    webhook_allow_hosts: str = ""

    # Events and webhooks
    events_max_len: Annotated[int, Field(ge=100)] = DEFAULT_EVENTS_MAX_LEN
    progress_poll_s: Annotated[float, Field(ge=0)] = DEFAULT_PROGRESS_POLL_S
    #: Also publish the server's preview image while it renders (``job.preview`` events; costs bandwidth).
    progress_preview: bool = False
    #: Receives job.succeeded/failed/cancelled and batch.completed for every job (a job's own
    #: ``--webhook`` is sent too).
    webhook_url: str | None = None
    #: ``whsec_`` + base64 key: webhooks are signed with it (Standard Webhooks); required to send any.
    webhook_secret: SecretStr | None = None
    webhook_timeout_s: Annotated[float, Field(gt=0)] = DEFAULT_WEBHOOK_TIMEOUT_S
    webhook_retry_min_s: Annotated[float, Field(gt=0)] = DEFAULT_WEBHOOK_RETRY_MIN_S
    webhook_retry_max_s: Annotated[float, Field(gt=0)] = DEFAULT_WEBHOOK_RETRY_MAX_S
    webhook_retry_window_s: Annotated[float, Field(gt=0)] = DEFAULT_WEBHOOK_RETRY_WINDOW_S
    webhook_threads: Annotated[int, Field(ge=1)] = DEFAULT_WEBHOOK_THREADS
    webhook_exit_wait_s: Annotated[float, Field(ge=0)] = DEFAULT_WEBHOOK_EXIT_WAIT_S
    webhook_stale_after_s: Annotated[float, Field(gt=0)] = DEFAULT_WEBHOOK_STALE_AFTER_S

    # Idempotency and priority
    idempotency_ttl_s: Annotated[float, Field(gt=0)] = DEFAULT_IDEMPOTENCY_TTL_S
    priority_aging_s: Annotated[float, Field(gt=0)] = DEFAULT_PRIORITY_AGING_S
    priority_ticket_s: Annotated[float, Field(gt=0)] = DEFAULT_PRIORITY_TICKET_S

    # Output
    output_dir: Path = Path("./outputs")
    #: ``s3://bucket/prefix``: outputs, sidecars, manifests and intermediates in an S3-compatible bucket
    #: instead of OUTPUT_DIR (which then holds only embedded mode's status database).
    output_url: str | None = None
    #: The S3-compatible service (MinIO, R2, GCS...); unset: AWS S3 in AWS_REGION.
    s3_endpoint_url: str | None = None
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    aws_region: str | None = None
    #: The API's result route redirects to a presigned GET URL valid this long; 0: it streams the object.
    s3_presign_expiry_s: Annotated[int, Field(ge=0, le=7 * 86400)] = DEFAULT_S3_PRESIGN_EXPIRY_S
    output_format: OutputFormat = "png"
    output_quality: Annotated[int, Field(ge=1, le=100)] = DEFAULT_OUTPUT_QUALITY
    #: The naming template of outputs (pipeline.jobs.naming: {date}, {time}, {job}, {batch}, {seed},
    #: {model}, {prompt}, {row}, and / for folders).
    output_name: str = DEFAULT_NAME_TEMPLATE
    max_pixels: Annotated[int, Field(gt=0)] = DEFAULT_MAX_PIXELS
    max_image_bytes: Annotated[int, Field(gt=0)] = DEFAULT_MAX_IMAGE_BYTES
    #: ``sdpipe scheduler`` prunes ended jobs older than this once a day (``sdpipe prune``, without
    #: --outputs); None: never.
    retention_days: Annotated[int, Field(ge=1)] | None = None

    # Prompt templates
    #: Folder of wildcard files: ``__name__`` in a template is a line of ``name.txt`` (``__a/b__``: ``a/b.txt``).
    wildcards_dir: Path = Path("./wildcards")
    #: Most prompts one template may expand to with ``--combinatorial`` (``--max-prompts`` overrides it).
    max_prompts: Annotated[int, Field(ge=1)] = DEFAULT_MAX_PROMPTS

    # Step defaults
    grid: str = DEFAULT_GRID
    band_px: Annotated[int, Field(ge=1)] = DEFAULT_BAND_PX
    sigma: Annotated[float, Field(gt=0)] = DEFAULT_SIGMA

    # Generation defaults
    steps: Annotated[int, Field(ge=1, le=500)] = DEFAULT_STEPS
    cfg_scale: Annotated[float, Field(ge=0, le=100)] = DEFAULT_CFG_SCALE
    width: Annotated[int, Field(ge=8)] = DEFAULT_WIDTH
    height: Annotated[int, Field(ge=8)] = DEFAULT_HEIGHT
    sampler: str = DEFAULT_SAMPLER
    scheduler: str = DEFAULT_SCHEDULER

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, value: str) -> str:
        match = _GRID_RE.match(value)
        if not match or int(match[1]) < 1 or int(match[2]) < 1:
            raise ValueError("expected ROWSxCOLS with both at least 1, e.g. 2x2")
        return f"{int(match[1])}x{int(match[2])}"

    @field_validator("output_name")
    @classmethod
    def _check_output_name(cls, value: str) -> str:
        try:
            return check_name_template(value)
        except InputError as exc:
            raise ValueError(exc.message.removeprefix(f"OUTPUT_NAME {value!r}: ")) from None

    @field_validator("output_url")
    @classmethod
    def _check_output_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            bucket, prefix = parse_s3_url(value.strip())
        except ConfigError as exc:
            raise ValueError(exc.message.removeprefix("OUTPUT_URL ")) from None
        return f"s3://{bucket}" + (f"/{prefix}" if prefix else "")

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_s3_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise ValueError("expected an http(s) URL without credentials, e.g. http://localhost:9000")
        return value.strip().rstrip("/")

    @field_validator("sd_api_url")
    @classmethod
    def _check_sd_url(cls, value: str) -> str:
        for raw in value.split(","):
            if not raw.strip():
                raise ValueError("has an empty entry; separate servers with single commas")
            entry, _ = split_sd_entry(raw)
            if entry.startswith("mock://"):
                if "?" not in entry:
                    continue  # no options to check: every command that reads settings stays light
                # Imported here, like in pipeline.sd.client: only a mock:// URL loads the mock's URL rules (a
                # contract in pyproject.toml's [tool.importlinter] allows exactly these two lazy imports).
                from pipeline.sd.mock.urls import parse_mock_url

                parse_mock_url(entry)  # raises ValueError naming the bad option and the valid ones
                continue
            parts = urlsplit(entry)
            try:
                parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
            except ValueError:
                raise ValueError(f"{mask_url(entry)!r} has an invalid port; use e.g. http://localhost:7860") from None
            if parts.scheme not in ("http", "https") or not parts.hostname or not _HOST_RE.match(parts.hostname):
                raise ValueError(
                    f"{mask_url(entry)!r} is not an http(s) URL; use e.g. http://localhost:7860 or mock://"
                )
        return value.strip()

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse a REDIS_URL whose scheme or database is malformed (redis-py would silently use DB 0).

        Only the server knows how many databases it has: an index out of range is refused when connecting.
        """
        if value is None:
            return None
        url = value.get_secret_value()
        example = "e.g. redis://localhost:6379/0"
        try:
            parts = urlsplit(url.strip())
        except ValueError:
            raise ValueError(f"{mask_url(url)!r} is not a Redis URL; use {example}") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"{mask_url(url)!r} is not a Redis URL; use {example}")
        path = unquote(parts.path)
        # The message names no part of the URL: with a /, ? or # in the password, that part is secret.
        encode = "a password with / ? or # must be percent-encoded (%2F, %3F, %23)"
        if parts.scheme != "unix" and not _REDIS_DB_PATH_RE.match(path):
            raise ValueError(f"its database part is not /N with N a whole number >= 0 ({encode}), {example}")
        for db in parse_qs(parts.query).get("db", []):
            if not db.isdigit():
                raise ValueError(f"its db= is not a whole number >= 0 ({encode}), {example}")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("must start with whsec_ followed by a base64 key, e.g. from `sdpipe webhooks secret`")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{mask_url(value)!r} is not an http(s) URL")
        return value.strip()

    @model_validator(mode="after")
    def _check_related_limits(self) -> Settings:
        if self.retry_max_backoff_ms < self.retry_min_backoff_ms:
            raise ValueError("RETRY_MAX_BACKOFF_MS must be >= RETRY_MIN_BACKOFF_MS")
        if self.sd_cooldown_max_s < self.sd_cooldown_min_s:
            raise ValueError("SD_COOLDOWN_MAX_S must be >= SD_COOLDOWN_MIN_S")
        if self.webhook_stale_after_s <= self.webhook_timeout_s:
            # An attempt under way saves its outcome only when it ends: a sweep would send it a second time.
            raise ValueError(
                f"WEBHOOK_STALE_AFTER_S ({self.webhook_stale_after_s:g}) must be > WEBHOOK_TIMEOUT_S "
                f"({self.webhook_timeout_s:g})"
            )
        return self

    @property
    def output_location(self) -> str:
        """Where outputs go: ``OUTPUT_URL`` (``s3://...``) when set, else the absolute ``OUTPUT_DIR``."""
        return self.output_url if self.output_url is not None else str(self.output_dir.absolute())

    @property
    def redis_mode(self) -> bool:
        """True when Redis is configured: the broker and the status store live there."""
        return self.redis_url is not None or self.redis_host is not None

    def redis_dsn(self) -> str:
        """The Redis URL in effect, with its password (never log it; see :meth:`redis_dsn_masked`)."""
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        if self.redis_host is None:
            raise ConfigError("Redis is not configured", field="REDIS_URL")
        auth = ""
        if self.redis_password is not None:
            auth = ":" + quote(self.redis_password.get_secret_value(), safe="") + "@"
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def redis_dsn_masked(self) -> str:
        """The Redis URL in effect with its password masked, for messages and ``doctor``."""
        return mask_url(self.redis_dsn()) if self.redis_mode else "(embedded: no Redis)"

    @property
    def actor_time_limit_ms(self) -> int:
        """The actors' time limit: always above the SD client's own timeouts."""
        return int((self.sd_timeout_s + self.sd_connect_timeout_s + 60.0) * 1000)


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once (environment, then ``env_file`` or ``./.env``), applying ``overrides``.

    Only an ``env_file`` given explicitly must exist: a missing ``./.env`` just means no file.

    Raises:
        ConfigError: ``env_file`` cannot be read, or a setting is malformed; the message names it
            and what is expected.
    """
    if env_file is not None:
        _check_env_file(env_file)
    try:
        if env_file is not None:
            return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]).upper() or "settings"
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {name}: {message}", field=name) from exc


def _check_env_file(env_file: Path) -> None:
    """Refuse an explicitly given env file that is missing or unreadable (pydantic-settings skips it)."""
    try:
        with env_file.open("rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(f"env file {env_file} does not exist", field="env_file", value=str(env_file)) from None
    except IsADirectoryError:
        raise ConfigError(
            f"env file {env_file} is a directory, not a file", field="env_file", value=str(env_file)
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"env file {env_file} cannot be read: {exc.strerror or exc}", field="env_file", value=str(env_file)
        ) from None


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as environment variables, so child processes (workers) read exactly these."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[name.upper()] = str(value)
    return env
