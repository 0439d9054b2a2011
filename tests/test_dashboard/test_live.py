"""The dashboard's live parts on the real event stream: a job submitted elsewhere appears, and its
step and sampling progress show while it renders, on the Jobs page and on its own page."""

from __future__ import annotations

import re
from typing import Any

from tests.test_dashboard.conftest import screenshot

SMALL = {"width": 64, "height": 64, "band_px": 4}
SAMPLING = re.compile(r"^sampling (\d+)/20(, about \d+ s left)?$")
RECORD_SAMPLING = """() => { window.__sampling = [];
  new MutationObserver(() => { for (const el of document.querySelectorAll('#jobs-table [data-sampling]'))
    if (el.textContent && window.__sampling.at(-1) !== el.textContent) window.__sampling.push(el.textContent); })
  .observe(document.getElementById('jobs-table'), {subtree: true, childList: true, characterData: true}); }"""


def test_dashboard_shows_sampling_progress_of_a_running_job(page: Any, dash: Any) -> None:
    # Given an SD server that takes seconds per image, workers asking it for progress often, and the
    # Jobs page open on the stream
    api, _ = dash(mock={"latency_ms": 10_000}, progress_poll_s=0.2, worker_threads=1)
    page.goto(f"{api.url}/jobs")
    page.locator("#live-status", has_text="live: on").wait_for()
    page.evaluate(RECORD_SAMPLING)
    # When a job is submitted (elsewhere) and renders
    body = {"prompt": "a slow lighthouse", "steps": 20, **SMALL}
    job_id = api.client.post("/api/generate", json=body).json()["job_ids"][0]
    # Then its row appears, with no step done yet and the sampling progress moving on, from
    # job.progress events (step i of 20, and the time left)
    row = page.locator(f'#jobs-table tr[data-job="{job_id}"]')
    row.locator("[data-sampling]").filter(has_text=SAMPLING).wait_for()
    page.wait_for_function("() => new Set(window.__sampling).size >= 2")
    assert row.locator(".steps-text").inner_text() == "0/4 steps"
    readings = page.evaluate("window.__sampling")
    steps = [int(SAMPLING.match(text).group(1)) for text in readings]  # type: ignore[union-attr]
    assert all(SAMPLING.match(text) for text in readings) and steps == sorted(steps), readings
    screenshot(page, "jobs-progress")
    # And its own page shows the same while it renders, then the end, all steps done, without reload
    page.goto(f"{api.url}/jobs/{job_id}")
    page.locator("#live-status", has_text="live: on").wait_for()
    page.locator("#job-view [data-sampling]").filter(has_text=SAMPLING).wait_for()
    assert page.locator("#job-view [data-sampling-line] progress").get_attribute("max") == "20"
    page.evaluate("window.__sameDocument = true")
    page.locator("#job-view .state", has_text="succeeded").wait_for(timeout=60_000)
    assert page.evaluate("window.__sameDocument") is True
    assert page.locator("#job-view [data-sampling-line]").is_hidden()
    assert page.locator(".timeline .step-status").all_inner_texts() == ["done"] * 4


def test_dashboard_catches_up_after_a_dropped_stream_with_last_event_id(page: Any, dash: Any, start_api: Any) -> None:
    # Given the Jobs page on the stream, which has seen a job end
    api, sd = dash()
    asked: list[str | None] = []
    page.on("request", lambda r: asked.append(r.all_headers().get("last-event-id")) if "/api/events" in r.url else None)
    page.goto(f"{api.url}/jobs")
    page.locator("#live-status", has_text="live: on").wait_for()
    api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "before the drop", **SMALL})
    page.locator("tr[data-job]", has_text="before the drop").locator(".state", has_text="succeeded").wait_for()
    # When the server stops (the stream drops) and comes back on the same port and store, and a job
    # runs from start to end before the browser is let back in
    port = int(api.url.rsplit(":", 1)[1])
    api.stop()
    page.locator("#live-status", has_text="live: reconnecting").wait_for()
    page.route("**/api/events**", lambda route: route.abort())
    again = start_api(sd_api_url=sd.url, listen_port=port)
    done = again.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "while away", **SMALL})
    assert done.json()["jobs"][0]["state"] == "succeeded"
    assert page.locator("tr[data-job]", has_text="while away").count() == 0
    page.evaluate("window.__sameDocument = true")
    page.unroute("**/api/events**")
    # Then EventSource reconnects by itself with the last event id it saw, the server replays what
    # was missed, and the job appears, succeeded, without a reload
    page.locator("tr[data-job]", has_text="while away").locator(".state", has_text="succeeded").wait_for()
    page.locator("#live-status", has_text="live: on").wait_for()
    assert page.evaluate("window.__sameDocument") is True
    assert asked[0] is None and asked[-1], asked  # the first connection had no id to send
