"""The HTTP API with ``OUTPUT_URL=s3://...``: uploads staged in the bucket, results as presigned redirects
or, with presigning off, streamed."""

from __future__ import annotations

import hashlib
import json

import httpx
import numpy as np
import pytest

from pipeline.storage import S3Storage, open_storage
from tests.conftest import S3Bucket
from tests.helpers import wait_until
from tests.test_api.conftest import StartApi, assert_error, noise_image, png_bytes


def test_async_upload_lands_in_the_bucket_and_the_result_redirects_to_a_presigned_url(
    start_api: StartApi, s3_bucket: S3Bucket
) -> None:
    # Given the API writing to a bucket
    api = start_api(**s3_bucket.overrides)
    # When an image is uploaded for processing
    response = api.client.post("/api/files/async", files={"file": ("photo.png", png_bytes(noise_image(96, 80)))})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert wait_until(lambda: api.client.get(accepted["status_url"]).json()["state"] == "succeeded", timeout_s=60)
    job = api.client.get(accepted["status_url"]).json()
    # Then the job shows s3:// locations, and the image and its sidecar are objects of the bucket
    assert job["result"]["image"].startswith(s3_bucket.url + "/"), job
    storage = open_storage(s3_bucket.url, s3_bucket.settings())
    image = storage.read(str(storage.key_of(job["result"]["image"])))
    sidecar = json.loads(storage.read(str(storage.key_of(job["result"]["sidecar"]))))
    assert sidecar["output"]["sha256"] == hashlib.sha256(image).hexdigest()
    assert sidecar["source"] == "photo.png"
    assert not storage.list(".sdpipe/")  # the staged upload's work prefix went when the job succeeded
    # And the result route redirects to a presigned URL that serves exactly that image
    result = api.client.get(f"/api/jobs/{job['job_id']}/result", follow_redirects=False)
    assert result.status_code == 307, result.text
    location = result.headers["location"]
    assert "X-Amz-Signature=" in location and s3_bucket.secret_access_key not in location
    assert httpx.get(location).content == image
    # And a client that has the image gets a 304 on its ETag, as with files on disk
    etag = f'"{sidecar["output"]["sha256"]}"'
    assert api.client.get(f"/api/jobs/{job['job_id']}/result", headers={"If-None-Match": etag}).status_code == 304


def test_result_is_streamed_by_the_server_when_presigning_is_off(start_api: StartApi, s3_bucket: S3Bucket) -> None:
    api = start_api(**s3_bucket.overrides, s3_presign_expiry_s=0)
    response = api.client.post("/api/files", files={"file": ("a.png", png_bytes(noise_image(96, 80)))})
    # Then the synchronous route answers with the image itself, read from the bucket
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    assert hashlib.sha256(response.content).hexdigest() == response.headers["etag"].strip('"')


def test_result_route_streams_the_object_in_chunks_with_its_length_when_presigning_is_off(
    start_api: StartApi, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a succeeded job whose image is in the bucket, and presigning off
    api = start_api(**s3_bucket.overrides, s3_presign_expiry_s=0)
    accepted = api.client.post("/api/files/async", files={"file": ("a.png", png_bytes(noise_image(96, 80)))}).json()
    assert wait_until(lambda: api.client.get(accepted["status_url"]).json()["state"] == "succeeded", timeout_s=60)
    job = api.client.get(accepted["status_url"]).json()
    storage = open_storage(s3_bucket.url, s3_bucket.settings())
    key = str(storage.key_of(job["result"]["image"]))
    # (made large: 3 MiB, several of the server's 1 MiB chunks)
    large = np.random.default_rng(8).integers(0, 256, 3 * 1024 * 1024, dtype=np.uint8).tobytes()
    storage.write(key, b"\x89PNG\r\n\x1a\n" + large)
    expected = storage.read(key)
    # And the server may not read an image whole (only small objects: sidecars)
    whole_read = S3Storage.read

    def read_no_image(self: S3Storage, key: str) -> bytes:
        assert not key.endswith(".png"), f"{key} read whole"
        return whole_read(self, key)

    monkeypatch.setattr(S3Storage, "read", read_no_image)
    # When the client asks for the result
    with api.client.stream("GET", f"/api/jobs/{job['job_id']}/result", follow_redirects=False) as response:
        body = b"".join(response.iter_bytes())
    # Then it gets exactly the object, with its length and type, and the job's ETag
    assert response.status_code == 200, response.text
    assert body == expected
    assert response.headers["content-length"] == str(len(expected))
    assert response.headers["content-type"] == "image/png"
    assert response.headers["etag"] == f'"{job["result"]["sha256"]}"'
    # And an image removed from the bucket is a 404 that says so
    storage.delete(key)
    assert_error(api.client.get(f"/api/jobs/{job['job_id']}/result"), 404, "result_missing")
