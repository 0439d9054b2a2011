"""The error tree: light to import, and carrying data that front ends word."""

from __future__ import annotations

import subprocess
import sys

from cli.api.errors import api_hint
from cli.errors import exit_code_for, hint_for, record_hint, render
from pipeline.errors import (
    PERMANENT_ERRORS,
    BatchFileError,
    ConfigError,
    InputError,
    PipelineError,
    SDTimeout,
    SDUnavailable,
    StoreUnavailable,
    UploadRejected,
    error_type,
)
from pipeline.models import ErrorInfo


def test_errors_import_loads_no_heavy_library() -> None:
    code = (
        "import sys, pipeline.errors; "
        "print(','.join(sorted(m for m in ('numpy', 'PIL', 'httpx', 'redis') if m in sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == ""


def test_errors_every_type_has_its_own_code() -> None:
    types: list[type[PipelineError]] = []
    pending: list[type[PipelineError]] = [PipelineError]
    while pending:
        cls = pending.pop()
        if cls.__module__ == "pipeline.errors":
            types.append(cls)
            pending.extend(cls.__subclasses__())
    codes = [cls.__dict__.get("code") for cls in types]
    assert None not in codes and len(set(codes)) == len(types)
    assert BatchFileError in types and UploadRejected in types


def test_errors_str_is_the_message_without_advice() -> None:
    error = InputError("band_px must be at least 1 (got 0)", field="band_px", value=0, limit=1)
    assert str(error) == "band_px must be at least 1 (got 0)"


def test_errors_cli_renders_message_and_fix_from_the_data() -> None:
    low = InputError("band_px must be at least 1 (got 0)", field="band_px", value=0, limit=1)
    high = InputError("band_px 40 is larger than half a tile", field="band_px", value=40, limit=32)
    assert render(low) == "band_px must be at least 1 (got 0) (use e.g. --band-px 16)"
    assert hint_for(high) == "use --band-px 32 or less, or a coarser --grid"


def test_errors_api_words_the_fix_without_cli_options() -> None:
    error = InputError("the prompt is empty", field="prompt", value="")
    assert "sdpipe generate" in (hint_for(error) or "")
    assert (api_hint(error) or "").startswith("the request format is in README")


def test_errors_exit_code_follows_the_type() -> None:
    assert exit_code_for(SDUnavailable("down")) == 3
    assert exit_code_for(SDTimeout("slow")) == 3
    assert exit_code_for(StoreUnavailable("down")) == 3
    assert exit_code_for(ConfigError("bad")) == 2
    assert exit_code_for(InputError("bad")) == 2


def test_errors_error_type_finds_a_recorded_type_by_name() -> None:
    assert error_type("SDTimeout") is SDTimeout
    assert error_type("RetriesExhausted") is None
    assert all(error_type(cls.__name__) is cls for cls in PERMANENT_ERRORS)


def test_errors_cli_words_a_recorded_error_from_its_type_and_field() -> None:
    auth = ErrorInfo(step="generate", type="SDAuthError", message="refused (401)", at=0.0, field="SD_API_AUTH")
    sampler = ErrorInfo(step="generate", type="SDNotFound", message="no sampler", at=0.0, field="sampler_name")
    assert "SD_API_AUTH=user:pass" in (record_hint(auth) or "")
    assert "scheduler" in (record_hint(sampler) or "")
    assert record_hint(ErrorInfo(step="generate", type="RetriesExhausted", message="kept failing", at=0.0)) is None
