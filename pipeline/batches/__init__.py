"""Batches and schedules: batch files, their manifests and re-runs, and cron schedules that fire them.

- :mod:`~pipeline.batches.formats`: ``.txt``, ``.jsonl``, ``.csv``, ``.yaml`` files -> rows with line numbers.
- :mod:`~pipeline.batches.rows`: the keys of a row (sdpipe's and any A1111 txt2img field): one model, one check.
- :mod:`~pipeline.batches.files`: every row checked and planned before anything is enqueued.
- :mod:`~pipeline.batches.manifests`: manifests, and how ``--resume``/``--skip-existing`` reuse work.
- :mod:`~pipeline.batches.schedules`: cron arithmetic and the exactly-once scheduler loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.batches.files import (
        BatchFileError,
        PlannedRow,
        describe_plan,
        read_batch_file,
    )
    from pipeline.batches.formats import (
        BATCH_EXTENSIONS,
        parse_batch_file,
    )
    from pipeline.batches.manifests import (
        ResumePlan,
        build_manifest,
        plan_resume,
        write_manifest,
    )
    from pipeline.batches.rows import (
        JobRow,
        check_request,
        generation_request,
    )
    from pipeline.batches.schedules import (
        Scheduler,
        effective_grace_s,
        next_fire_time,
        parse_timezone,
        validate_cron,
    )

__all__ = [
    "BATCH_EXTENSIONS",
    "parse_batch_file",
    "BatchFileError",
    "PlannedRow",
    "describe_plan",
    "read_batch_file",
    "JobRow",
    "check_request",
    "generation_request",
    "ResumePlan",
    "build_manifest",
    "plan_resume",
    "write_manifest",
    "Scheduler",
    "effective_grace_s",
    "next_fire_time",
    "parse_timezone",
    "validate_cron",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".formats": ["BATCH_EXTENSIONS", "parse_batch_file"],
        ".files": ["BatchFileError", "PlannedRow", "describe_plan", "read_batch_file"],
        ".rows": ["JobRow", "check_request", "generation_request"],
        ".manifests": ["ResumePlan", "build_manifest", "plan_resume", "write_manifest"],
        ".schedules": ["Scheduler", "effective_grace_s", "next_fire_time", "parse_timezone", "validate_cron"],
    },
)
