"""The Storage contract, the same for a local folder and an S3 bucket (the test S3 server: the
``storage`` fixture is each of them)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipeline.errors import ConfigError, StorageRefused, StorageUnavailable
from pipeline.settings import Settings
from pipeline.storage import Blob, Storage, blob_at, open_storage, parse_s3_url
from pipeline.storage.local import LocalStorage, boot_time
from tests.conftest import S3Bucket


def test_storage_writes_reads_and_lists_whole_objects(storage: Storage) -> None:
    # Given objects written whole, one of them in pieces (an arrays file)
    storage.write("a/one.png", b"\x89PNG one")
    storage.write("a/b/two.json", [b'{"x":', memoryview(b" 2}")])
    # Then each reads back exactly, and is listed under its folder (recursively, sorted)
    assert storage.read("a/one.png") == b"\x89PNG one"
    assert storage.read("a/b/two.json") == b'{"x": 2}'
    assert [entry.key for entry in storage.list("a/")] == ["a/b/two.json", "a/one.png"]
    assert [entry.size for entry in storage.list("a/b/")] == [8]
    assert storage.exists("a/one.png") and not storage.exists("a/missing.png")
    with pytest.raises(FileNotFoundError):
        storage.read("a/missing.png")
    # And a location maps back to its key
    assert storage.key_of(storage.location("a/one.png")) == "a/one.png"
    blob = blob_at(storage.location("a/one.png"), _settings_of(storage))
    assert blob.read_bytes() == b"\x89PNG one"


def test_storage_reads_only_the_byte_ranges_asked(storage: Storage) -> None:
    data = bytes(range(256)) * 400  # 100 KiB, every offset's byte known
    storage.write("big.arrays", data)
    ranges = [(0, 10), (5000, 5100), (5100, 5101), (len(data) - 7, len(data))]
    assert storage.read_ranges("big.arrays", ranges) == [data[start:end] for start, end in ranges]
    assert storage.read_ranges("big.arrays", []) == []
    # A range past the end: the object is shorter than its reader expects, said as such
    with pytest.raises(ValueError, match="cut short"):
        storage.read_ranges("big.arrays", [(len(data) - 4, len(data) + 4)])
    with pytest.raises(ValueError, match="cut short"):
        storage.read_ranges("big.arrays", [(len(data) + 10, len(data) + 20)])
    with pytest.raises(ValueError, match="empty"):
        storage.read_ranges("big.arrays", [(10, 10)])
    with pytest.raises(FileNotFoundError):
        storage.read_ranges("missing.arrays", [(0, 1)])


def test_storage_streams_an_object_in_chunks_with_its_size(storage: Storage) -> None:
    data = np.random.default_rng(5).integers(0, 256, 3 * 1024 * 1024, dtype=np.uint8).tobytes()
    storage.write("out/large.png", data)
    download = Blob(storage, "out/large.png").stream(chunk_bytes=256 * 1024)
    chunks = list(download.chunks)
    assert download.size == len(data)
    assert b"".join(chunks) == data
    assert len(chunks) > 1 and max(len(chunk) for chunk in chunks) < len(data)  # never the object whole
    with pytest.raises(FileNotFoundError):
        storage.stream("out/missing.png")


@pytest.mark.parametrize("durable", [True, False])
def test_storage_create_takes_a_key_once(storage: Storage, durable: bool) -> None:
    # When two writers create the same key (synced or not: an upscale's output pieces are not)
    assert storage.create("names/same.json", b'{"job_id": "first"}', durable=durable) is True
    assert storage.create("names/same.json", b'{"job_id": "second"}', durable=durable) is False
    # Then the first one's content stays
    assert storage.read("names/same.json") == b'{"job_id": "first"}'


def test_storage_delete_and_delete_prefix_remove_only_what_they_name(storage: Storage) -> None:
    for key in (".sdpipe/work/j1/source.img", ".sdpipe/work/j1/upscale/tile-0.png", ".sdpipe/work/j10/x", "keep.png"):
        storage.write(key, b"x")
    assert storage.delete_prefix(".sdpipe/work/j1/") == 2
    assert [entry.key for entry in storage.list("")] == [".sdpipe/work/j10/x", "keep.png"]
    assert storage.delete("keep.png") is True
    assert storage.delete("keep.png") is False


def test_storage_trusts_an_unsynced_write_while_it_exists(storage: Storage) -> None:
    # Given an intermediate written without fsync (durable=False) in a folder that did not exist
    storage.write(".sdpipe/work/j2/tiles.arrays", b"tiles", durable=False)
    # Then it reads back and is trusted whole; a missing one is not
    assert storage.read(".sdpipe/work/j2/tiles.arrays") == b"tiles"
    assert storage.exists_unsynced(".sdpipe/work/j2/tiles.arrays")
    assert not storage.exists_unsynced(".sdpipe/work/j2/blurred.arrays")
    assert not storage.exists_unsynced(".sdpipe/work/j2/tiles.arrays/inside")


def test_local_storage_distrusts_an_unsynced_file_from_before_the_machine_started(tmp_path: Path) -> None:
    # Given a file whose last write is older than this machine's start (written before a crash)
    storage = LocalStorage(tmp_path)
    storage.write("work/tiles.arrays", b"maybe cut", durable=False)
    before_boot = boot_time() - 60
    os.utime(tmp_path / "work" / "tiles.arrays", (before_boot, before_boot))
    # Then it exists, but is not trusted as an unsynced write (a durable one would be)
    assert storage.exists("work/tiles.arrays")
    assert not storage.exists_unsynced("work/tiles.arrays")
    # And the boot time is in the past, stable within the process
    assert boot_time() < time.time() and boot_time() == boot_time()


def test_local_storage_syncs_what_a_crash_must_not_lose_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given every fsync recorded as the file or folder it synced
    synced: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    storage = LocalStorage(tmp_path)
    storage.write("a.png", b"image")  # durable: the file, then its folder (the rename)
    assert synced == ["file", "folder"]
    synced.clear()
    storage.write("work/new/b.arrays", b"tiles", durable=False)  # made again if lost: nothing synced
    assert synced == []
    storage.write("c.png", b"image", sync_folder=False)  # the caller's next write syncs the folder
    assert synced == ["file"]
    synced.clear()
    storage.write("d/e/f.png", b"image")  # new folders: each synced in its parent, then the file's
    assert synced == ["folder", "folder", "file", "folder"]
    synced.clear()
    assert storage.create("g.json", b"{}")  # a claim: whole, its name free again if a crash loses it
    assert synced == ["file"]


def test_storage_presigned_url_reads_the_object_without_credentials(storage: Storage) -> None:
    storage.write("out/image.png", b"pixels")
    url = storage.presign_get("out/image.png", 60)
    if storage.local_path("") is not None:
        assert url is None  # a folder has no URL: the API serves the file itself
        return
    assert url is not None and url.startswith("http")
    assert httpx.get(url).content == b"pixels"


def test_s3_storage_refuses_a_wrong_secret_without_naming_it(s3_bucket: S3Bucket) -> None:
    # Given the right bucket with a wrong secret (moto checks nothing by default: use a bucket that
    # does not exist to get a refusal, and a secret that must not leak into the message)
    settings = s3_bucket.settings(aws_secret_access_key="very-secret-value-123")
    storage = open_storage(f"s3://{s3_bucket.name}-missing/x", settings)
    with pytest.raises(StorageRefused) as refused:
        storage.write("k", b"v")
    assert "very-secret-value-123" not in str(refused.value) and refused.value.field == "OUTPUT_URL"
    assert "does not exist" in str(refused.value) or "NoSuchBucket" in str(refused.value)


def test_s3_storage_down_is_transient_and_names_no_secret(s3_bucket: S3Bucket) -> None:
    settings = s3_bucket.settings(s3_endpoint_url="http://127.0.0.1:9", aws_secret_access_key="another-secret-456")
    storage = open_storage(s3_bucket.url, settings)
    with pytest.raises(StorageUnavailable) as down:
        storage.exists("k")
    assert down.value.transient and "another-secret-456" not in str(down.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://bucket/x", "must start with s3://"),
        ("s3://AKIA:secret@bucket/x", "must not carry credentials"),
        ("s3://Bad_Bucket/x", "invalid bucket"),
        ("s3://bucket/a/../b", "invalid prefix"),
    ],
)
def test_parse_s3_url_refuses_malformed_urls_without_echoing_secrets(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as refused:
        parse_s3_url(url)
    assert "secret" not in str(refused.value)


def test_open_storage_reuses_one_client_per_location(s3_bucket: S3Bucket) -> None:
    settings = s3_bucket.settings()
    assert open_storage(s3_bucket.url, settings) is open_storage(s3_bucket.url, settings)


def _settings_of(storage: Storage) -> Settings | None:
    found: Settings | None = getattr(storage, "settings", None)
    return found


def test_blob_reads_and_writes_through_its_storage(tmp_path: Path) -> None:
    storage = open_storage(tmp_path, Settings(_env_file=None))  # type: ignore[call-arg]
    blob = Blob(storage, "x/y.txt")
    blob.write(b"hi")
    assert blob.read_text() == "hi" and blob.name == "y.txt" and blob.path == tmp_path / "x" / "y.txt"
