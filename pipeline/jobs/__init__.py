"""Jobs: planning what a user asked for, running each step, and the files a job writes.

- :mod:`~pipeline.jobs.planning`: requests -> validated job specs, before anything is enqueued.
- :mod:`~pipeline.jobs.steps`: the four steps (generate, split, seam_blur, merge), each idempotent.
- :mod:`~pipeline.jobs.renders`: one tile (or band) of an upscale job, as its actor runs it.
- :mod:`~pipeline.jobs.files`: atomic writes, output names, each job's work folder.
- :mod:`~pipeline.jobs.arrays`: the raw arrays files the steps hand each other, and regions of them.
- :mod:`~pipeline.jobs.naming`: the ``OUTPUT_NAME`` template and the slugs in it.
- :mod:`~pipeline.jobs.retention`: ``sdpipe prune``: ended jobs' records and files, orphaned work folders.
- :mod:`~pipeline.jobs.uploads`: checking an uploaded image before anything is planned on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.jobs.files import (
        JobFiles,
        atomic_write_bytes,
        atomic_write_json,
        check_output_dir,
        current_output,
        read_json,
    )
    from pipeline.jobs.planning import (
        GenerationRequest,
        ProcessPlan,
        build_step_params,
        fingerprint,
        new_id,
        plan_generate,
        plan_process,
        travelling_overrides,
        watch_jobs,
    )
    from pipeline.jobs.retention import PrunePlan, apply_prune, find_orphaned_work, plan_prune, remove_orphaned_work
    from pipeline.jobs.steps import (
        StepContext,
        StepOutcome,
        run_step,
    )
    from pipeline.jobs.uploads import (
        UploadInfo,
        UploadRejected,
        check_upload,
        remove_stale_uploads,
        upload_path,
    )

__all__ = [
    "GenerationRequest",
    "ProcessPlan",
    "build_step_params",
    "fingerprint",
    "new_id",
    "plan_generate",
    "plan_process",
    "travelling_overrides",
    "watch_jobs",
    "StepContext",
    "StepOutcome",
    "run_step",
    "JobFiles",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_output_dir",
    "current_output",
    "read_json",
    "PrunePlan",
    "apply_prune",
    "find_orphaned_work",
    "remove_orphaned_work",
    "plan_prune",
    "UploadInfo",
    "UploadRejected",
    "check_upload",
    "remove_stale_uploads",
    "upload_path",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".planning": [
            "GenerationRequest",
            "ProcessPlan",
            "build_step_params",
            "fingerprint",
            "new_id",
            "plan_generate",
            "plan_process",
            "travelling_overrides",
            "watch_jobs",
        ],
        ".steps": ["StepContext", "StepOutcome", "run_step"],
        ".files": [
            "JobFiles",
            "atomic_write_bytes",
            "atomic_write_json",
            "check_output_dir",
            "current_output",
            "read_json",
        ],
        ".retention": ["PrunePlan", "apply_prune", "find_orphaned_work", "plan_prune", "remove_orphaned_work"],
        ".uploads": ["UploadInfo", "UploadRejected", "check_upload", "remove_stale_uploads", "upload_path"],
    },
)
