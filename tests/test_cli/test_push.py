"""Issue 18 through the CLI, embedded: webhooks (and ``webhooks test``), ``--idempotency-key``,
``schedule add --webhook/--priority``, ``priority`` in batch rows (CSV, YAML, JSON lines)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from pipeline.sd.mock.http import get_mock_server
from tests.procs import free_port
from tests.receiver import Receiver
from tests.test_cli.conftest import Invoke

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SMALL = ["--width", "64", "--height", "64"]
#: Retries a few tenths of a second apart, and a short wait at exit: the tests stay fast.
FAST_RETRY = {"WEBHOOK_RETRY_MIN_S": "0.2", "WEBHOOK_RETRY_MAX_S": "0.4", "WEBHOOK_TIMEOUT_S": "2"}


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)


def _events(receiver: Receiver) -> list[dict[str, Any]]:
    """Every delivery answered, verified with the standardwebhooks verifier (raises on a bad signature)."""
    verifier = Webhook(SECRET)
    with receiver.lock:
        delivered = [(headers, body) for headers, body, status in receiver.deliveries if status == 200]
    return [verifier.verify(body, headers) for headers, body in delivered]


def test_generate_embedded_sends_signed_webhooks_before_it_exits(
    sdpipe: Invoke, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory()
    result = sdpipe("generate", "a fox", "--sd-url", "mock://", "--webhook", receiver.url, "--json", *SMALL)
    assert result.exit_code == 0, result.output
    (job,) = json.loads(result.stdout)
    # Delivered by the time the command returned (the process would take pending deliveries with it)
    # (one job's events arrive in order; a batch's end is its own event and may overtake the job's)
    events = {event["type"]: event for event in _events(receiver)}
    assert sorted(events) == ["batch.completed", "job.succeeded"]
    succeeded = events["job.succeeded"]
    assert succeeded["data"]["job_id"] == job["job_id"] and succeeded["data"]["prompt"] == "a fox"
    assert succeeded["timestamp"] <= events["batch.completed"]["timestamp"]
    status = json.loads(sdpipe("status", job["job_id"], "--json").stdout)
    assert [(d["state"], d["last_status"]) for d in status["webhooks"]] == [("delivered", 200)]


def test_generate_embedded_waits_for_a_webhook_retry_before_it_exits(
    sdpipe: Invoke, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory(fail_first=1)  # 500 to the first delivery of each event
    env = {**FAST_RETRY, "WEBHOOK_EXIT_WAIT_S": "30"}
    result = sdpipe("generate", "a fox", "--sd-url", "mock://", "--webhook", receiver.url, "--json", *SMALL, env=env)
    assert result.exit_code == 0, result.output
    assert "still pending" not in result.stderr
    (job,) = json.loads(result.stdout)
    # The retry was made by this process before it exited: both events answered 200 on their second attempt
    assert sorted(event["type"] for event in _events(receiver)) == ["batch.completed", "job.succeeded"]
    assert sorted(receiver.attempts.values()) == [2, 2]
    status = json.loads(sdpipe("status", job["job_id"], "--json").stdout)
    assert [(d["state"], d["attempts"], d["last_status"]) for d in status["webhooks"]] == [("delivered", 2, 200)]


def _generate_while_receiver_is_down(sdpipe: Invoke, url: str) -> tuple[Any, str]:
    """An embedded generate whose receiver refuses connections past the exit wait; returns the result and the
    job's webhook-id."""
    env = {**FAST_RETRY, "WEBHOOK_EXIT_WAIT_S": "1"}
    result = sdpipe("generate", "a fox", "--sd-url", "mock://", "--webhook", url, "--json", *SMALL, env=env)
    assert result.exit_code == 0, result.output
    (job,) = json.loads(result.stdout)
    (delivery,) = json.loads(sdpipe("status", job["job_id"], "--json").stdout)["webhooks"]
    assert delivery["state"] == "pending" and delivery["attempts"] >= 1 and delivery["last_status"] is None
    return result, delivery["webhook_id"]


def test_generate_embedded_leaves_undelivered_webhooks_to_the_next_embedded_command(
    sdpipe: Invoke, receiver_factory: Callable[..., Receiver]
) -> None:
    port = free_port()
    first, webhook_id = _generate_while_receiver_is_down(sdpipe, f"http://127.0.0.1:{port}/hook")
    assert "waiting up to 1 s for 2 webhook delivery(ies)" in first.stderr
    assert "2 webhook delivery(ies) still pending" in first.stderr and "webhooks retry" in first.stderr
    # The receiver comes back; the next embedded command (with no webhook of its own) delivers them
    receiver = receiver_factory(port=port)
    second = sdpipe("generate", "an owl", "--sd-url", "mock://", *SMALL, env=FAST_RETRY)
    assert second.exit_code == 0, second.output
    assert "still pending" not in second.stderr
    events = {event["type"]: event for event in _events(receiver)}
    assert set(events) == {"job.succeeded", "batch.completed"}
    assert events["job.succeeded"]["data"]["prompt"] == "a fox"
    assert webhook_id in receiver.answered()  # the same webhook-id as before the first command exited


