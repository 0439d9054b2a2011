"""The dashboard in a real browser (Debian's chromium through Playwright): submit and watch a job
live, a job's image and infotext, retry and cancel from their buttons, sign-in, escaping, phones."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.test_dashboard.conftest import screenshot

SMALL = {"width": 64, "height": 64, "band_px": 4}
SCRIPT_PROMPT = "<script>alert(1)</script> a lighthouse"


def _job_state(api: Any, job_id: str) -> str:
    return str(api.client.get(f"/api/jobs/{job_id}").json()["state"])


def test_dashboard_submit_from_the_form_shows_queued_then_succeeded_without_reload(page: Any, dash: Any) -> None:
    # Given one worker thread busy with a slow job, so the next one waits in the queue
    api, _ = dash(mock={"latency_ms": 1500}, worker_threads=1)
    assert api.client.post("/api/generate", json={"prompt": "first", **SMALL}).status_code == 202
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.goto(f"{api.url}/submit")
    # The page follows the event stream (not the polling fallback)
    page.locator("#live-status", has_text="live: on").wait_for()
    page.evaluate(
        """() => { window.__sameDocument = true; window.__states = [];
        new MutationObserver(() => { for (const row of document.querySelectorAll('#jobs-table tr[data-job]'))
          window.__states.push(row.dataset.job + ' ' + row.dataset.state); })
        .observe(document.getElementById('jobs-table'), {subtree: true, childList: true, attributes: true}); }"""
    )
    # When a prompt is submitted from the form
    page.fill("#f-prompt", "a lighthouse at dusk")
    page.fill("input[name=width]", "64")
    page.fill("input[name=height]", "64")
    page.click('summary:has-text("Advanced")')
    page.fill("#f-advanced", '{"band_px": 4}')
    page.click("#submit-form button[type=submit]")
    note = page.locator("#submit-note")
    note.filter(has_text="Queued 1 job(s)").wait_for()
    # Then its row appears queued, and turns succeeded in place, with no page load in between
    row = page.locator("#jobs-table tr[data-job]", has_text="a lighthouse at dusk")
    row.locator(".state", has_text="succeeded").wait_for(timeout=60_000)
    job_id = row.get_attribute("data-job")
    states = [entry.split(" ", 1)[1] for entry in page.evaluate("window.__states") if entry.startswith(f"{job_id} ")]
    assert states[0] == "queued", states
    assert states[-1] == "succeeded", states
    assert page.evaluate("window.__sameDocument") is True
    # ... and only the stream told it: one /api/events connection, no polling of /api/jobs
    assert [url for url in asked if "/api/events" in url], asked
    assert not [url for url in asked if "/api/jobs" in url], asked
    assert page.locator("#live-status").inner_text() == "live: on"
    screenshot(page, "submit")


def test_dashboard_job_page_shows_the_image_and_its_infotext(page: Any, dash: Any) -> None:
    api, _ = dash()
    done = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "a red fox", "seed": 7, **SMALL})
    job_id = done.json()["jobs"][0]["job_id"]
    page.goto(f"{api.url}/jobs/{job_id}")
    image = page.locator("#job-image")
    image.wait_for()
    assert page.evaluate("document.getElementById('job-image').naturalWidth") == 64
    infotext = page.locator("#infotext").inner_text()
    assert infotext.startswith("a red fox\n") and "Seed: 7" in infotext and "Seam grid: 2x2" in infotext
    assert "succeeded" in page.locator("#job-view .state").inner_text()
    assert "sdpipe generate 'a red fox' --seed 7" in page.locator("#generate-command").inner_text()
    # The image zooms with its button (keyboard too: it is a button)
    page.locator("button.zoom").focus()
    page.keyboard.press("Enter")
    assert page.locator("button.zoom").get_attribute("aria-pressed") == "true"
    screenshot(page, "job")


def test_dashboard_retry_a_failed_job_and_cancel_a_queued_one_from_their_buttons(page: Any, dash: Any) -> None:
    # Given a job that failed (500, no retries left), then one hanging on the only worker thread,
    # and one queued behind it
    api, sd = dash(mock={"hang_ms": 6000}, worker_threads=1, max_retries=0)
    sd.faults("500", "hang")
    failed = api.client.post("/api/generate", json={"prompt": "fails once", **SMALL}).json()["job_ids"][0]
    assert api.client.post("/api/generate", json={"prompt": "hangs", **SMALL}).status_code == 202
    queued = api.client.post("/api/generate", json={"prompt": "waits", **SMALL}).json()["job_ids"][0]
    assert _wait(lambda: _job_state(api, failed) == "failed")
    # When Cancel is pressed on the queued job's page
    page.goto(f"{api.url}/jobs/{queued}")
    assert "queued" in page.locator("#job-view .state").inner_text()
    page.get_by_role("button", name="Cancel", exact=True).click()
    # Then it is cancelled (it never runs) and the page says so
    page.locator("#job-view .state", has_text="cancelled").wait_for()
    assert _job_state(api, queued) == "cancelled"
    # When Retry is pressed on the failed job's page
    page.goto(f"{api.url}/jobs/{failed}")
    assert page.locator(".alert").inner_text().startswith("Error at generate")
    page.get_by_role("button", name="Retry", exact=True).click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text().startswith("Job "), page.content()
    # Then it runs again (after the hang) and succeeds; the page follows it live
    assert _wait(lambda: _job_state(api, failed) == "succeeded", timeout_s=60), _job_state(api, failed)
    page.locator("#job-view .state", has_text="succeeded").wait_for()
    assert page.locator("#job-image").count() == 1


def test_dashboard_needs_the_token_to_sign_in_and_refuses_without_it(page: Any, dash: Any) -> None:
    token = "dashboard-test-token-1234"
    api, _ = dash(api_token=token)
    # Without a session every page leads to the sign-in page, and the API refuses the browser
    page.goto(f"{api.url}/jobs")
    assert re.search(r"/signin\?next=/jobs$", page.url)
    screenshot(page, "signin")
    assert page.evaluate("fetch('/api/jobs').then(r => r.status)") == 401
    # A wrong token is refused
    page.fill("#token", "wrong")
    page.get_by_role("button", name="Sign in", exact=True).click()
    assert page.locator(".alert").inner_text() == "that is not this server's API token"
    assert "/signin" in page.url
    # The right one signs in, back to the page asked for, with an HttpOnly SameSite cookie
    page.fill("#token", token)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.locator("h1", has_text="Jobs").wait_for()
    assert page.url.endswith("/jobs")
    # The event stream opens with the sign-in cookie alone
    page.locator("#live-status", has_text="live: on").wait_for()
    cookie = next(c for c in page.context.cookies() if c["name"] == "sdpipe_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and token not in cookie["value"]
    assert page.evaluate("fetch('/api/jobs').then(r => r.status)") == 200
    # A state change with the cookie needs the page's CSRF token too
    post = """(csrf) => fetch('/api/generate', {method: 'POST', headers: {'Content-Type': 'application/json',
        ...(csrf ? {'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content} : {})},
        body: JSON.stringify({prompt: 'x', width: 64, height: 64, band_px: 4})}).then(r => r.status)"""
    assert page.evaluate(post, False) == 403
    assert page.evaluate(post, True) == 202
    # Signing out ends it
    page.get_by_role("button", name="Sign out", exact=True).click()
    assert "/signin" in page.url
    assert page.evaluate("fetch('/api/jobs').then(r => r.status)") == 401
    assert httpx.get(f"{api.url}/api/jobs").status_code == 401


def test_dashboard_renders_a_script_prompt_as_text_on_every_page(page: Any, dash: Any) -> None:
    # Given a job (and its batch) whose prompt is HTML
    api, _ = dash()
    done = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": SCRIPT_PROMPT, **SMALL}).json()
    job_id, batch_id = done["jobs"][0]["job_id"], done["batch_id"]
    failed = api.client.post("/api/generate", json={"prompt": "<b>bold</b>", **SMALL}).json()["job_ids"][0]
    _wait(lambda: _job_state(api, failed) == "succeeded")
    pages = {
        "overview": "/",
        "jobs": "/jobs",
        "job-script-prompt": f"/jobs/{job_id}",
        "gallery": "/gallery",
        "batches": "/batches",
        "batch": f"/batches/{batch_id}",
        "jobs-filtered": "/jobs?q=%3Cscript%3E",
    }
    for name, path in pages.items():
        page.goto(api.url + path)
        page.wait_for_load_state("networkidle")
        # Then the prompt shows as the text it is, and nothing of it ran (the page fixture fails on a dialog)
        if name not in ("overview", "batches"):
            assert page.get_by_text(SCRIPT_PROMPT, exact=False).count() >= 1, name
        assert page.locator("b", has_text="bold").count() == 0, name
        assert page.evaluate("document.querySelectorAll('main script').length") == 0, name
        screenshot(page, name)


def test_dashboard_fits_a_phone_and_is_keyboard_reachable(browser: Any, dash: Any) -> None:
    api, _ = dash()
    done = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "phone " * 30, **SMALL}).json()
    job_id, batch_id = done["jobs"][0]["job_id"], done["batch_id"]
    api.client.post("/api/pause", params={"batch": batch_id})  # the overview then lists a paused batch too
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        phone = context.new_page()
        for path in ("/", "/jobs", f"/jobs/{job_id}", "/gallery", "/batches", f"/batches/{batch_id}", "/submit"):
            phone.goto(api.url + path)
            # No sideways scrolling of the page itself (wide tables scroll in their own box)
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (path, width)
        screenshot(phone, "phone-job")
        # The first Tab reaches the skip link, the next ones the navigation
        phone.goto(f"{api.url}/jobs")
        phone.keyboard.press("Tab")
        assert phone.evaluate("document.activeElement.textContent") == "Skip to content"
        phone.keyboard.press("Tab")
        phone.keyboard.press("Tab")
        assert phone.evaluate("document.activeElement.textContent") == "Overview"
    finally:
        context.close()


def _wait(predicate: Any, timeout_s: float = 30.0) -> bool:
    from tests.helpers import wait_until

    return wait_until(predicate, timeout_s=timeout_s, interval_s=0.1)
