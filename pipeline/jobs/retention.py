"""Retention (``sdpipe prune``): what to remove of ended jobs older than a cut-off, and removing it.

:func:`plan_prune` only reads: the ended jobs (failed, succeeded, cancelled; or the states asked
for) whose last change is older than the cut-off, their work folders, the batches left with no job
(their records and manifests ``OUTPUT_DIR/batches/<id>.json``), with ``outputs`` each succeeded
job's image and sidecar, and the orphaned work folders that killed processes left (no record, older
than :data:`~pipeline.jobs.steps.ORPHAN_WORK_AGE_S`, the rule a starting worker applies).
:func:`apply_prune` removes exactly that plan, so a dry run lists what the real run removes.

Records go first, then files, and only the files of jobs whose record was removed: a job retried
since the plan (queued again) keeps its work folder. A crash in between leaves work folders that the
orphan rule finds later. Nothing here is irreversible beyond what the plan lists.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.batches.manifests import MANIFEST_DIR_NAME
from pipeline.errors import InputError, JobNotFound
from pipeline.jobs.files import STATE_DIR_NAME, JobFiles
from pipeline.jobs.thumbnails import thumbnail_paths
from pipeline.models import JobRecord, JobState
from pipeline.store.base import StatusStore

__all__ = ["ORPHAN_WORK_AGE_S", "PrunePlan", "apply_prune", "find_orphaned_work", "parse_age", "plan_prune"]

logger = logging.getLogger(__name__)

#: A work folder whose job has no record is an orphan once it is this old: a ``process`` job's
#: folder is written just before its record is created.
ORPHAN_WORK_AGE_S = 3600.0
#: Jobs read per page while planning.
_PAGE = 1000
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+)([smhdw])")
_ENDED = (JobState.FAILED, JobState.SUCCEEDED, JobState.CANCELLED)


@dataclass
class PrunePlan:
    """What a prune removes; every path absolute."""

    jobs: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    #: Per job id: its work folder, and with ``outputs`` its image and sidecar (those that exist).
    job_files: dict[str, list[Path]] = field(default_factory=dict)
    manifests: list[Path] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line per thing removed, ``KIND ID-OR-PATH``, in the order they are removed."""
        out = [f"job {job_id}" for job_id in self.jobs]
        out += [f"batch {batch_id}" for batch_id in self.batches]
        out += [f"file {path}" for job_id in self.jobs for path in self.job_files.get(job_id, [])]
        out += [f"manifest {path}" for path in self.manifests]
        out += [f"orphan {path}" for path in self.orphans]
        return out


def parse_age(text: str, *, field_name: str = "--older-than") -> float:
    """``30d``, ``12h``, ``90m``, ``0s``, ``2w`` -> seconds.

    Raises:
        InputError: anything else.
    """
    match = _AGE.fullmatch(text.strip().lower())
    if match is None:
        raise InputError(f"invalid age {text!r}", field=field_name, value=text, expected="30d, 12h, 90m or 0s")
    return float(int(match.group(1)) * _UNIT_S[match.group(2)])


def find_orphaned_work(
    store: StatusStore, output_dir: Path, *, now: float, older_than_s: float = ORPHAN_WORK_AGE_S
) -> list[Path]:
    """Work folders under ``output_dir`` whose job the store does not have, older than ``older_than_s``."""
    work = output_dir.absolute() / STATE_DIR_NAME / "work"
    try:
        folders = sorted(path for path in work.iterdir() if path.is_dir())
    except OSError:  # no work folder yet
        return []
    found = []
    for folder in folders:
        try:
            if now - folder.stat().st_mtime < older_than_s:
                continue
            store.get(folder.name)
        except JobNotFound:
            found.append(folder)
        except OSError:  # removed meanwhile
            continue
    return found


def plan_prune(
    store: StatusStore,
    output_dir: Path,
    *,
    older_than_s: float,
    states: Iterable[JobState] | None = None,
    batch_id: str | None = None,
    outputs: bool = False,
    now: float | None = None,
) -> PrunePlan:
    """What a prune of ended jobs last changed more than ``older_than_s`` ago would remove (reads only);
    ``states``: which ended states (default all three).

    Raises:
        JobNotFound: ``batch_id`` names no batch (a unique prefix is enough).
        StoreUnavailable: the store cannot be reached.
    """
    now = time.time() if now is None else now
    cutoff = now - older_than_s
    if batch_id is not None:
        batch_id = store.get_batch(batch_id).batch_id
    wanted = [state for state in (states or _ENDED) if state.terminal]
    records: list[JobRecord] = []
    for state in wanted:
        offset = 0
        while True:
            page = store.list_jobs(state=state, batch_id=batch_id, limit=_PAGE, offset=offset)
            records += [r for r in page if r.updated_at < cutoff]
            if len(page) < _PAGE:
                break
            offset += _PAGE
    records.sort(key=lambda r: (r.updated_at, r.job_id))
    plan = PrunePlan(jobs=[r.job_id for r in records])
    for record in records:
        plan.job_files[record.job_id] = _files_of(record, output_dir, outputs=outputs)
    per_batch = Counter(r.batch_id for r in records if r.batch_id is not None)
    for each_batch, pruned in sorted(per_batch.items()):
        if sum(store.count_by_state(batch_id=each_batch).values()) > pruned:
            continue  # some of its jobs stay: so does the batch
        plan.batches.append(each_batch)
        manifest = output_dir.absolute() / MANIFEST_DIR_NAME / f"{each_batch}.json"
        if manifest.exists():
            plan.manifests.append(manifest)
    listed = {path for paths in plan.job_files.values() for path in paths}
    plan.orphans = [p for p in find_orphaned_work(store, output_dir, now=now) if p not in listed]
    return plan


def apply_prune(store: StatusStore, plan: PrunePlan) -> PrunePlan:
    """Remove what ``plan`` lists; returns what was removed (the plan, less jobs that changed since)."""
    removed_ids = set(store.delete_jobs(plan.jobs))
    done = PrunePlan(jobs=[job_id for job_id in plan.jobs if job_id in removed_ids])
    for job_id in done.jobs:
        done.job_files[job_id] = [path for path in plan.job_files.get(job_id, []) if _remove(path)]
    for batch_id in plan.batches:
        if store.delete_batch(batch_id):
            done.batches.append(batch_id)
    done.manifests = [path for path in plan.manifests if _remove(path)]
    done.orphans = [path for path in plan.orphans if _remove(path)]
    logger.info(
        "pruned %d job(s), %d batch(es), %d file(s)/folder(s), %d orphaned work folder(s)",
        len(done.jobs),
        len(done.batches),
        sum(len(paths) for paths in done.job_files.values()) + len(done.manifests),
        len(done.orphans),
    )
    return done


def _files_of(record: JobRecord, output_dir: Path, *, outputs: bool) -> list[Path]:
    base = Path(record.spec.output_dir) if record.spec.output_dir else output_dir
    paths = [JobFiles(base.absolute(), record.job_id).work_dir]
    if outputs and record.result is not None:
        paths += [Path(p) for p in (record.result.image, record.result.sidecar) if p]
    paths += thumbnail_paths(output_dir.absolute(), record.job_id)  # the dashboard's cache: no use without the record
    return [path for path in paths if path.exists()]


def _remove(path: Path) -> bool:
    """Remove a file or folder; False if it was not there."""
    try:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    return True