def test_webhooks_retry_sends_pending_deliveries_now(sdpipe: Invoke, receiver_factory: Callable[..., Receiver]) -> None:
    port = free_port()
    _generate_while_receiver_is_down(sdpipe, f"http://127.0.0.1:{port}/hook")
    still_down = sdpipe("webhooks", "retry", env={**FAST_RETRY, "WEBHOOK_EXIT_WAIT_S": "0.5"})
    assert still_down.exit_code == 1, still_down.output
    assert "2 pending webhook delivery(ies) sent again" in still_down.stdout
    assert "0 delivered, 0 given up, 2 still pending" in still_down.stdout
    receiver = receiver_factory(port=port)
    retried = sdpipe("webhooks", "retry", env=FAST_RETRY)
    assert retried.exit_code == 0, retried.output
    assert "2 delivered, 0 given up, 0 still pending" in retried.stdout
    assert sorted(event["type"] for event in _events(receiver)) == ["batch.completed", "job.succeeded"]
    nothing = sdpipe("webhooks", "retry")
    assert nothing.exit_code == 0 and "0 pending webhook delivery(ies) sent again" in nothing.stdout


def test_webhooks_test_sends_a_signed_test_event_and_prints_the_answer(
    sdpipe: Invoke, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory(reply=b"thanks")
    result = sdpipe("webhooks", "test", receiver.url)
    assert result.exit_code == 0, result.output
    assert "HTTP 200" in result.stdout and "thanks" in result.stdout
    (event,) = _events(receiver)
    assert event["type"] == "webhook.test"
    (headers, _body, _status) = receiver.deliveries[0]
    assert headers["webhook-id"] in result.stdout
    failing = receiver_factory(fail_first=1)
    refused = sdpipe("webhooks", "test", failing.url)
    assert refused.exit_code == 1 and "HTTP 500" in refused.stdout


def test_generate_with_one_idempotency_key_submits_once_and_refuses_other_arguments(sdpipe: Invoke) -> None:
    url = "mock://?seed=11"
    args = ("generate", "an idempotent fox", "--sd-url", url, "--idempotency-key", "k-1", "--json", *SMALL)
    first = sdpipe(*args)
    again = sdpipe(*args)
    assert first.exit_code == 0 and again.exit_code == 0, (first.output, again.output)
    assert [job["job_id"] for job in json.loads(again.stdout)] == [job["job_id"] for job in json.loads(first.stdout)]
    assert get_mock_server(url).stats()["txt2img_requests"] == 1
    other = sdpipe("generate", "another fox", "--sd-url", url, "--idempotency-key", "k-1", *SMALL)
    assert other.exit_code == 2
    assert len(other.stderr.strip().splitlines()) == 1 and "idempotency" in other.stderr.lower()
    assert "Traceback" not in other.output


def test_schedule_add_stores_webhook_and_priority_and_applies_them_to_each_run(
    sdpipe: Invoke, tmp_path: Path, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory()
    path = tmp_path / "nightly.txt"
    path.write_text("a scheduled lighthouse\n")
    added = sdpipe(
        "schedule", "add", "nightly", str(path), "--cron", "0 2 * * *", "--priority", "low", "--webhook", receiver.url
    )
    assert added.exit_code == 0, added.output
    (listed,) = json.loads(sdpipe("schedule", "list", "--json").stdout)
    assert json.dumps(listed).count(receiver.url) == 1 and "low" in json.dumps(listed)
    ran = sdpipe("schedule", "run", "nightly", env={"SD_API_URL": "mock://"})
    assert ran.exit_code == 0, ran.output
    shown = json.loads(sdpipe("schedule", "show", "nightly", "--json").stdout)
    batch = json.loads(sdpipe("status", "--batch", shown["runs"][0]["batch_id"], "--json").stdout)
    job_id = batch["rows"][0]["jobs"][0]["job_id"]
    status = json.loads(sdpipe("status", job_id, "--json").stdout)
    assert status["priority"] == "low"
    assert [d["url"] for d in status["webhooks"]] == [receiver.url]
    assert "job.succeeded" in [event["type"] for event in _events(receiver)]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("rows.csv", "prompt,priority\nurgent fox,high\nplain fox,\n"),
        ("rows.yaml", "jobs:\n  - prompt: urgent fox\n    priority: high\n  - prompt: plain fox\n"),
        ("rows.jsonl", '{"prompt": "urgent fox", "priority": "high"}\n{"prompt": "plain fox"}\n'),
    ],
)
def test_batch_row_priority_applies_to_its_jobs_in_every_format(
    sdpipe: Invoke, tmp_path: Path, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    result = sdpipe("batch", str(path), "--sd-url", "mock://", "--priority", "low", *SMALL)
    assert result.exit_code == 0, result.output
    batch_id = result.stdout.splitlines()[0].split()[1]
    batch = json.loads(sdpipe("status", "--batch", batch_id, "--json").stdout)
    priorities = {}
    for row in batch["rows"]:
        (job,) = row["jobs"]
        priorities[row["params"]["prompt"]] = json.loads(sdpipe("status", job["job_id"], "--json").stdout)["priority"]
    assert priorities == {"urgent fox": "high", "plain fox": "low"}  # a row's own wins over --priority
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,priority\nfox,urgent\n")
    refused = sdpipe("batch", str(bad), "--sd-url", "mock://", *SMALL)
    assert refused.exit_code == 2 and "priority" in refused.output
