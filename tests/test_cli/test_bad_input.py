"""The bad-input matrix: each case is one line naming the problem and the fix, the right exit code,
no traceback, nothing written and nothing enqueued."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import respx
from PIL import Image

from tests.test_cli.conftest import Invoke


def _assert_one_line(result: object, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output  # type: ignore[attr-defined]
    stderr = result.stderr  # type: ignore[attr-defined]
    assert fragment in stderr, stderr
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_size_not_multiple_of_8_warns_it_will_be_floored(sdpipe: Invoke) -> None:
    result = sdpipe("generate", "x", "--sd-url", "mock://", "--width", "100", "--height", "64", "--json")
    assert result.exit_code == 0, result.output
    assert "not a multiple of 8" in result.stderr and "96x64" in result.stderr
    (job,) = json.loads(result.stdout)
    assert job["result"]["width"] == 96


def test_grid_with_more_tiles_than_pixels(sdpipe: Invoke, out_dir: Path) -> None:
    result = sdpipe("generate", "x", "--grid", "20x20", "--width", "16", "--height", "16")
    _assert_one_line(result, 2, "grid")
    assert not out_dir.exists()


def test_process_truncated_png(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _assert_one_line(sdpipe("process", str(tmp_path / "cut.png")), 2, "cut.png")
    assert not out_dir.exists()


def test_process_decompression_bomb_over_max_pixels(
    sdpipe: Invoke, tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_PIXELS", "1000")
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    _assert_one_line(sdpipe("process", str(tmp_path / "big.png")), 2, "MAX_PIXELS")
    assert not out_dir.exists()


def test_unwritable_output_dir(sdpipe: Invoke, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = sdpipe("generate", "x", "--sd-url", "mock://", "--out", str(tmp_path / "file" / "out"))
    _assert_one_line(result, 2, "not writable")


def test_batch_row_name_leaving_output_dir(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "x", "name": "../escape"}\n{"prompt": "y", "name": "/etc/passwd"}\n')
    result = sdpipe("batch", str(path), "--sd-url", "mock://")
    assert result.exit_code == 2
    assert "line 1, name" in result.stderr and "line 2, name" in result.stderr
    assert "would leave OUTPUT_DIR" in result.stderr
    assert not out_dir.exists()


def test_sd_answering_401_is_exit_2_with_auth_hint(sdpipe: Invoke) -> None:
    body = {"error": "HTTPException", "detail": "Not authenticated", "body": "", "errors": ""}
    with respx.mock(base_url="http://sd.test:7860") as sd:
        sd.get("/sdapi/v1/progress").mock(return_value=httpx.Response(401, json=body))  # --api-auth guards all
        route = sd.post("/sdapi/v1/txt2img").mock(return_value=httpx.Response(401, json=body))
        sd.get("/openapi.json").respond(200, json={})  # not behind --api-auth
        sd.get(path__startswith="/sdapi/v1/").respond(401, json=body)  # the lists checked before enqueue
        result = sdpipe("generate", "x", "--sd-url", "http://sd.test:7860", "--width", "64", "--height", "64")
    assert result.exit_code == 2, result.output
    assert route.call_count == 1  # permanent: no retry
    (line,) = result.stderr.strip().splitlines()
    assert "Not authenticated" in line and "SD_API_AUTH" in line
