"""``sdpipe webhooks test URL`` and ``sdpipe webhooks secret``."""

from __future__ import annotations

import base64
import os
import time
from typing import Annotated

import httpx
import typer

from cli.common import load
from cli.output import cli_errors, echo
from pipeline.errors import InputError
from pipeline.events.model import Event
from pipeline.webhooks.sending import post
from pipeline.webhooks.signing import webhook_id
from pipeline.webhooks.urls import check_webhook_url

__all__ = ["webhooks_app"]

webhooks_app = typer.Typer(help="Webhooks: send a signed test event, make a secret.", no_args_is_help=True)


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


@webhooks_app.command("secret")
def webhooks_secret() -> None:
    """Print a new random WEBHOOK_SECRET (whsec_ + 32 random bytes, base64)."""
    echo("whsec_" + base64.b64encode(os.urandom(32)).decode())
