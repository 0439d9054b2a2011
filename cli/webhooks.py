"""``sdpipe webhooks test URL``, ``sdpipe webhooks retry`` and ``sdpipe webhooks secret``."""

from __future__ import annotations

import base64
import os
import time
from collections import Counter
from typing import Annotated

import httpx
import typer

from cli.common import load, settle_webhooks
from cli.output import cli_errors, echo
from pipeline.errors import InputError
from pipeline.events.model import Event
from pipeline.webhooks.sending import post
from pipeline.webhooks.signing import webhook_id
from pipeline.webhooks.urls import check_webhook_url

__all__ = ["webhooks_app"]

webhooks_app = typer.Typer(
    help="Webhooks: send a signed test event, send pending deliveries again, make a secret.", no_args_is_help=True
)


@webhooks_app.command("test")
def webhooks_test(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The receiver's URL.")],
) -> None:
    """Send a signed ``webhook.test`` event to URL (WEBHOOK_SECRET) and print what came back."""
    with cli_errors():
        settings = load(ctx)
        target = check_webhook_url(url, field="URL")
        if settings.webhook_secret is None:
            raise InputError("WEBHOOK_SECRET is not set: webhooks are signed with it", field="WEBHOOK_SECRET")
        now = time.time()
        msg_id = webhook_id(f"test:{now!r}", target)
        body = Event(type="webhook.test", ts=now, data={"message": "a test event from sdpipe webhooks test"})
        payload = body.model_dump_json(include={"type", "data"})
        with httpx.Client(timeout=settings.webhook_timeout_s) as client:
            result = post(client, target, msg_id, payload, secret=settings.webhook_secret.get_secret_value(), now=now)
    echo(f"webhook-id {msg_id}")
    if result.status is None:
        echo(f"no answer: {result.error} after {result.elapsed_s:.1f} s", err=True)
        raise typer.Exit(1)
    echo(f"HTTP {result.status} in {result.elapsed_s * 1000:.0f} ms")
    if result.body:
        echo(result.body)
    raise typer.Exit(0 if 200 <= result.status < 300 else 1)


@webhooks_app.command("retry")
def webhooks_retry(ctx: typer.Context) -> None:
    """Send every pending webhook delivery again now (same webhook-id and body).

    Embedded: this process sends them and waits up to WEBHOOK_EXIT_WAIT_S; exit 1 if some are still
    pending or given up. Redis mode: they are queued for the workers at once. Deliveries whose event is
    older than WEBHOOK_RETRY_WINDOW_S are given up instead.
    """
    from actors import open_runtime

    with cli_errors():
        settings = load(ctx)
        with open_runtime(settings, start_embedded_worker=False) as runtime:
            resent = runtime.webhooks.resend(now_too=True)
            given_up = f"; {resent.given_up} given up (older than WEBHOOK_RETRY_WINDOW_S)" if resent.given_up else ""
            echo(f"{len(resent.sent)} pending webhook delivery(ies) sent again{given_up}")
            if not runtime.embedded:
                return
            left = settle_webhooks(runtime)
            states = Counter(
                delivery.state for delivery in map(runtime.deliveries.get, resent.sent) if delivery is not None
            )
    echo(f"{states['delivered']} delivered, {states['failed']} given up, {left} still pending")
    raise typer.Exit(1 if left or states["failed"] or resent.given_up else 0)


@webhooks_app.command("secret")
def webhooks_secret() -> None:
    """Print a new random WEBHOOK_SECRET (whsec_ + 32 random bytes, base64)."""
    echo("whsec_" + base64.b64encode(os.urandom(32)).decode())
