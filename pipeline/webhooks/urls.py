"""Which webhook URLs are accepted: http(s) only, and over the HTTP API only hosts in ``WEBHOOK_ALLOW_HOSTS``.

A URL a client of the HTTP API gives would otherwise make the server send requests wherever the
client says (its internal network, its metadata endpoint): the operator lists the receivers' hosts.
Patterns: ``example.com`` (that host), ``*.example.com`` (its subdomains), ``host:port`` (that port only).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pipeline.errors import InputError

__all__ = ["check_webhook_url", "host_allowed", "shown_url"]


def check_webhook_url(url: str, *, field: str = "webhook") -> str:
    """``url`` stripped, if it is an absolute http(s) URL with a host.

    Raises:
        InputError: another scheme, no host, or not a URL.
    """
    text = url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise InputError(f"{field}: not a URL", field=field, expected="an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(
            f"{field}: only http and https URLs can receive webhooks (got {parts.scheme or 'no'} scheme)",
            field=field,
            expected="an http(s) URL",
        )
    return text


def host_allowed(url: str, allow_hosts: str) -> bool:
    """Whether ``url``'s host (and port) matches one of the comma-separated ``allow_hosts`` patterns."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for raw in allow_hosts.split(","):
        pattern = raw.strip().lower()
        if not pattern:
            continue
        name, _, wanted_port = pattern.partition(":")
        if wanted_port and (not wanted_port.isdigit() or int(wanted_port) != port):
            continue
        if name == host or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False


def shown_url(url: str) -> str:
    """``url`` as status and logs show it: scheme, host, port and path, never credentials or a query
    (a token in ``?key=`` stays private)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
