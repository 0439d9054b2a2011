"""A job's files in its storage (a folder, or an S3-compatible bucket): output naming, each job's work
area, and the arrays files the steps hand each other.

Every write is atomic (:mod:`pipeline.storage`: temporary file, rename on disk; one PUT in a
bucket), so a crash leaves either the old file or the new one, never half of one.

Layout under ``OUTPUT_DIR`` (or ``OUTPUT_URL``'s prefix)::

    <name>.png / .webp / .jpg      final image (<name> from OUTPUT_NAME; may hold folders: 20261207/fox-7)
    <name>.json                    its sidecar (first written as the claim of <name>: see claim_output_name)
    .sdpipe/status.sqlite3         embedded-mode status store (always in the local OUTPUT_DIR)
    .sdpipe/work/<job id>/         intermediates, removed when the job succeeds (kept on failure)
        source.img                 the image as received or ingested (its presence = step done);
                                   from the SD server, what it said comes first, in the same file
                                   (:meth:`JobFiles.write_sd_answer`)
        output_name                the output name this job claimed, when it is not the one wanted
                                   (a counter added); fixed once
        tiles.arrays               split output: the manifest (size, mode, infotext, tile boxes)
                                   and every tile's raw pixels with halos, in one file
        blurred.arrays             seam-blur output: only the seam bands of each tile (the rest of
                                   the blurred tiles is tiles.arrays' pixels, which the merge reads)

Each step writes one intermediate (one atomic write), whose presence means the step is done: an
arrays file (:mod:`pipeline.jobs.arrays`: a JSON header, then raw C-order bytes: no image
re-encoding, no per-tile files). The SD answer is written durably (it was paid for); the arrays
files are not (``durable=False``: no fsync; they are gone again before the kernel would write them
out), so a step trusts one only when the storage says it is whole and makes it again otherwise.

Workers on several machines must share the storage: the same ``OUTPUT_DIR`` (a shared filesystem
such as NFS), or, sharing nothing but Redis, the same ``OUTPUT_URL`` bucket.
"""

from __future__ import annotations

import itertools
import json
import logging
import struct
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError, InputError
from pipeline.jobs.naming import check_output_name, is_name_char, slugify
from pipeline.storage.base import Blob, Storage, blob_at, open_storage
from pipeline.storage.local import FILE_MODE, LocalStorage, atomic_write_bytes, remove_stale_temps

if TYPE_CHECKING:
    from pipeline.models import JobRecord
    from pipeline.settings import Settings

__all__ = [
    "JobFiles",
    "atomic_write_bytes",
    "atomic_write_json",
    "FILE_MODE",
    "check_output",
    "check_output_dir",
    "claim_output_name",
    "current_output",
    "default_output_name",
    "iso_time",
    "read_json",
    "remove_stale_temps",
    "safe_output_stem",
    "slugify",
]

logger = logging.getLogger(__name__)

#: Folder under OUTPUT_DIR for sdpipe's own files (status database, work folders).
STATE_DIR_NAME = ".sdpipe"
#: First bytes of a source image saved with the SD server's answer (:meth:`JobFiles.write_sd_answer`);
#: no image format starts so, and an ingested input has no such prefix.
SD_ANSWER_MAGIC = b"SDPIPE-SD-ANSWER-1\n"
#: Extension of each output format.
FORMAT_EXTENSIONS = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}


