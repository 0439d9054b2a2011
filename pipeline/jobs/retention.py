"""Retention (``sdpipe prune``): what to remove of ended jobs older than a cut-off, and removing it.

:func:`plan_prune` only reads: the ended jobs (failed, succeeded, cancelled; or the states asked
for) whose last change is older than the cut-off, their work folders, the batches left with no job
(their records and manifests ``OUTPUT_DIR/batches/<id>.json``), with ``outputs`` each succeeded
job's image and sidecar, and the orphaned work folders that killed processes left (no record, or a
succeeded one, older than :data:`~pipeline.jobs.steps.ORPHAN_WORK_AGE_S`: the rule a starting
worker applies).
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
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.batches.manifests import manifest_key
from pipeline.errors import ConfigError, InputError, JobNotFound
from pipeline.jobs.files import STATE_DIR_NAME, JobFiles
from pipeline.jobs.thumbnails import thumbnail_keys
from pipeline.models import JobRecord, JobState
from pipeline.storage.base import Storage, blob_at, is_s3_url, open_storage
from pipeline.storage.local import LocalStorage
from pipeline.store.base import StatusStore

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = [
    "ORPHAN_WORK_AGE_S",
    "PruneTarget",
    "PrunePlan",
    "apply_prune",
    "find_orphaned_work",
    "remove_orphaned_work",
    "parse_age",
    "plan_prune",
]

logger = logging.getLogger(__name__)

#: A work folder whose job has no record, or has succeeded, is an orphan once it is this old: a
#: ``process`` job's folder is written just before its record is created, and a succeeded job's is
#: removed just after its success is recorded (a crash in between leaves it).
ORPHAN_WORK_AGE_S = 3600.0
#: Jobs read per page while planning.
_PAGE = 1000
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+)([smhdw])")
_ENDED = (JobState.FAILED, JobState.SUCCEEDED, JobState.CANCELLED)
_WORK_PREFIX = f"{STATE_DIR_NAME}/work/"


@dataclass(frozen=True)
class PruneTarget:
    """One thing a prune removes: a file or object, or a work folder (a prefix in a bucket)."""

    storage: Storage
    key: str
    folder: bool = False

    @property
    def location(self) -> str:
        return self.storage.location(self.key)

    def __str__(self) -> str:
        return self.location

    def exists(self) -> bool:
        path = self.storage.local_path(self.key)
        if path is not None:
            return path.exists()
        return bool(self.storage.list(self.key + "/")) if self.folder else self.storage.exists(self.key)

    def remove(self) -> bool:
        """Remove it; False if it was not there."""
        if not self.folder:
            return self.storage.delete(self.key)
        path = self.storage.local_path(self.key)
        if path is None:
            return self.storage.delete_prefix(self.key + "/") > 0
        existed = path.is_dir()
        shutil.rmtree(path, ignore_errors=True)
        return existed


@dataclass
class PrunePlan:
    """What a prune removes; every location absolute (a path, or ``s3://...``)."""

    jobs: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    #: Per job id: its work folder, and with ``outputs`` its image and sidecar (those that exist).
    job_files: dict[str, list[PruneTarget]] = field(default_factory=dict)
    manifests: list[PruneTarget] = field(default_factory=list)
    orphans: list[PruneTarget] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line per thing removed, ``KIND ID-OR-LOCATION``, in the order they are removed."""
        out = [f"job {job_id}" for job_id in self.jobs]
        out += [f"batch {batch_id}" for batch_id in self.batches]
        out += [f"file {target}" for job_id in self.jobs for target in self.job_files.get(job_id, [])]
        out += [f"manifest {target}" for target in self.manifests]
        out += [f"orphan {target}" for target in self.orphans]
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
    store: StatusStore, output: Storage | Path, *, now: float, older_than_s: float = ORPHAN_WORK_AGE_S
) -> dict[str, JobState | None]:
    """The work folders (prefixes) in ``output`` whose job the store does not have (None) or has as
    succeeded (nothing reads a succeeded job's intermediates), by job id, in order, left unchanged for
    ``older_than_s``: a folder's own change time on disk, its newest object in a bucket."""
    storage = LocalStorage(output.absolute()) if isinstance(output, Path) else output
    changed: dict[str, float] = {}
    folder = storage.local_path(_WORK_PREFIX.rstrip("/"))
    if folder is not None:
        try:
            for path in folder.iterdir():
                if path.is_dir():
                    changed[path.name] = path.stat().st_mtime
        except OSError:  # no work folder yet, or removed meanwhile
            pass
    else:
        newest: dict[str, float] = defaultdict(float)
        for entry in storage.list(_WORK_PREFIX):
            job_id = entry.key[len(_WORK_PREFIX) :].split("/", 1)[0]
            newest[job_id] = max(newest[job_id], entry.modified_at)
        changed = dict(newest)
    found: dict[str, JobState | None] = {}
    for job_id, modified_at in sorted(changed.items()):
        if now - modified_at < older_than_s:
            continue
        try:
            record = store.get(job_id)
        except JobNotFound:
            found[job_id] = None
            continue
        if record.state is JobState.SUCCEEDED:
            found[job_id] = record.state
    return found


def remove_orphaned_work(
    store: StatusStore, storage: Storage, *, now: float, older_than_s: float = ORPHAN_WORK_AGE_S
) -> int:
    """Remove the work folders (or prefixes) of ``storage`` that no job will read again
    (:func:`find_orphaned_work`), once older than ``older_than_s``; returns how many. Those of jobs
    ``store`` no longer has (Redis restarted without persistence: the records and the queued messages
    are gone, the folders stay), and those of succeeded jobs (a process killed between the success and
    the folder's removal). A Redis-mode worker does it when it starts, and an embedded process alone
    on its OUTPUT_DIR (when the work folders are there: see ``actors.runtime``)."""
    orphaned = find_orphaned_work(store, storage, now=now, older_than_s=older_than_s)
    for job_id in orphaned:
        JobFiles(storage, job_id).remove_work_dir()
    lost = sum(state is None for state in orphaned.values())
    where = storage.location(_WORK_PREFIX.rstrip("/"))
    if lost:
        reason = store.records_lost_reason
        logger.warning("removed %d work folder(s) under %s whose jobs' records are gone (%s)", lost, where, reason)
    if len(orphaned) > lost:
        logger.info(
            "removed %d work folder(s) under %s of jobs that succeeded (left by a process that ended before "
            "removing them)",
            len(orphaned) - lost,
            where,
        )
    return len(orphaned)


def plan_prune(
    store: StatusStore,
    output: Storage | Path,
    *,
    older_than_s: float,
    states: Iterable[JobState] | None = None,
    batch_id: str | None = None,
    outputs: bool = False,
    now: float | None = None,
    settings: Settings | None = None,
) -> PrunePlan:
    """What a prune of ended jobs last changed more than ``older_than_s`` ago would remove (reads only);
    ``states``: which ended states (default all three). ``output``: OUTPUT_DIR or OUTPUT_URL's storage,
    where manifests and orphaned work folders are looked for; ``settings`` open the storage of a job
    that travelled with another ``--out`` (and its ``s3://`` results).

    Raises:
        JobNotFound: ``batch_id`` names no batch (a unique prefix is enough).
        StoreUnavailable: the store cannot be reached.
    """
    storage = LocalStorage(output.absolute()) if isinstance(output, Path) else output
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
    thumbs: dict[str, list[str]] = {}  # a bucket's thumbnail folders, each listed once for the plan
    for record in records:
        plan.job_files[record.job_id] = _files_of(record, storage, settings, outputs=outputs, listed=thumbs)
    per_batch = Counter(r.batch_id for r in records if r.batch_id is not None)
    for each_batch, pruned in sorted(per_batch.items()):
        if sum(store.count_by_state(batch_id=each_batch).values()) > pruned:
            continue  # some of its jobs stay: so does the batch
        try:
            store.get_batch(each_batch)
        except JobNotFound:  # jobs that name a batch with no record (a lost one): nothing to remove
            continue
        plan.batches.append(each_batch)
        manifest = PruneTarget(storage, manifest_key(each_batch))
        if manifest.exists():
            plan.manifests.append(manifest)
    listed = {target.location for targets in plan.job_files.values() for target in targets}
    orphaned = find_orphaned_work(store, storage, now=now)
    orphans = [PruneTarget(storage, _WORK_PREFIX + job_id, folder=True) for job_id in orphaned]
    plan.orphans = [target for target in orphans if target.location not in listed]
    return plan


def apply_prune(store: StatusStore, plan: PrunePlan) -> PrunePlan:
    """Remove what ``plan`` lists; returns what was removed (the plan, less jobs that changed since)."""
    removed_ids = set(store.delete_jobs(plan.jobs))
    done = PrunePlan(jobs=[job_id for job_id in plan.jobs if job_id in removed_ids])
    for job_id in done.jobs:
        done.job_files[job_id] = [target for target in plan.job_files.get(job_id, []) if target.remove()]
    for batch_id in plan.batches:
        if store.delete_batch(batch_id):
            done.batches.append(batch_id)
    done.manifests = [target for target in plan.manifests if target.remove()]
    done.orphans = [target for target in plan.orphans if target.remove()]
    logger.info(
        "pruned %d job(s), %d batch(es), %d file(s)/folder(s), %d orphaned work folder(s)",
        len(done.jobs),
        len(done.batches),
        sum(len(targets) for targets in done.job_files.values()) + len(done.manifests),
        len(done.orphans),
    )
    return done


def _files_of(
    record: JobRecord,
    default: Storage,
    settings: Settings | None,
    *,
    outputs: bool,
    listed: dict[str, list[str]] | None = None,
) -> list[PruneTarget]:
    storage = default
    location = record.spec.output_dir
    if location and location != default.url:
        if is_s3_url(location):
            if settings is None:
                raise ConfigError(f"job {record.job_id} is in {location}: pass the settings to open it")
            storage = open_storage(location, settings)
        else:
            storage = LocalStorage(Path(location).absolute())
    files = JobFiles(storage, record.job_id)
    targets = [PruneTarget(storage, files.work_prefix.rstrip("/"), folder=True)]
    if outputs and record.result is not None:
        for where in (record.result.image, record.result.sidecar):
            if where:
                blob = blob_at(where, settings)
                targets.append(PruneTarget(blob.storage, blob.key))
    # The dashboard's thumbnail cache (beside the results): no use without the record
    targets += [PruneTarget(default, key) for key in thumbnail_keys(default, record.job_id, listed=listed)]
    return [target for target in targets if target.exists()]
