"""``mock://`` URLs: their options, parsed and checked, without loading the mock server itself.

Settings validation checks every ``SD_API_URL`` entry of every command, and the mock's renderer
(numpy, PIL) costs a command's whole start-up: this module needs neither.
:class:`~pipeline.sd.mock.server.MockSDServer` applies the same :func:`check_options`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pipeline.sd.mock.faults import DEFAULT_HANG_MS, FaultPlan

__all__ = ["check_options", "parse_mock_url", "parse_models", "url_options"]


def _url_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean (use 1 or 0)")


def parse_models(text: str) -> tuple[str, ...]:
    """Checkpoint file names from ``a,b,c`` (``;`` also separates, as in a ``mock://`` URL).

    Raises:
        ValueError: no name at all.
    """
    names = tuple(name.strip() for name in re.split(r"[,;]", text) if name.strip())
    if not names:
        raise ValueError("no checkpoint names (use e.g. a.safetensors;b.safetensors)")
    return names


#: Query parameters a ``mock://`` URL may carry, and their parsers.
_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "latency_ms": int,
    "fail_rate": float,
    "seed": int,
    "faults": FaultPlan.parse,
    "hang_ms": int,
    "nowebui": _url_bool,
    "models": parse_models,
    "model_load_ms": int,
}


def check_options(
    *,
    latency_ms: int = 0,
    fail_rate: float = 0.0,
    faults: str | FaultPlan | None = None,
    hang_ms: int = DEFAULT_HANG_MS,
    model_load_ms: int = 0,
    **_: Any,
) -> FaultPlan:
    """The fault plan of a mock with these options, once the options are in range.

    Raises:
        ValueError: a negative latency, hang or load time, a ``fail_rate`` outside [0, 1], or a
            ``fail_rate`` beside a plan that already has 500s.
    """
    if latency_ms < 0 or hang_ms < 0 or not 0.0 <= fail_rate <= 1.0:
        raise ValueError("latency_ms and hang_ms must be >= 0 and fail_rate within [0, 1]")
    if model_load_ms < 0:
        raise ValueError("model_load_ms must be >= 0")
    plan = FaultPlan.coerce(faults)
    if fail_rate and plan.rate("500"):
        raise ValueError(f"fail_rate is an alias for the fault 500:P, and the plan {plan} already has 500")
    return plan.with_rate("500", fail_rate) if fail_rate else plan


def url_options(url: str) -> tuple[str, dict[str, Any]]:
    parts = urlsplit(url.strip())
    if parts.scheme != "mock":
        raise ValueError(f"{url!r} is not a mock:// URL")
    options: dict[str, Any] = {}
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _URL_OPTIONS:
            raise ValueError(f"unknown mock:// option {name!r}; the options are {', '.join(_URL_OPTIONS)}")
        parser = _URL_OPTIONS[name]
        try:
            options[name] = parser(raw)
        except ValueError as exc:
            reason = "not a whole number" if parser is int else "not a number" if parser is float else str(exc)
            raise ValueError(f"mock:// option {name}={raw!r}: {reason}") from None
    return parts.netloc, options


def parse_mock_url(url: str) -> tuple[str, dict[str, Any]]:
    """The name and the options of a ``mock://[name][?option=value&...]`` URL, checked in full.

    A URL accepted here builds a server (the server applies the same :func:`check_options`): settings
    validation calls this, so a bad ``mock://`` entry is refused before any job is created. The options
    are listed under :func:`pipeline.sd.mock.http.get_mock_server`.

    Raises:
        ValueError: not a ``mock://`` URL, an unknown option, a malformed value, or a value out of range.
    """
    name, options = url_options(url)
    try:
        check_options(**options)  # the server's own checks: ranges, fail_rate against a 500 fault
    except ValueError as exc:
        raise ValueError(f"{url.strip()!r}: {exc}") from None
    return name, options
