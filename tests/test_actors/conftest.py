"""Actor fixtures: an embedded runtime (StubBroker + in-process worker threads) on temp settings."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from actors import Runtime, open_runtime
from pipeline.models import JobRecord
from pipeline.settings import Settings
from tests.helpers import wait_until

#: The SD server the respx tests pretend to talk to.
SD_URL = "http://sd.test:7860"


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """Embedded runtime on the in-process mock SD server (mock://)."""
    with open_runtime(settings) as rt:
        yield rt


@pytest.fixture
def respx_runtime(settings: Settings) -> Iterator[Runtime]:
    """Embedded runtime whose SD server is ``SD_URL`` (to be mocked with respx), 2 retries."""
    with open_runtime(settings.model_copy(update={"sd_api_url": SD_URL, "max_retries": 2})) as rt:
        yield rt


def sd_png_response(seed: int = 1234, size: int = 64) -> dict[str, Any]:
    """A txt2img 200 body like A1111's: base64 PNG and ``info`` as a JSON string."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    infotext = (
        f"a cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: {seed}, "
        f"Size: {size}x{size}, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
    )
    info = {
        "seed": seed,
        "all_seeds": [seed],
        "sd_model_name": "v1-5-pruned-emaonly",
        "sd_model_hash": "6ce0161689",
        "version": "v1.10.1",
        "infotexts": [infotext],
    }
    return {"images": [base64.b64encode(buffer.getvalue()).decode()], "parameters": {}, "info": json.dumps(info)}


@pytest.fixture
def wait_terminal() -> Callable[[Runtime, list[str]], list[JobRecord]]:
    """Wait (up to 60 s) until every job is terminal and return their records."""

    def wait(rt: Runtime, job_ids: list[str]) -> list[JobRecord]:
        assert wait_until(lambda: all(rt.store.get(job_id).state.terminal for job_id in job_ids), timeout_s=60), [
            rt.store.get(job_id).state for job_id in job_ids
        ]
        return [rt.store.get(job_id) for job_id in job_ids]

    return wait
