"""Fixtures of the pipeline tests: a storage of each kind (a local folder, a bucket of the test S3 server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import Settings
from pipeline.storage import Storage, open_storage
from tests.conftest import S3Bucket


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A local folder, then a fresh bucket of the test S3 server: a test of the Storage contract runs on both."""
    if request.param == "local":
        return open_storage(tmp_path / "out", Settings(_env_file=None))  # type: ignore[call-arg]
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return open_storage(bucket.url, bucket.settings())
