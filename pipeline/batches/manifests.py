"""Batches: their manifests, and how a re-run (``--resume``, ``--skip-existing``) reuses finished work.

A batch groups the jobs submitted together. Its record in the status store maps every row (line
number, parameters) to its job ids; the manifest ``OUTPUT_DIR/batches/<batch id>.json`` adds each
job's state, output path or error, so a batch can be audited without the store.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.jobs.files import atomic_write_json
from pipeline.models import STEP_NAMES, BatchRecord, BatchRow, JobRecord, JobSpec, JobState, StepName
from pipeline.storage.base import Blob, Storage
from pipeline.storage.local import LocalStorage
from pipeline.store.base import StatusStore

__all__ = [
    "MANIFEST_DIR_NAME",
    "ResumePlan",
    "batch_records",
    "build_manifest",
    "contact_sheet_when_done",
    "manifest_key",
    "plan_resume",
    "retry_step",
    "write_manifest",
]

logger = logging.getLogger(__name__)

#: Folder under OUTPUT_DIR holding one manifest per batch.
MANIFEST_DIR_NAME = "batches"
#: States in which a job is still on its way (a re-run leaves it alone).
_IN_FLIGHT = frozenset(state for state in JobState if not state.terminal)


def batch_records(store: StatusStore, batch: BatchRecord) -> dict[str, JobRecord]:
    """Every job of ``batch`` by id, read from the batch index in one pass (superseded ones too)."""
    total = sum(store.count_by_state(batch_id=batch.batch_id).values())
    records = store.list_jobs(batch_id=batch.batch_id, limit=max(total, len(batch.job_ids), 1))
    return {record.job_id: record for record in records}


def build_manifest(batch: BatchRecord, records: dict[str, JobRecord], *, now: float | None = None) -> dict[str, Any]:
    """The manifest: every row with its parameters and its jobs' states, outputs or errors."""
    counts: Counter[str] = Counter()
    rows = []
    for row in batch.rows:
        jobs = []
        for job_id in row.job_ids:
            record = records.get(job_id)
            state = record.state.value if record is not None else "missing"
            counts[state] += 1
            entry: dict[str, Any] = {"job_id": job_id, "state": state}
            if record is not None and record.result:
                entry["output"] = record.result.image
                entry["sidecar"] = record.result.sidecar
            if record is not None and record.error is not None and record.state is not JobState.SUCCEEDED:
                entry["error"] = f"{record.error.step}: {record.error.message}"
            jobs.append(entry)
        entry_row: dict[str, Any] = {"line": row.line, "params": row.params, "jobs": jobs}
        if row.already_rendered:
            entry_row["already_rendered"] = row.already_rendered  # --skip-existing: rendered by an earlier batch
        rows.append(entry_row)
    return {
        "batch_id": batch.batch_id,
        "source": batch.source,
        "schedule": batch.schedule,
        "created_at": batch.created_at,
        "written_at": time.time() if now is None else now,
        "counts": dict(sorted(counts.items())),
        "jobs": sum(counts.values()),
        "rows": rows,
    }


def contact_sheet_when_done(store: StatusStore, batch_id: str, output: Storage | Path) -> str | None:
    """The batch's contact sheet, written if every job of the batch has ended (else None).

    Called after each job of a ``--contact-sheet`` batch ends, by whichever worker ends it: each checks
    after recording its own end, so the last to finish sees the batch complete (two may: the sheet is
    published once).
    """
    from pipeline.images.contact_sheet import write_contact_sheet

    batch = store.get_batch(batch_id)
    records = batch_records(store, batch)
    if any(job not in records or not records[job].state.terminal for job in batch.job_ids):
        return None
    return write_contact_sheet(build_manifest(batch, records), output)


def manifest_key(batch_id: str) -> str:
    """The key of a batch's manifest in its storage: ``batches/<batch id>.json``."""
    return f"{MANIFEST_DIR_NAME}/{batch_id}.json"


