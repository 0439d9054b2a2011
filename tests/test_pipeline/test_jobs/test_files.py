"""Storage: atomic writes, output naming that never leaves OUTPUT_DIR, writable-folder checks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.jobs.files import (
    FILE_MODE,
    JobFiles,
    atomic_write_bytes,
    check_output_dir,
    default_output_name,
    remove_stale_temps,
    safe_output_stem,
    slugify,
)


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "a.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]


def test_atomic_write_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_atomic_write_bytes_creates_missing_folders_and_writes_pieces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.bin"
    atomic_write_bytes(target, [b"ab", memoryview(b"cd"), b""])
    assert target.read_bytes() == b"abcd"


def test_slugify_is_ascii_and_bounded() -> None:
    assert slugify("A lighthouse, at dusk!") == "a-lighthouse-at-dusk"
    assert slugify("Café ünïcode") == "cafe-unicode"
    assert slugify("!!!") == "image"
    assert len(slugify("x" * 500)) <= 48


def test_default_output_name_has_time_id_and_slug() -> None:
    created = 1_700_000_000.0
    name = default_output_name(created, "abcdef0123456789", "A lighthouse")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(created))
    assert name == f"{stamp}-abcdef01-a-lighthouse"


def test_atomic_write_gives_files_the_umask_mode_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = tmp_path / "shared.png"
        atomic_write_bytes(target, b"x")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == FILE_MODE
    assert FILE_MODE & 0o044  # group and others may read, as with open() under umask 022


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/b", "..", ".hidden", "", "a\\b", "x" * 300])
def test_safe_output_stem_refuses_names_leaving_output_dir(name: str) -> None:
    with pytest.raises(InputError):
        safe_output_stem(name)


def test_safe_output_stem_strips_known_extension() -> None:
    assert safe_output_stem("cover.png") == "cover"
    assert safe_output_stem("my render 01") == "my render 01"


def test_check_output_dir_creates_folder(tmp_path: Path) -> None:
    assert check_output_dir(tmp_path / "new" / "out").is_dir()


def test_check_output_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_output_dir(tmp_path / "f")


def test_check_output_dir_refuses_unwritable_path(tmp_path: Path) -> None:
    # Given a path that cannot be created (its parent is a file; works as root too)
    (tmp_path / "f").write_text("x")
    # Then the error names the folder and says it is not writable
    with pytest.raises(InputError, match="not writable"):
        check_output_dir(tmp_path / "f" / "sub")


def test_job_files_paths_stay_under_output_dir(tmp_path: Path) -> None:
    files = JobFiles(tmp_path, "job1")
    for blob in (files.source, files.sd_info, files.tiles, files.blurred, files.image("n", "png"), files.sidecar("n")):
        assert blob.path is not None and blob.path.resolve().is_relative_to(tmp_path.resolve())
        assert blob.location == str(blob.path)
    assert files.image("n", "jpeg").name == "n.jpg"


def test_remove_stale_temps_clears_a_killed_writers_leftovers_only(tmp_path: Path) -> None:
    target = tmp_path / "out[1].png"
    (tmp_path / ".out[1].png.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".other.png.abc123.tmp").write_bytes(b"not ours")
    remove_stale_temps(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.png.abc123.tmp"]
