"""The API's access log: one line per request, with method, path, status, duration and the job."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from tests.procs import wait_until
from tests.test_api.conftest import ApiServer, StartApi


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access_log() -> Iterator[list[logging.LogRecord]]:
    """The access lines logged while the test runs (caught on the logger itself: `sdpipe serve`
    stops it propagating, to give it a handler of its own)."""
    access = logging.getLogger("cli.api.access")
    level, collect = access.level, _Collect()
    access.addHandler(collect)
    access.setLevel(logging.INFO)
    yield collect.records
    access.removeHandler(collect)
    access.setLevel(level)


def _lines(records: list[logging.LogRecord], count: int) -> list[str]:
    """The access lines, once ``count`` are there: a line is logged after its answer is sent, so a
    client can read the answer a moment before the line exists."""
    wait_until(lambda: len([r for r in records if r.name == "cli.api.access"]) >= count, timeout_s=10)
    return [record.getMessage() for record in records if record.name == "cli.api.access"]


def test_access_log_names_method_path_status_time_and_the_job(
    api: ApiServer, access_log: list[logging.LogRecord]
) -> None:
    created = api.client.post("/api/generate", json={"prompt": "x", "width": 64, "height": 64})
    assert created.status_code == 202, created.text
    job_id = created.json()["job_ids"][0]
    assert api.client.get(f"/api/jobs/{job_id}").status_code == 200
    assert api.client.get("/api/jobs/nope").status_code == 404
    lines = _lines(access_log, 3)
    assert re.fullmatch(rf"POST /api/generate 202 \d+\.\d ms job={job_id}", lines[0]), lines
    assert re.fullmatch(rf"GET /api/jobs/{job_id} 200 \d+\.\d ms job={job_id}", lines[1]), lines
    assert re.fullmatch(r"GET /api/jobs/nope 404 \d+\.\d ms job=nope", lines[2]), lines


def test_access_log_has_refused_requests_and_never_the_token(
    start_api: StartApi, access_log: list[logging.LogRecord]
) -> None:
    api = start_api(api_token="a-long-secret-token-1234")
    assert api.client.get("/api/jobs?token=a-long-secret-token-1234").status_code == 401
    (line,) = _lines(access_log, 1)
    assert re.fullmatch(r"GET /api/jobs 401 \d+\.\d ms", line)


def test_access_log_escapes_control_characters_a_client_puts_in_its_path(
    api: ApiServer, access_log: list[logging.LogRecord]
) -> None:
    # A newline would forge a second log line; an escape sequence would colour an operator's terminal
    assert api.client.get("/api/jobs/abc%0A2026-12-08T00:00:00%20POST%20/api/fake%20200").status_code == 404
    assert api.client.get("/api/jobs/x%1b%5b31mRED").status_code == 404
    first, second = _lines(access_log, 2)
    assert "\n" not in first and first.startswith("GET /api/jobs/abc\\n2026-12-08T00:00:00 POST /api/fake 200 404")
    assert "\x1b" not in second and second.startswith("GET /api/jobs/x\\x1b[31mRED 404")
