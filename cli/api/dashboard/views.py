"""What the job pages show beyond the API's own objects: a job's step timeline, its request as
JSON and as an ``sdpipe generate`` command line, and the words and classes of its state."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from typing import Any

from cli.api.schemas import JobView
from pipeline.models import STEP_NAMES, JobState

__all__ = ["STATE_LABELS", "StepLine", "generate_command", "request_json", "step_progress", "timeline"]

#: The words shown for each state (always with its colour, never colour alone).
STATE_LABELS = {
    JobState.QUEUED: "queued",
    JobState.GENERATING: "generating",
    JobState.SPLITTING: "splitting",
    JobState.BLURRING: "blurring",
    JobState.MERGING: "merging",
    JobState.SUCCEEDED: "succeeded",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class StepLine:
    """One step of a job's timeline."""

    name: str
    status: str  # "done", "skipped", "running", "failed", "waiting"
    attempts: int
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    error: str | None


def timeline(job: JobView, *, now: float | None = None) -> list[StepLine]:
    """Every step of ``job`` in pipeline order: done, running (with its time so far), failed (with
    the error), or still to come."""
    now = time.time() if now is None else now
    names: list[str] = [name for name in STEP_NAMES if job.kind != "process" or name != "generate"]
    names += [name for name in job.steps if name not in names]
    lines = []
    for name in names:
        step = job.steps.get(name)
        error = job.error.message if job.error is not None and job.error.step == name else None
        if step is None or step.attempts == 0:
            lines.append(StepLine(name, "waiting", 0, None, None, None, error))
            continue
        if step.finished_at is not None:
            status = "skipped" if step.skipped else "done"
            duration = step.duration_s
        elif job.state is JobState.FAILED and error is not None:
            status, duration = "failed", None
        elif job.state.terminal:
            status, duration = "stopped", None
        else:
            status = "running"
            duration = now - step.started_at if step.started_at is not None else None
        lines.append(StepLine(name, status, step.attempts, step.started_at, step.finished_at, duration, error))
    return lines


def step_progress(job: JobView) -> tuple[int, int]:
    """``(finished steps, steps)`` of the job, for its progress bar."""
    lines = timeline(job)
    return sum(line.status in ("done", "skipped") for line in lines), len(lines)


def request_json(job: JobView) -> str | None:
    """The A1111 request of a generation job as sent (``POST /sdapi/v1/txt2img``), as JSON."""
    if job.generation is None:
        return None
    return json.dumps(job.generation.to_payload(), indent=2, ensure_ascii=False)


def generate_command(job: JobView) -> str | None:
    """An ``sdpipe generate`` command line that renders the same image again (the seed the server
    used, the checkpoint, every other A1111 field as ``--param``), quoted for a POSIX shell."""
    generation = job.generation
    if generation is None:
        return None
    seed = job.sd_info.seed if job.sd_info is not None and job.sd_info.seed is not None else generation.seed
    words = ["sdpipe", "generate", generation.prompt]
    if generation.negative_prompt:
        words += ["--negative", generation.negative_prompt]
    words += ["--seed", str(seed), "--steps", str(generation.steps), "--cfg", f"{generation.cfg_scale:g}"]
    words += ["--width", str(generation.width), "--height", str(generation.height)]
    words += ["--sampler", generation.sampler_name, "--scheduler", generation.scheduler]
    overrides: dict[str, Any] = dict(generation.override_settings or {})
    checkpoint = overrides.pop("sd_model_checkpoint", None)
    if isinstance(checkpoint, str) and checkpoint:
        words += ["--model", checkpoint]
    for key, value in overrides.items():
        words += ["--override", f"{key}={json.dumps(value)}"]
    for key in ("enable_hr", "hr_scale", "hr_resize_x", "hr_resize_y"):
        value = getattr(generation, key)
        if value is not None:
            words += ["--param", f"{key}={json.dumps(value)}"]
    for key, value in generation.extra_fields.items():
        if key != "override_settings_restore_afterwards":
            words += ["--param", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    params = job.step_params
    words += ["--grid", params.grid, "--band-px", str(params.band_px), "--sigma", f"{params.sigma:g}"]
    if job.output_format != "png":
        words += ["--format", job.output_format]
    return shlex.join(words)
