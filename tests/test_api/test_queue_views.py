"""What the dashboard's live parts and controls read from the API: queued jobs per priority and the
pause state in the overview, the SD server's catalog, the next runs of a schedule, and an event
stream that starts after a given event id (``?after=``, for a browser's first connection)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from fastapi import FastAPI

from pipeline.models import ScheduleRecord
from tests.test_api.conftest import ApiServer, StartApi, assert_error

SMALL = {"width": 64, "height": 64, "band_px": 4}


def _runtime(api: ApiServer) -> Any:
    app = api.server.config.app
    assert isinstance(app, FastAPI)
    return app.state.runtime


def test_queue_overview_counts_queued_jobs_per_priority_and_shows_the_pause(start_api: StartApi) -> None:
    # Given a paused queue (nothing starts) with jobs of each priority queued
    api = start_api()
    assert api.client.post("/api/pause").json()["paused"] is True
    for priority, count in (("high", 1), ("normal", 2), ("low", 3)):
        body = {"prompt": f"{priority} job", "count": count, "priority": priority, **SMALL}
        assert api.client.post("/api/generate", json=body).status_code == 202
    # Then the overview counts them per priority and says the queue is paused
    overview = api.client.get("/api/overview").json()
    assert overview["queued_by_priority"] == {"high": 1, "normal": 2, "low": 3}
    assert overview["queued_by_priority_truncated"] is False
    assert overview["pause"] == {"paused": True, "paused_batches": []}
    # And after a resume they run, and the overview says so
    assert api.client.post("/api/resume").json()["paused"] is False
    deadline = time.monotonic() + 60
    while api.client.get("/api/overview").json()["counts"]["succeeded"] < 6 and time.monotonic() < deadline:
        time.sleep(0.2)
    overview = api.client.get("/api/overview").json()
    assert overview["queued_by_priority"] == {"high": 0, "normal": 0, "low": 0}
    assert overview["pause"]["paused"] is False and overview["counts"]["succeeded"] == 6


def test_queue_catalog_lists_the_servers_samplers_schedulers_and_checkpoints(api: ApiServer) -> None:
    catalog = api.client.get("/api/catalog").json()
    assert "Euler a" in catalog["samplers"] and "DPM++ 2M" in catalog["samplers"]
    assert "Automatic" in catalog["schedulers"]
    assert catalog["models"] and all(isinstance(title, str) and title for title in catalog["models"])
    # Every name listed is one a request may use
    body = {"prompt": "x", "sampler": catalog["samplers"][-1], "model": catalog["models"][-1], **SMALL}
    assert api.client.post("/api/generate", json=body).status_code == 202


def test_queue_catalog_is_null_lists_when_the_server_does_not_answer(start_api: StartApi) -> None:
    api = start_api(sd_api_url="http://127.0.0.1:9")  # the discard port: nothing answers
    assert api.client.get("/api/catalog").json() == {"samplers": None, "schedulers": None, "models": None}


def test_queue_schedules_list_their_next_runs(api: ApiServer) -> None:
    now = time.time()
    _runtime(api).store.save_schedule(
        ScheduleRecord(name="hourly", cron="0 * * * *", file="/tmp/rows.jsonl", created_at=now)
    )
    [schedule] = api.client.get("/api/schedules").json()
    runs = schedule["next_runs"]
    assert len(runs) == 3 and runs[0] == schedule["next_fire_time"] and now < runs[0] <= now + 3600
    assert [b - a for a, b in zip(runs, runs[1:], strict=False)] == [3600.0, 3600.0]


def _events(api: ApiServer, params: dict[str, str], *, until: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{api.url}/api/events", params=params, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["type"] == until:
                    break
    return events


def test_queue_event_stream_starts_after_the_given_event(api: ApiServer) -> None:
    done = api.client.post("/api/generate", params={"wait": "true"}, json={"prompt": "a fox", **SMALL}).json()
    batch = done["batch_id"]
    everything = _events(api, {"batch": batch}, until="batch.completed")
    assert everything[0]["type"] == "job.queued"
    middle = everything[len(everything) // 2]
    rest = _events(api, {"batch": batch, "after": middle["id"]}, until="batch.completed")
    assert [e["id"] for e in rest] == [e["id"] for e in everything[len(everything) // 2 + 1 :]]
    # An id that is no event id is refused in one line, before any stream starts
    assert_error(api.client.get("/api/events", params={"after": "'; DROP"}), 422)
