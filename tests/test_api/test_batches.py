"""``POST /api/batches`` and ``GET /api/batches/{id}``: rows checked exactly like batch-file rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.batches.files import BatchFileError, read_batch_file
from tests.helpers import wait_until
from tests.test_api.conftest import ApiServer, assert_error

BAD_ROWS: list[object] = [
    {"prompt": "fine", "width": 96, "height": 64},
    {"prompt": "b", "steps": 900},
    {"promt": "typo"},
    "a plain prompt",
    {"prompt": "c", "name": "../escape"},
    {"prompt": "d", "cfg": "high", "seed": True},
]


def test_batches_queue_rows_and_show_the_manifest(api: ApiServer) -> None:
    rows = ["a fox", {"prompt": "a lighthouse", "seed": 3, "count": 2, "name": "lighthouse"}]
    response = api.client.post("/api/batches", json={"rows": rows, "defaults": {"width": 96, "height": 64}})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["jobs"] == 3 and len(accepted["job_ids"]) == 3

    def finished() -> bool:
        return api.client.get(accepted["status_url"]).json()["counts"] == {"succeeded": 3}

    assert wait_until(finished, timeout_s=30)
    manifest = api.client.get(f"/api/batches/{accepted['batch_id'][:8]}").json()
    assert manifest["batch_id"] == accepted["batch_id"]
    assert [row["line"] for row in manifest["rows"]] == [1, 2]
    assert manifest["rows"][1]["params"]["name"] == "lighthouse"
    assert [job["state"] for job in manifest["rows"][1]["jobs"]] == ["succeeded", "succeeded"]
    # and it names no server path: each job links to its image instead
    assert str(api.settings.output_dir.absolute()) not in json.dumps(manifest)
    job = manifest["rows"][1]["jobs"][0]
    assert "output" not in job and "sidecar" not in job
    assert api.client.get(job["result_url"]).status_code == 200
    listed = api.client.get("/api/jobs", params={"batch": accepted["batch_id"]}).json()["jobs"]
    assert sorted(job["job_id"] for job in listed) == sorted(accepted["job_ids"])


def test_batches_bad_rows_are_all_listed_like_a_batch_file(api: ApiServer, tmp_path: Path) -> None:
    # When a batch has several bad rows
    response = api.client.post("/api/batches", json={"rows": BAD_ROWS})
    # Then it is one 422 listing every problem, and nothing is queued
    error = assert_error(response, 422, "invalid_batch")
    assert api.client.get("/api/jobs").json()["jobs"] == []
    # and the problems are exactly those of the same rows in a .jsonl batch file (row N = line N)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": r} if isinstance(r, str) else r) + "\n" for r in BAD_ROWS))
    with pytest.raises(BatchFileError) as raised:
        read_batch_file(path, api.settings, defaults={}, batch_id="b", now=0.0)
    expected = [{"line": p.line, "field": p.field, "message": p.message} for p in raised.value.problems]
    assert [{k: p.get(k) for k in ("line", "field", "message")} for p in error["problems"]] == expected
    assert {p["line"] for p in error["problems"]} == {2, 3, 5, 6}


def test_batches_bad_default_is_422(api: ApiServer) -> None:
    response = api.client.post("/api/batches", json={"rows": ["x"], "defaults": {"steps": 0}})
    error = assert_error(response, 422, "invalid_input")
    assert "steps" in error["message"]


def test_batches_body_shape_is_checked(api: ApiServer) -> None:
    assert_error(api.client.post("/api/batches", json={"rows": []}), 422, "invalid_request")
    assert_error(api.client.post("/api/batches", json={"rows": [3]}), 422, "invalid_request")
    assert_error(
        api.client.post("/api/batches", content=b"{not json", headers={"Content-Type": "application/json"}), 422
    )


def test_batches_upscale_keys_of_rows_and_defaults_upscale_their_jobs(api: ApiServer) -> None:
    defaults = {"width": 64, "height": 64, "upscale_tile": 64, "upscale_overlap": 16}
    # any upscale key asks for an upscale: the second row is upscaled by the default scale (2)
    rows = [{"prompt": "a fox", "upscale": 2, "upscale_seam_fix": "band"}, {"prompt": "a plain one"}]

    response = api.client.post("/api/batches", json={"rows": rows, "defaults": defaults})

    assert response.status_code == 202, response.text
    accepted = response.json()
    assert wait_until(lambda: api.client.get(accepted["status_url"]).json()["counts"] == {"succeeded": 2}, timeout_s=60)
    manifest = api.client.get(f"/api/batches/{accepted['batch_id']}").json()
    fox, plain = (row["jobs"][0] for row in manifest["rows"])
    fox_job = api.client.get(f"/api/jobs/{fox['job_id']}").json()
    assert {key: fox_job["upscale"][key] for key in ("scale", "tile_px", "overlap_px", "seam_fix")} == {
        "scale": 2.0, "tile_px": 64, "overlap_px": 16, "seam_fix": "band"
    }  # fmt: skip
    assert (fox_job["result"]["width"], fox_job["result"]["height"]) == (128, 128)
    assert fox_job["tiles"]["done"] == fox_job["tiles"]["total"] > 9  # 9 tiles, and the seam-fix bands
    plain_upscale = api.client.get(f"/api/jobs/{plain['job_id']}").json()["upscale"]
    assert (plain_upscale["scale"], plain_upscale["tile_px"], plain_upscale["seam_fix"]) == (2.0, 64, "none")
    assert manifest["rows"][0]["params"]["upscale_seam_fix"] == "band"


def test_batches_bad_upscale_key_is_a_row_problem(api: ApiServer) -> None:
    response = api.client.post("/api/batches", json={"rows": [{"prompt": "a", "upscale_tile": 100}]})

    error = assert_error(response, 422, "invalid_batch")
    assert [(p["line"], p["field"]) for p in error["problems"]] == [(1, "upscale_tile")]
    assert "multiple of 8" in error["problems"][0]["message"]
