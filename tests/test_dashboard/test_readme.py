"""A busy dashboard at a glance (and the README's two screenshots): finished 512x512 images in the
gallery, a failure, a job rendering with its progress, and jobs of each priority waiting behind it."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import wait_until
from tests.test_dashboard.conftest import screenshot

PROMPTS = [
    "a lighthouse on a cliff at dusk, oil painting",
    "a red fox in fresh snow, golden hour",
    "an owl on a mossy branch, night, moonlight",
    "a harbour town in the rain, watercolour",
    "a desert canyon under a violet sky",
    "a glass greenhouse full of ferns, morning light",
]


def _counts(api: Any) -> dict[str, int]:
    return dict(api.client.get("/api/overview").json()["counts"])


def test_dashboard_shows_a_busy_queue_at_a_glance(page: Any, dash: Any) -> None:
    # Given six finished 512x512 images, one failure (the server's 500, no retries left), then one
    # job rendering slowly with progress, and a high and a low priority job waiting behind it
    api, sd = dash(progress_poll_s=0.3, max_retries=0, worker_threads=1)
    rows = [{"prompt": prompt, "seed": 1000 + index} for index, prompt in enumerate(PROMPTS)]
    batch = api.client.post("/api/batches", json={"rows": rows, "defaults": {"width": 512, "height": 512}}).json()
    assert wait_until(lambda: _counts(api)["succeeded"] == len(PROMPTS), timeout_s=120)
    sd.faults("500")
    api.client.post("/api/generate", json={"prompt": "a neon city skyline", "width": 512, "height": 512})
    assert wait_until(lambda: _counts(api)["failed"] == 1, timeout_s=60)
    sd.server.latency_ms = 20_000
    api.client.post("/api/generate", json={"prompt": "a mountain lake at sunrise", "width": 512, "height": 512})
    assert wait_until(lambda: _counts(api)["generating"] == 1, timeout_s=60)
    for priority in ("high", "low"):
        body = {"prompt": f"a {priority} priority sketch", "priority": priority, "width": 512, "height": 512}
        api.client.post("/api/generate", json=body)
    try:
        # Then the overview shows it all at once: states, the running step, priorities, the hour, the server
        page.goto(f"{api.url}/")
        page.locator("#live-status", has_text="live: on").wait_for()
        assert page.locator('[data-count="succeeded"]').inner_text() == "6"
        assert page.locator('[data-count="failed"]').inner_text() == "1"
        assert page.locator('[data-count="generating"]').inner_text() == "1"
        assert [page.locator(f'[data-priority="{p}"]').inner_text() for p in ("high", "normal", "low")] == [
            "1",
            "0",
            "1",
        ]
        screenshot(page, "readme-overview", small=True)
        # The gallery has every finished image as a thumbnail
        page.goto(f"{api.url}/gallery")
        page.wait_for_load_state("networkidle")
        widths = page.evaluate("[...document.querySelectorAll('.gallery img')].map(img => img.naturalWidth)")
        assert widths == [320] * len(PROMPTS)
        screenshot(page, "readme-gallery", small=True)
        # And a finished job shows its image at full size with its steps
        first = batch["job_ids"][0]
        page.goto(f"{api.url}/jobs/{first}")
        assert page.evaluate("document.getElementById('job-image').naturalWidth") == 512
        screenshot(page, "readme-job", small=True)
    finally:
        httpx.post(f"{sd.url}/sdapi/v1/interrupt")  # the slow call ends now, not in 20 s
        sd.server.latency_ms = 0
