"""``sdpipe mock-sd``: its checkpoint options (the server itself is tested in tests/test_pipeline/test_sd)."""

from __future__ import annotations

from typing import Any

import pytest

import cli.worker
from tests.test_cli.conftest import Invoke


def test_mock_sd_passes_models_and_load_time_to_the_server(sdpipe: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}
    monkeypatch.setattr(cli.worker, "run_forever", lambda host, port, **options: served.update(options))
    result = sdpipe("mock-sd", "--models", "base.safetensors, refiner.safetensors", "--model-load-ms", "250")
    assert result.exit_code == 0, result.output
    assert (served["models"], served["model_load_ms"]) == (("base.safetensors", "refiner.safetensors"), 250)


def test_mock_sd_without_models_keeps_the_default_checkpoint(sdpipe: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}
    monkeypatch.setattr(cli.worker, "run_forever", lambda host, port, **options: served.update(options))
    assert sdpipe("mock-sd").exit_code == 0
    assert served["models"] is None and served["model_load_ms"] == 0


def test_mock_sd_empty_models_is_one_line_exit_2(sdpipe: Invoke) -> None:
    result = sdpipe("mock-sd", "--models", " , ")
    assert result.exit_code == 2
    assert "invalid --models" in result.stderr and len(result.stderr.strip().splitlines()) == 1
