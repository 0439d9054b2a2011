"""``sdpipe mock-sd --record FILE``: the request log as JSON lines, for CI jobs that are not in Python."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx

from tests.procs import SDPIPE, Proc, free_port, port_open, wait_until
from tests.test_cli.conftest import Invoke

TXT2IMG = "/sdapi/v1/txt2img"
SMALL = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 1}


def test_mock_sd_record_writes_each_answered_request_as_a_json_line(tmp_path: Path) -> None:
    port, record, log = free_port(), tmp_path / "requests.jsonl", tmp_path / "mock.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [*SDPIPE, "mock-sd", "--port", str(port), "--record", str(record)], stdout=out, stderr=out
        )
    proc = Proc(popen=popen, log=log)
    try:
        assert wait_until(lambda: port_open(port), timeout_s=20), proc.output()
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=20) as http:
            http.post(f"{url}/mock/faults", json={"next": ["500"]})
            assert http.post(f"{url}{TXT2IMG}", json=SMALL).status_code == 500
            assert http.post(f"{url}{TXT2IMG}", json=SMALL | {"prompt": "a dog"}).status_code == 200
            served = http.get(f"{url}/mock/requests").json()["requests"]
    finally:
        proc.stop()
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(e["route"], e["body"]["prompt"], e["answer"]["status"], e["answer"]["fault"]) for e in lines] == [
        (TXT2IMG, "a cat", 500, "500"),
        (TXT2IMG, "a dog", 200, None),
    ]
    assert lines == served  # the same entries as GET /mock/requests


def test_mock_sd_record_to_an_unwritable_path_is_one_line_exit_2(sdpipe: Invoke, tmp_path: Path) -> None:
    result = sdpipe("mock-sd", "--port", "0", "--record", str(tmp_path / "missing" / "requests.jsonl"))
    assert result.exit_code == 2, result.output
    assert "cannot write the request log" in result.stderr and "--record" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