def atomic_write_json(target: Path | Blob, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically (a local file, or an object of a storage)."""
    data = (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode()
    if isinstance(target, Blob):
        target.write(data)
    else:
        atomic_write_bytes(target, data)


def iso_time(ts: float) -> str:
    """Epoch seconds as sdpipe writes moments (sidecars, ``--json``): ISO 8601, UTC, milliseconds,
    e.g. ``2026-12-07T13:20:01.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def read_json(target: Path | Blob) -> Any:
    """Read a JSON file (or object) written by :func:`atomic_write_json`."""
    return json.loads(target.read_bytes())


def default_output_name(created_at: float, job_id: str, label: str) -> str:
    """``<YYYYmmdd-HHMMSS>-<job id prefix>-<slug of label>``, from the job's creation time (local, as A1111)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(created_at))
    return f"{stamp}-{job_id[:8]}-{slugify(label)}"


def safe_output_stem(name: str) -> str:
    """Check a user-given output name stays a plain file name inside OUTPUT_DIR.

    Raises:
        InputError: the name is empty, absolute, has a path separator or ``..``, or odd characters.
    """
    stem = name.strip()
    for ext in FORMAT_EXTENSIONS.values():
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    if not stem or stem in (".", "..") or stem.startswith(".") or "/" in stem or "\\" in stem:
        raise InputError(
            f"output name {name!r} would leave OUTPUT_DIR",
            field="name",
            value=name,
            expected="a plain file name without / or ..",
        )
    if not all(is_name_char(char) for char in stem) or len(stem) > 200:
        raise InputError(
            f"output name {name!r} has characters that are not allowed",
            field="name",
            value=name,
            limit=200,
            expected="letters, digits, spaces, '.', '_' and '-' (at most 200)",
        )
    return stem


def check_output_dir(output_dir: Path) -> Path:
    """Create OUTPUT_DIR if needed and prove it is writable; return its absolute path.

    Raises:
        InputError: it is a file, or cannot be created or written.
    """
    path = output_dir.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise InputError(
            f"OUTPUT_DIR {path} is a file, not a folder", field="OUTPUT_DIR", value=str(path), expected="a folder"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".sdpipe-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise InputError(
            f"OUTPUT_DIR {path} is not writable ({exc.strerror or exc})",
            field="OUTPUT_DIR",
            value=str(path),
            expected="a writable folder",
        ) from exc
    return path


def check_output(settings: Settings) -> str:
    """Prove the output location is writable: OUTPUT_DIR (created if needed), or with OUTPUT_URL its
    bucket (a probe object written and removed); its location.

    Raises:
        InputError: OUTPUT_DIR is a file, or cannot be created or written.
        StorageRefused, StorageUnavailable: the bucket refuses the write or cannot be reached.
    """
    if settings.output_url is None:
        return str(check_output_dir(settings.output_dir))
    storage = open_storage(settings.output_url, settings)
    probe = f"{STATE_DIR_NAME}/probe-{uuid.uuid4().hex}"
    storage.write(probe, b"")
    storage.delete(probe)
    return storage.url


class JobFiles:
    """One job's files; every key derives from the storage (OUTPUT_DIR or OUTPUT_URL) and the job id only.

    ``storage`` may be a folder (a :class:`~pathlib.Path`): a local storage there.
    """

    def __init__(self, storage: Storage | Path, job_id: str) -> None:
        self.storage: Storage = LocalStorage(storage) if isinstance(storage, Path) else storage
        self.job_id = job_id
        #: The work area's key prefix (a folder on disk), ``/``-ended.
        self.work_prefix = f"{STATE_DIR_NAME}/work/{job_id}/"

    def work(self, name: str) -> Blob:
        """An intermediate of this job (``upscale/tile-3.png``)."""
        return Blob(self.storage, self.work_prefix + name)

    @property
    def work_location(self) -> str:
        """Where the intermediates are: a folder, or an ``s3://`` prefix."""
        return self.storage.location(self.work_prefix.rstrip("/"))

    @property
    def work_dir(self) -> Path:
        """The local work folder (local storage only)."""
        path = self.storage.local_path(self.work_prefix.rstrip("/"))
        if path is None:
            raise ValueError(f"{self.storage.url} is not a local folder")
        return path

    @property
    def sd_info(self) -> Blob:
        """What the SD server said, in the work folders of jobs generated before it went into
        ``source.img`` (read by :meth:`read_sd_answer` only)."""
        return self.work("sd.json")

    @property
    def source(self) -> Blob:
        """The job's input image (read it with :meth:`source_image`): ingested as it was given, or
        the SD server's answer (:meth:`write_sd_answer`)."""
        return self.work("source.img")

    def write_sd_answer(self, image: bytes, sd_info: dict[str, Any]) -> None:
        """Save the SD server's image with what it said, in one durable write: the generate step is
        done once it is there, and a redelivery on any machine reads both from it, never asking the
        server again. Layout: :data:`SD_ANSWER_MAGIC`, the JSON's length (uint32, little-endian), the
        JSON, then the image's bytes as received."""
        info = json.dumps(sd_info, ensure_ascii=False).encode()
        self.source.write([SD_ANSWER_MAGIC + struct.pack("<I", len(info)) + info, image])

    def read_sd_answer(self) -> dict[str, Any]:
        """What the SD server said, as :meth:`write_sd_answer` saved it (or, for a job generated
        before, its ``sd.json``).

        Raises:
            FileNotFoundError: not saved.
        """
        info, _ = _split_source(self.source.read_bytes())
        if info is not None:
            return info
        found = read_json(self.sd_info)
        if not isinstance(found, dict):
            raise ValueError(f"{self.sd_info} is not a JSON object")
        return found

    def source_image(self) -> bytes:
        """The bytes of the job's input image, without what the SD server said.

        Raises:
            FileNotFoundError: there is none.
        """
        return _split_source(self.source.read_bytes())[1]

    @property
    def tiles(self) -> Blob:
        """The split step's output (manifest and tiles, :func:`atomic_save_arrays`)."""
        return self.work("tiles.arrays")

    @property
    def blurred(self) -> Blob:
        """The seam-blur step's output: the seam bands of the tiles (where each goes, and its pixels)."""
        return self.work("blurred.arrays")

    @property
    def claimed_name(self) -> Blob:
        """The output name this job claimed (:func:`claim_output_name`), once it has."""
        return self.work("output_name")

    def image(self, output_name: str, output_format: str) -> Blob:
        return Blob(self.storage, output_name + FORMAT_EXTENSIONS[output_format])

    def sidecar(self, output_name: str) -> Blob:
        return Blob(self.storage, output_name + ".json")

    def remove_work_dir(self) -> None:
        """Delete the intermediates (after success)."""
        self.storage.delete_prefix(self.work_prefix)


def _split_source(data: bytes) -> tuple[dict[str, Any] | None, bytes]:
    """What the SD server said (None: an ingested input) and the image's bytes, from ``source.img``."""
    if not data.startswith(SD_ANSWER_MAGIC):
        return None, data
    start = len(SD_ANSWER_MAGIC) + 4
    (length,) = struct.unpack_from("<I", data, len(SD_ANSWER_MAGIC))
    info = json.loads(data[start : start + length])
    if not isinstance(info, dict):
        raise ValueError(f"what the SD server said is not an object: {info!r:.80}")
    return info, data[start + length :]


#: Digits of the counter that keeps outputs apart: ``same.png``, ``same-0001.png``, ``same-0002.png``.
COUNTER_DIGITS = 4


def claim_output_name(files: JobFiles, name: str, output_format: str, *, overwrite: bool = False) -> str:
    """The output name (without extension) this job writes: ``name``, or ``name-0001``, ``name-0002``...
    when an earlier file has it, never another job's or a file sdpipe did not write (A1111's rule).

    Fixed once per job, so a re-run never makes a second file. A name is claimed by creating its
    sidecar exclusively (a hard link of a complete file) with the job's id, so two jobs merging at
    once cannot take the same one; the claim is replaced by the full sidecar on merge. A later
    delivery or retry of the job walks the same names and stops at its own claim; a name with a
    counter is also recorded in the job's work folder and read back, so the job keeps it even if an
    earlier name is freed meanwhile. With ``overwrite`` the name is used as it is, replacing what is
    there.

    Raises:
        InputError: the name would leave OUTPUT_DIR (through ``..``, an absolute path or a symlink).
    """
    recorded: str | None = None
    try:
        recorded = files.claimed_name.read_text()
    except FileNotFoundError:
        pass
    else:
        if _keep_name(files, recorded):
            return recorded
        # Its claim was lost (a crash before its folder was synced) and another job took the name
        # meanwhile: this job walks the names again, as if it had claimed none.
        logger.warning("job %s: output name %r was taken by another job; choosing again", files.job_id, recorded)
    check_output_name(name)
    root = files.storage.local_path("")
    if root is not None and not (root / name).parent.resolve().is_relative_to(root.resolve()):
        raise InputError(
            f"output name {name!r} leads outside OUTPUT_DIR (through a symlinked folder)",
            field="--name-template",
            value=name,
            expected="folders inside OUTPUT_DIR",
        )
    if overwrite:
        return name
    for counter in itertools.count():
        chosen = name if counter == 0 else f"{name}-{counter:0{COUNTER_DIGITS}d}"
        if _take_name(files, chosen, output_format):
            break
    if chosen != name or recorded is not None:
        # The walk of a later delivery would stop at a name freed meanwhile: this one is written down
        # (and one recorded before, found taken, is replaced).
        files.claimed_name.write(chosen.encode())
    return chosen


def _keep_name(files: JobFiles, name: str) -> bool:
    """Whether ``name``, recorded as this job's, still is: its sidecar names the job, or there is none
    (the claim, whose folder is not synced, was lost to a crash) and it is claimed again. An image
    without a sidecar under a recorded name is this job's own, written before such a crash: every
    sdpipe job claims a name before it writes its image."""
    sidecar = files.sidecar(name)
    if not sidecar.exists() and sidecar.create(_claim(files)):
        return True
    return _sidecar_owner(sidecar) == files.job_id


def _claim(files: JobFiles) -> bytes:
    claim = {"job_id": files.job_id, "claimed": True, "note": "reserved for this job; replaced when it succeeds"}
    return (json.dumps(claim) + "\n").encode()


def _take_name(files: JobFiles, name: str, output_format: str) -> bool:
    """Whether ``name`` is (now) this job's: its sidecar names the job, or it was free and is claimed."""
    sidecar = files.sidecar(name)
    if sidecar.exists():
        return _sidecar_owner(sidecar) == files.job_id
    if files.image(name, output_format).exists():
        return False  # a file sdpipe did not write (or whose sidecar is gone): never replaced unasked
    # Created exclusively and whole (a hard link of a complete file on disk, also on NFS; a conditional
    # PUT in a bucket): a worker killed meanwhile never leaves an empty claim that holds the name for nobody.
    if sidecar.create(_claim(files)):
        return True
    return _sidecar_owner(sidecar) == files.job_id  # another job claimed it between the check and here


def _sidecar_owner(sidecar: Blob) -> str | None:
    try:
        owner = read_json(sidecar).get("job_id")
    except (OSError, ValueError, AttributeError):
        return None  # unreadable, gone, or not ours: taken
    return owner if isinstance(owner, str) else None


def current_output(record: JobRecord, settings: Settings | None = None) -> Blob | None:
    """The image a succeeded job wrote, if it is still that job's image (``settings``: the credentials
    of an ``s3://`` result).

    None when the job has no result, its file is gone, or a later job with the same output name (a
    batch row's ``name``) replaced it: that job's sidecar then names it.
    """
    if not record.result or not record.result.image:
        return None
    try:
        image = blob_at(record.result.image, settings)
        sidecar = record.result.sidecar
        owner = read_json(blob_at(sidecar, settings)).get("job_id") if sidecar else record.job_id
    except (OSError, ValueError, AttributeError, ConfigError):
        owner = None
    return image if owner == record.job_id and image.exists() else None
