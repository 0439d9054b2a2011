"""The webhook retry rule, signatures and URL checks, as pure functions."""

from __future__ import annotations

import json

import pytest
from standardwebhooks import Webhook

from pipeline.errors import InputError
from pipeline.webhooks.policy import RetryPolicy, parse_retry_after
from pipeline.webhooks.signing import sign_headers, webhook_id
from pipeline.webhooks.urls import check_webhook_url, host_allowed, shown_url

POLICY = RetryPolicy(min_s=5, max_s=3600, window_s=86_400)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429, None])
def test_policy_retries_timeouts_5xx_408_429(status: int | None) -> None:
    decision = POLICY.decide(status, attempts=1, first_at=0, now=10, jitter=0)
    assert (decision.outcome, decision.delay_s) == ("retry", 5)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301])
def test_policy_other_4xx_end_the_delivery(status: int) -> None:
    assert POLICY.decide(status, attempts=1, first_at=0, now=10).outcome == "give_up"


def test_policy_backoff_doubles_up_to_the_cap() -> None:
    delays = [POLICY.decide(500, attempts=n, first_at=0, now=0, jitter=0).delay_s for n in (1, 2, 3, 12)]
    assert delays == [5, 10, 20, 3600]


def test_policy_honours_retry_after() -> None:
    decision = POLICY.decide(429, attempts=1, first_at=0, now=10, retry_after_s=42, jitter=0)
    assert decision.delay_s == 42


def test_policy_gives_up_past_the_window() -> None:
    decision = POLICY.decide(503, attempts=20, first_at=0, now=86_000, jitter=0)
    assert decision.outcome == "give_up" and "WEBHOOK_RETRY_WINDOW_S" in decision.reason


def test_policy_delivered_on_2xx() -> None:
    assert POLICY.decide(204, attempts=3, first_at=0, now=10).outcome == "delivered"


def test_retry_after_reads_seconds_and_dates() -> None:
    assert parse_retry_after("120", now=0) == 120
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40) == 60
    assert parse_retry_after("soon", now=0) is None


def test_signature_verifies_with_the_standardwebhooks_verifier() -> None:
    body = json.dumps({"type": "job.succeeded", "data": {"job_id": "j1"}})
    msg_id = webhook_id("j1:succeeded:1.0", "https://example.com/hook")
    import time

    headers = sign_headers(SECRET, msg_id, time.time(), body)
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    with pytest.raises(Exception, match="(?i)signature"):
        Webhook(SECRET).verify(body.replace("j1", "j2"), headers)


def test_webhook_id_is_stable_per_event_and_url() -> None:
    assert webhook_id("k", "https://a/") == webhook_id("k", "https://a/")
    assert webhook_id("k", "https://a/") != webhook_id("k2", "https://a/")
    assert webhook_id("k", "https://a/") != webhook_id("k", "https://b/")


def test_webhook_urls_must_be_http() -> None:
    assert check_webhook_url(" https://example.com/h ") == "https://example.com/h"
    for bad in ("file:///etc/passwd", "ftp://example.com/", "gopher://x", "not a url"):
        with pytest.raises(InputError):
            check_webhook_url(bad)


def test_allow_hosts_patterns() -> None:
    allow = "example.com, *.hooks.test, 10.0.0.5:8080"
    assert host_allowed("https://example.com/h", allow)
    assert host_allowed("https://a.hooks.test/h", allow)
    assert host_allowed("http://10.0.0.5:8080/h", allow)
    assert not host_allowed("http://10.0.0.5:9090/h", allow)
    assert not host_allowed("http://169.254.169.254/latest", allow)
    assert not host_allowed("https://example.com.evil.net/", allow)
    assert not host_allowed("https://example.com/", "")


def test_shown_url_hides_query_and_credentials() -> None:
    assert shown_url("https://user:pw@example.com:8443/h?token=s3cret") == "https://example.com:8443/h"
