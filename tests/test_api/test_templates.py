"""Prompt templates and sweeps through ``POST /api/generate`` and ``POST /api/batches``."""

from __future__ import annotations

from pathlib import Path

from pipeline.sd.mock.http import get_mock_server
from tests.helpers import wait_until
from tests.test_api.conftest import ApiServer, StartApi, assert_error

TEMPLATE = "a {red|green} {car|boat} in __weather__"


def _wildcards(tmp_path: Path) -> Path:
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "weather.txt").write_text("rain\nfog\nsnow\n")
    return folder


def _sent(url: str) -> list[str]:
    return [r["body"]["prompt"] for r in get_mock_server(url).control.requests(route="/sdapi/v1/txt2img")]


def test_generate_expands_a_combinatorial_template_times_a_sweep(start_api: StartApi, tmp_path: Path) -> None:
    api = start_api(wildcards_dir=_wildcards(tmp_path), sd_api_url="mock://api-templates")
    body = {"prompt": TEMPLATE, "combinatorial": True, "sweep": {"cfg_scale": [5, 9]}, "width": 64, "height": 64}
    response = api.client.post("/api/generate", json=body, params={"wait": "true"})
    assert response.status_code == 200, response.text
    jobs = response.json()["jobs"]
    assert len(jobs) == 24 and {job["state"] for job in jobs} == {"succeeded"}
    sent = _sent("mock://api-templates")
    assert len(sent) == 24 and len(set(sent)) == 12
    bodies = [r["body"] for r in get_mock_server("mock://api-templates").control.requests(route="/sdapi/v1/txt2img")]
    assert not any({"template", "combinatorial", "sweep"} & set(body) for body in bodies)  # ours, never sent


def test_generate_refuses_a_missing_wildcard(api: ApiServer) -> None:
    response = api.client.post("/api/generate", json={"prompt": "in __nowhere__", "template": True})
    error = assert_error(response, 422)
    assert "__nowhere__" in str(error)


def test_batches_rows_take_templates_from_defaults(start_api: StartApi, tmp_path: Path) -> None:
    api = start_api(wildcards_dir=_wildcards(tmp_path))
    body = {"rows": [TEMPLATE], "defaults": {"combinatorial": True, "width": 64, "height": 64}}
    response = api.client.post("/api/batches", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["jobs"] == 12

    def finished() -> bool:
        return api.client.get(accepted["status_url"]).json()["counts"] == {"succeeded": 12}

    assert wait_until(finished, timeout_s=60)
    manifest = api.client.get(f"/api/batches/{accepted['batch_id']}").json()
    assert len({row["params"]["prompt"] for row in manifest["rows"]}) == 12
    assert {row["params"]["template"]["prompt"] for row in manifest["rows"]} == {TEMPLATE}
