"""The routes the dashboard reads: overview, backends, batches, schedules, thumbnails, sidecars,
filtered job listings; and /docs with its assets served locally."""

from __future__ import annotations

import io

from PIL import Image

from pipeline.jobs.thumbnails import thumbnail_key
from pipeline.storage import open_storage
from tests.conftest import S3Bucket
from tests.test_api.conftest import ApiServer, StartApi, assert_error

SMALL = {"width": 64, "height": 64, "band_px": 4}


def _done(api: ApiServer, prompt: str, **fields: object) -> dict[str, object]:
    response = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": prompt, **SMALL, **fields})
    assert response.status_code == 200, response.text
    job: dict[str, object] = response.json()["jobs"][0]
    return job


def test_status_overview_counts_the_last_hour_and_names_the_servers(api: ApiServer) -> None:
    _done(api, "a fox")
    overview = api.client.get("/api/overview").json()
    assert overview["counts"]["succeeded"] == 1 and overview["succeeded_last_hour"] == 1
    assert sum(overview["succeeded_per_bucket"]) == 1 and overview["succeeded_per_bucket"][-1] == 1
    assert {queue["queue"] for queue in overview["queues"]} >= {"sd", "images"}
    assert set(overview["running"]) == {"generate", "split", "seam_blur", "merge"}
    assert overview["backends"][0]["key"] == "mock://" and overview["backends"][0]["done"] == 1
    assert api.client.get("/api/backends").json()[0]["healthy"] is True


def test_status_jobs_filter_by_text_model_and_date(api: ApiServer) -> None:
    fox, owl = _done(api, "a red fox"), _done(api, "an owl at night")
    by_text = api.client.get("/api/jobs", params={"q": "FOX"}).json()
    assert [job["job_id"] for job in by_text["jobs"]] == [fox["job_id"]]
    model = owl["sd_info"]["model_name"]  # type: ignore[index]
    assert len(api.client.get("/api/jobs", params={"model": model[:6]}).json()["jobs"]) == 2
    assert api.client.get("/api/jobs", params={"model": "no-such-model"}).json()["jobs"] == []
    future = float(owl["created_at"]) + 3600  # type: ignore[arg-type]
    assert api.client.get("/api/jobs", params={"since": future}).json()["jobs"] == []


def test_status_thumbnail_is_a_small_webp_made_once(api: ApiServer) -> None:
    job = _done(api, "a fox", width=256, height=128)
    first = api.client.get(f"/api/jobs/{job['job_id']}/thumbnail")
    assert first.status_code == 200 and first.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(first.content)) as image:
        assert image.format == "WEBP" and image.size == (256, 128)  # never enlarged
    cached = list((api.settings.output_dir / ".sdpipe" / "thumbs").rglob("*.webp"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert api.client.get(f"/api/jobs/{job['job_id']}/thumbnail").content == first.content
    assert cached[0].stat().st_mtime_ns == stamp  # served from the cache, not made again


def test_status_sidecar_has_no_server_paths(api: ApiServer) -> None:
    job = _done(api, "a fox")
    sidecar = api.client.get(f"/api/jobs/{job['job_id']}/sidecar").json()
    assert sidecar["job_id"] == job["job_id"] and sidecar["prompt"] == "a fox"
    assert str(api.settings.output_dir) not in str(sidecar)


def test_status_batches_list_recent_ones_with_progress(api: ApiServer) -> None:
    job = _done(api, "a fox")
    batches = api.client.get("/api/batches").json()
    assert batches[0]["batch_id"] == job["batch_id"] and batches[0]["ended"] == batches[0]["total"] == 1
    assert api.client.get("/api/schedules").json() == []


def test_status_docs_serve_their_assets_locally(start_api: StartApi) -> None:
    api = start_api()  # documentation on (the fixture's default)
    for path in ("/docs", "/redoc"):
        page = api.client.get(path).text
        assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page and "fonts.googleapis" not in page
    assert api.client.get("/static/docs/swagger-ui-bundle.js").status_code == 200
    assert api.client.get("/static/docs/redoc.standalone.js").status_code == 200


def test_status_dashboard_post_without_csrf_token_is_refused(api: ApiServer) -> None:
    response = api.client.post("/submit", data={"prompt": "x"}, headers={"Accept": "application/json"})
    assert_error(response, 403, "csrf_failed")


def test_status_thumbnail_with_output_url_is_cached_in_the_bucket(start_api: StartApi, s3_bucket: S3Bucket) -> None:
    # Given results in a bucket (share-nothing machines: no disk in common)
    api = start_api(**s3_bucket.overrides)
    job = _done(api, "a fox", width=256, height=128)
    first = api.client.get(f"/api/jobs/{job['job_id']}/thumbnail")
    assert first.status_code == 200 and first.headers["content-type"] == "image/webp"
    # Then the thumbnail is cached in the bucket, beside the results, and not on this machine's disk
    storage = open_storage(s3_bucket.url, s3_bucket.settings())
    key = thumbnail_key(str(job["job_id"]), str(job["result"]["sha256"]))  # type: ignore[index]
    assert storage.read(key) == first.content
    assert not list(api.settings.output_dir.rglob("*.webp"))
    assert first.headers["etag"] == f'"{key.rsplit("/", 1)[-1].removesuffix(".webp")}"'
    # And another request is answered from that cache (what any API server of the bucket reads)
    storage.write(key, b"cached")
    assert api.client.get(f"/api/jobs/{job['job_id']}/thumbnail").content == b"cached"
