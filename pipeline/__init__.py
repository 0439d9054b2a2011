"""sdpipe's pure core: settings, SD client, mock server, image steps, status store, storage.

Never imports Dramatiq: ``actors`` wraps these in actors, ``cli`` calls both.
"""

from __future__ import annotations

from pipeline.backends import Backend, parse_backends
from pipeline.codec import DecodedImage, decode_image, encode_image, read_image_file, sniff_format
from pipeline.errors import (
    PERMANENT_ERRORS,
    AmbiguousId,
    ConfigError,
    ImageError,
    InputError,
    JobCancelled,
    JobNotFound,
    NoFreeSlot,
    PipelineError,
    QueueFull,
    ScheduleNotFound,
    SDAuthError,
    SDBadImage,
    SDError,
    SDNotFound,
    SDPermanentError,
    SDRequestRejected,
    SDServerError,
    SDTimeout,
    SDTransientError,
    SDUnavailable,
    StoreUnavailable,
)
from pipeline.infotext import build_infotext, insert_params, parse_infotext
from pipeline.jobs import GenerationRequest, ProcessPlan, build_step_params, plan_generate, plan_process, watch_jobs
from pipeline.mock_sd import MockSDServer, get_mock_server, run_forever
from pipeline.models import (
    ErrorInfo,
    GenerationParams,
    JobRecord,
    JobSpec,
    JobState,
    SDResult,
    StepParams,
    StepRecord,
    parse_grid,
)
from pipeline.pool import SDPool
from pipeline.pool_state import BackendStatus
from pipeline.sd_client import SDClient
from pipeline.seams import TileBox, cut_positions, merge, seam_blur_reference, seam_blur_tile, split, validate_geometry
from pipeline.settings import Settings, load_settings, mask_url
from pipeline.steps import StepContext, StepOutcome, run_step
from pipeline.storage import JobFiles, atomic_write_bytes, atomic_write_json, check_output_dir
from pipeline.store import RedisStatusStore, SqliteStatusStore, StatusStore, open_store

__all__ = [
    # Settings
    "Settings",
    "load_settings",
    "mask_url",
    # Errors
    "PERMANENT_ERRORS",
    "AmbiguousId",
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
    # Models
    "ErrorInfo",
    "GenerationParams",
    "JobRecord",
    "JobSpec",
    "JobState",
    "SDResult",
    "StepParams",
    "StepRecord",
    "parse_grid",
    # SD server and pool
    "Backend",
    "BackendStatus",
    "MockSDServer",
    "SDPool",
    "parse_backends",
    "SDClient",
    "get_mock_server",
    "run_forever",
    # Image steps and codec
    "DecodedImage",
    "TileBox",
    "build_infotext",
    "cut_positions",
    "decode_image",
    "encode_image",
    "insert_params",
    "merge",
    "parse_infotext",
    "read_image_file",
    "seam_blur_reference",
    "seam_blur_tile",
    "sniff_format",
    "split",
    "validate_geometry",
    # Jobs and steps
    "GenerationRequest",
    "ProcessPlan",
    "StepContext",
    "StepOutcome",
    "build_step_params",
    "plan_generate",
    "plan_process",
    "run_step",
    "watch_jobs",
    # Storage and status
    "JobFiles",
    "RedisStatusStore",
    "SqliteStatusStore",
    "StatusStore",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_output_dir",
    "open_store",
]
