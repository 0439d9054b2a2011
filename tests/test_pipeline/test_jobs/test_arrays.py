"""Arrays files (the steps' raw intermediates): whole, and a region of one read alone, the same from a
local folder and from a bucket; from a bucket, only the region's rows travel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.jobs.arrays import atomic_save_arrays, load_arrays, map_arrays, read_region
from pipeline.storage import Blob, Storage, open_storage
from tests.conftest import S3Bucket
from tests.wiretap import Wiretap


def test_arrays_file_round_trips_meta_and_arrays_exactly(storage: Storage) -> None:
    rng = np.random.default_rng(2)
    arrays = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in ((17, 9, 3), (5, 4), (3, 2, 4))]
    arrays.append(rng.random((2, 3)).astype(np.float32))
    meta = {"width": 9, "infotext": "猫, Steps: 20", "tiles": [{"row": 0}]}
    blob = Blob(storage, "w/t.arrays")
    atomic_save_arrays(blob, meta, [arrays[0][:, ::2], *arrays[1:]])  # a non-contiguous view too
    loaded_meta, loaded = load_arrays(blob)
    assert loaded_meta == meta
    assert [a.dtype for a in loaded] == [np.uint8, np.uint8, np.uint8, np.float32]
    assert all(np.array_equal(a, b) for a, b in zip(loaded, [arrays[0][:, ::2], *arrays[1:]], strict=True))
    loaded[0][0, 0] = 1  # writable: steps may work on them in place
    assert [entry.key for entry in storage.list("w/")] == ["w/t.arrays"]


def test_arrays_file_cut_short_or_foreign_is_refused(tmp_path: Path) -> None:
    atomic_save_arrays(tmp_path / "t.arrays", {}, [np.zeros((8, 8), dtype=np.uint8)])
    data = (tmp_path / "t.arrays").read_bytes()
    (tmp_path / "cut.arrays").write_bytes(data[:-1])
    with pytest.raises(ValueError, match="cut short"):
        load_arrays(tmp_path / "cut.arrays")
    (tmp_path / "other.arrays").write_bytes(b"\x93NUMPY" + data[7:])
    with pytest.raises(ValueError, match="not an sdpipe arrays file"):
        load_arrays(tmp_path / "other.arrays")


def test_arrays_region_is_the_same_slice_from_a_folder_and_a_bucket(storage: Storage) -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, size=(61, 47, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, size=(61, 47), dtype=np.uint8)
    blob = Blob(storage, "w/enlarged.arrays")
    atomic_save_arrays(blob, {"width": 47}, [image, alpha])
    regions = [((10, 30), (5, 21)), ((0, 61), (0, 47)), ((60, 61), (46, 47)), ((3, 9), (0, 47)), ((0, 1), (0, 1))]
    for rows, cols in regions:
        region = read_region(blob, rows, cols)
        assert np.array_equal(region, image[rows[0] : rows[1], cols[0] : cols[1]]), (rows, cols)
        assert region.flags.c_contiguous and region.flags.writeable
        assert np.array_equal(read_region(blob, rows, cols, index=1), alpha[rows[0] : rows[1], cols[0] : cols[1]])
    for rows, cols in [((0, 62), (0, 5)), ((5, 5), (0, 5)), ((0, 5), (-1, 5))]:
        with pytest.raises(ValueError, match="outside"):
            read_region(blob, rows, cols)
    with pytest.raises(ValueError, match="no image array 2"):
        read_region(blob, (0, 1), (0, 1), index=2)


def test_arrays_region_from_a_bucket_fetches_only_its_rows(s3_bucket: S3Bucket, s3_wiretap: Wiretap) -> None:
    # Given a 1024x2048 RGB image (6 MiB) in the bucket, read through a relay that counts the bytes
    storage = open_storage(s3_bucket.url, s3_bucket.settings(s3_endpoint_url=s3_wiretap.url))
    image = np.random.default_rng(6).integers(0, 256, size=(1024, 2048, 3), dtype=np.uint8)
    blob = Blob(storage, "w/enlarged.arrays")
    atomic_save_arrays(blob, {}, [image])
    s3_wiretap.take_received_bytes()
    # When one 288-px tile's region is read
    region = read_region(blob, (256, 544), (512, 800))
    fetched = s3_wiretap.take_received_bytes()
    # Then the pixels are the region's, and what travelled is its band of rows (coalesced ranges:
    # whole rows at most), not the image
    assert np.array_equal(region, image[256:544, 512:800])
    band_bytes = (544 - 256) * 2048 * 3
    assert region.nbytes <= fetched <= band_bytes + 64 * 1024, (fetched, band_bytes)
    # And the relay does count everything: the whole file read whole is the image and more
    map_arrays(blob)
    assert s3_wiretap.take_received_bytes() >= image.nbytes
