"""Property-based fuzz of the OpenAPI schema against the live server: no 5xx, every response as documented."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.test_api.conftest import StartApi

TOKEN = "fuzz-token"
#: Generated requests per operation.
MAX_EXAMPLES = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


#: Operations whose answer never ends (an event stream): a whole-body check would only time out.
#: tests/test_api/test_queue_views.py and tests/test_e2e/test_push.py read them event by event.
ENDLESS = {"/api/events"}
#: Largest ``count`` a generated request keeps (the API takes up to 10,000 jobs per request; the fuzz
#: checks answers, not throughput, so bigger counts are clamped to keep the run short).
MAX_FUZZ_COUNT = 3


def _bounded(case: schemathesis.Case) -> schemathesis.Case:
    if isinstance(case.body, dict) and isinstance(case.body.get("count"), int) and case.body["count"] > MAX_FUZZ_COUNT:
        case.body["count"] = MAX_FUZZ_COUNT
    return case


def test_fuzz_openapi_schema_finds_no_5xx_and_no_schema_violation(start_api: StartApi) -> None:
    # Given the live API (embedded mode, mock SD server, small images so that renders are quick) with a token
    api = start_api(
        api_token=TOKEN,
        max_pixels=128 * 128,
        width=64,
        height=64,
        band_px=4,
        max_upload_bytes=256 * 1024,
        api_wait_timeout_s=60,
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = 0
    # When every operation is called with generated requests (fixed seed: the same run every time)
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        if operation.path in ENDLESS:
            continue

        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy().map(_bounded))
        def call(case: schemathesis.Case) -> None:
            # Then no answer is a 5xx, and each matches its documented status, type, headers and schema
            case.call_and_validate(base_url=api.url, headers=auth, checks=CHECKS, timeout=30)

        call()
    assert operations >= 12
