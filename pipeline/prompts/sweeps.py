"""Parameter sweeps: ``--sweep cfg_scale=5,7,9 --sweep sampler_name="Euler a,DPM++ 2M"`` multiply the jobs.

A sweep names any key a batch row may set (sdpipe's or A1111's name) and its values; the jobs are the
product of every sweep's values, in the order given (the first sweep is the X axis of a contact sheet,
the second the Y axis). Values are text here, converted as a CSV cell of that key is.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.errors import InputError

__all__ = ["MAX_SWEEP_JOBS", "parse_sweeps", "sweep_combinations"]

#: Most combinations a set of sweeps may make.
MAX_SWEEP_JOBS = 1000


def _split(raw: str) -> list[str]:
    """``5,7,9`` or a JSON list (``["a, b", "c"]``, for values holding commas)."""
    stripped = raw.strip()
    if stripped.startswith("["):
        try:
            values = json.loads(stripped)
        except ValueError:
            values = None
        if isinstance(values, list):
            return [v if isinstance(v, str) else json.dumps(v) for v in values]
    return [part.strip() for part in raw.split(",")]


def parse_sweeps(items: Iterable[str] | Mapping[str, Any]) -> dict[str, list[Any]]:
    """``KEY=V1,V2,...`` items (or a mapping from a file or a stored schedule) as {key: values}.

    Raises:
        InputError: an item that is not KEY=values, an empty value, a key given twice, too many combinations.
    """
    sweeps: dict[str, list[Any]] = {}
    pairs: Iterable[tuple[str, Any]]
    if isinstance(items, Mapping):
        pairs = items.items()
    else:
        pairs = []
        for item in items:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise InputError(
                    f"--sweep {item!r} is not KEY=V1,V2,...", field="--sweep", value=item, expected="KEY=V1,V2"
                )
            pairs.append((key.strip(), _split(raw)))
    for key, values in pairs:
        listed = list(values) if isinstance(values, list | tuple) else _split(str(values))
        if not listed or any(isinstance(v, str) and not v.strip() for v in listed):
            raise InputError(f"--sweep {key}: a value is empty", field="--sweep", value=key)
        if key in sweeps:
            raise InputError(f"--sweep {key} is given twice", field="--sweep", value=key)
        sweeps[key] = listed
    total = 1
    for values in sweeps.values():
        total *= len(values)
    if total > MAX_SWEEP_JOBS:
        raise InputError(
            f"--sweep makes {total} combinations, more than {MAX_SWEEP_JOBS}",
            field="--sweep",
            limit=MAX_SWEEP_JOBS,
        )
    return sweeps


def sweep_combinations(sweeps: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the sweeps' values, the last sweep varying fastest; ``[{}]`` for no sweep."""
    keys = list(sweeps)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(sweeps[k] for k in keys))]
