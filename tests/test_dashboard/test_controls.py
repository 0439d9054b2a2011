"""The dashboard's controls and details that came with the event stream's issue: pause and resume
the queue (and a batch) from buttons, queued jobs per priority, a job's priority and webhook
deliveries, and a submit form whose sampler and checkpoint are the SD server's own lists."""

from __future__ import annotations

from typing import Any

from tests.helpers import wait_until
from tests.receiver import Receiver
from tests.test_dashboard.conftest import screenshot

SMALL = {"width": 64, "height": 64, "band_px": 4}
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _state(api: Any, job_id: str) -> str:
    return str(api.client.get(f"/api/jobs/{job_id}").json()["state"])


def test_dashboard_pauses_and_resumes_the_queue_from_the_overview(page: Any, dash: Any) -> None:
    api, sd = dash()
    page.goto(f"{api.url}/")
    page.locator("#live-status", has_text="live: on").wait_for()
    # When Pause is pressed, the queue is paused and the overview says so
    page.get_by_role("button", name="Pause the queue").click()
    page.locator(".pause-bar .state", has_text="paused").wait_for()
    assert api.client.get("/api/queue").json()["paused"] is True
    # Then jobs submitted meanwhile wait, counted per priority, and make no SD call
    for priority in ("high", "low", "low"):
        assert api.client.post("/api/generate", json={"prompt": priority, "priority": priority, **SMALL}).is_success
    page.locator('[data-priority="low"]', has_text="2").wait_for()  # the overview follows the stream
    assert page.locator('[data-priority="high"]').inner_text() == "1"
    assert page.locator('[data-priority="normal"]').inner_text() == "0"
    screenshot(page, "overview-paused")
    assert sd.stats()["txt2img_requests"] == 0
    # When Resume is pressed, they run
    page.get_by_role("button", name="Resume the queue").click()
    page.locator(".pause-bar .state", has_text="running").wait_for()
    assert wait_until(lambda: api.client.get("/api/overview").json()["counts"]["succeeded"] == 3, timeout_s=60)
    page.locator('[data-count="succeeded"]', has_text="3").wait_for()


def test_dashboard_pauses_one_batch_from_its_page(page: Any, dash: Any) -> None:
    api, _ = dash(worker_threads=1, mock={"latency_ms": 300})
    accepted = api.client.post("/api/generate", json={"prompt": "many", "count": 6, **SMALL}).json()
    page.goto(f"{api.url}/batches/{accepted['batch_id']}")
    page.get_by_role("button", name="Pause this batch").click()
    page.locator(".actions .state", has_text="paused").wait_for()
    assert api.client.get("/api/queue").json()["paused_batches"] == [accepted["batch_id"]]
    page.get_by_role("button", name="Resume this batch").click()
    page.get_by_role("button", name="Pause this batch").wait_for()
    assert api.client.get("/api/queue").json()["paused_batches"] == []
    assert wait_until(lambda: all(_state(api, j) == "succeeded" for j in accepted["job_ids"]), timeout_s=60)


def test_dashboard_job_page_shows_priority_and_webhook_deliveries(page: Any, dash: Any) -> None:
    # Given a receiver that answers 500 once, then 200
    receiver = Receiver(fail_first=1)
    try:
        host = receiver.url.split("/")[2]
        api, _ = dash(webhook_secret=SECRET, webhook_allow_hosts=host, webhook_retry_min_s=0.2)
        body = {"prompt": "a hooked fox", "priority": "high", "webhook": receiver.url, **SMALL}
        job_id = api.client.post("/api/generate", params={"wait": "true"}, json=body).json()["jobs"][0]["job_id"]

        def delivered() -> bool:
            return [d["state"] for d in api.client.get(f"/api/jobs/{job_id}").json()["webhooks"]] == ["delivered"]

        assert wait_until(delivered, timeout_s=30)
        # When its page is opened
        page.goto(f"{api.url}/jobs/{job_id}")
        # Then it shows the priority and each delivery: event, receiver, state, attempts, last status
        assert page.locator("#job-view [data-priority]").inner_text() == "priority high"
        cells = page.locator("#webhooks tbody tr").first.locator("td").all_inner_texts()
        assert cells[0] == "job.succeeded" and cells[1].endswith("/hook")
        assert "delivered" in cells[2] and cells[3] == "2" and cells[4] == "200" and cells[5] == "-"
    finally:
        receiver.close()


def test_dashboard_submit_offers_the_servers_samplers_and_checkpoints(page: Any, dash: Any) -> None:
    api, _ = dash()
    catalog = api.client.get("/api/catalog").json()
    page.goto(f"{api.url}/submit")
    # The choices are the server's own lists (what submissions are checked against)
    samplers = page.locator("select[name=sampler] option").all_inner_texts()
    assert samplers[0].startswith("default") and samplers[1:] == catalog["samplers"]
    assert page.locator("select[name=model] option").all_inner_texts()[1:] == catalog["models"]
    # When one of each is chosen and the form submitted, the job renders with them
    page.fill("#f-prompt", "a chosen sampler")
    page.fill("input[name=width]", "64")
    page.fill("input[name=height]", "64")
    page.select_option("select[name=sampler]", "DPM++ 2M")
    page.select_option("select[name=model]", catalog["models"][-1])
    page.select_option("select[name=priority]", "low")
    page.click('summary:has-text("Advanced")')
    page.fill("#f-advanced", '{"band_px": 4}')
    page.click("#submit-form button[type=submit]")
    row = page.locator("#jobs-table tr[data-job]", has_text="a chosen sampler")
    row.locator(".state", has_text="succeeded").wait_for(timeout=60_000)
    job = api.client.get(f"/api/jobs/{row.get_attribute('data-job')}").json()
    assert job["generation"]["sampler_name"] == "DPM++ 2M" and job["priority"] == "low"
    assert job["generation"]["override_settings"]["sd_model_checkpoint"] == catalog["models"][-1]


def test_dashboard_submit_takes_free_text_when_the_server_lists_nothing(page: Any, start_api: Any) -> None:
    api = start_api(sd_api_url="http://127.0.0.1:9")  # nothing answers there: no lists
    page.goto(f"{api.url}/submit")
    assert page.locator("select[name=sampler]").count() == 0
    page.fill("input[name=sampler]", "My Own Sampler")
    assert page.locator("input[name=model]").get_attribute("placeholder") == "the server's current"