def write_manifest(output: Storage | Path, manifest: dict[str, Any]) -> str:
    """Write ``batches/<batch id>.json`` atomically into OUTPUT_DIR (a folder) or OUTPUT_URL; its location."""
    storage = LocalStorage(output.absolute()) if isinstance(output, Path) else output
    blob = Blob(storage, manifest_key(manifest["batch_id"]))
    atomic_write_json(blob, manifest)
    return blob.location


def retry_step(record: JobRecord) -> StepName:
    """The step a retry restarts from: the one that failed, else the first that did not finish."""
    steps = [step for step in STEP_NAMES if not (step == "generate" and record.spec.kind in ("process", "upscale"))]
    if record.error is not None and record.error.step in steps:
        return record.error.step
    for step in steps:
        info = record.steps.get(step)
        if info is None or info.finished_at is None:
            return step
    return steps[-1]


@dataclass
class ResumePlan:
    """What a re-run of a batch file does: new jobs, failed jobs to retry, rows already done."""

    batch: BatchRecord
    new_specs: list[JobSpec] = field(default_factory=list)
    retry: list[JobRecord] = field(default_factory=list)
    #: Unfinished jobs of the batch that no row matches any more: to cancel.
    superseded: list[str] = field(default_factory=list)
    succeeded: int = 0
    in_flight: int = 0


def plan_resume(
    store: StatusStore,
    rows: Sequence[tuple[int, dict[str, Any], list[JobSpec]]],
    *,
    batch: BatchRecord | None,
    skip_existing: bool,
    new_batch_id: str,
    source: str | None,
    schedule: str | None = None,
    now: float,
) -> ResumePlan:
    """Match a freshly planned file against earlier work so nothing renders twice.

    ``rows`` are ``(line, params, specs)`` as planned now. With ``batch`` (``--resume ID``) each
    spec is matched to a job of that batch with the same fingerprint: succeeded or in flight ->
    kept, failed or cancelled -> retried (same job, from the step that failed), unmatched -> new.
    With ``skip_existing`` (no batch) a spec whose fingerprint any succeeded job has is skipped.
    """
    existing: dict[str, list[JobRecord]] = defaultdict(list)
    if batch is not None:
        for record in sorted(batch_records(store, batch).values(), key=lambda r: r.job_id):
            if record.spec.fingerprint:
                existing[record.spec.fingerprint].append(record)
    done_fingerprints: set[str] = set()
    if skip_existing and batch is None:
        fingerprints = [spec.fingerprint for _, _, specs in rows for spec in specs if spec.fingerprint]
        done_fingerprints = store.succeeded_fingerprints(fingerprints)

    target = batch or BatchRecord(batch_id=new_batch_id, created_at=now, source=source, schedule=schedule)
    plan = ResumePlan(batch=target)
    new_rows = []
    for line, params, specs in rows:
        job_ids = []
        already = 0
        for spec in specs:
            fingerprint = spec.fingerprint
            matches = existing.get(fingerprint or "", [])
            if matches:
                record = matches.pop(0)
                job_ids.append(record.job_id)
                if record.state is JobState.SUCCEEDED:
                    plan.succeeded += 1
                elif record.state in _IN_FLIGHT:
                    plan.in_flight += 1
                else:
                    plan.retry.append(record)
                continue
            if fingerprint is not None and fingerprint in done_fingerprints:
                plan.succeeded += 1
                already += 1
                continue
            moved = spec if spec.batch_id == target.batch_id else spec.model_copy(update={"batch_id": target.batch_id})
            plan.new_specs.append(moved)
            job_ids.append(moved.job_id)
        new_rows.append(BatchRow(line=line, params=params, job_ids=job_ids, already_rendered=already))
    target.rows = new_rows
    plan.superseded = sorted(
        record.job_id for left in existing.values() for record in left if record.state in _IN_FLIGHT
    )
    logger.info(
        "batch %s: %d new, %d to retry, %d already done, %d in flight",
        target.batch_id,
        len(plan.new_specs),
        len(plan.retry),
        plan.succeeded,
        plan.in_flight,
    )
    return plan
