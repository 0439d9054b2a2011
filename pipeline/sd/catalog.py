"""What an SD server offers (checkpoints, samplers, schedulers, upscalers, txt2img fields), checked before enqueue.

A1111 1.10 silently replaces an unknown sampler by its first one and silently ignores an unknown
``override_settings.sd_model_checkpoint``: a typo renders the wrong image and nobody is told. So every
request is checked against the server's own lists before any job exists (:class:`ServerCatalog`, a
:class:`~pipeline.jobs.planning.RequestChecker`):

- ``model`` (a checkpoint title, model name, file name or hash; case-insensitive) becomes the title of
  ``GET /sdapi/v1/sd-models``, sent as ``override_settings.sd_model_checkpoint``;
- ``sampler_name`` and ``scheduler`` (names, labels and aliases; case-insensitive) become the server's
  own names (``"euler a"`` is sent as ``Euler a``);
- an upscale's ``upscaler`` (:meth:`ServerCatalog.check_upscale`) must be a name of
  ``GET /sdapi/v1/upscalers``: A1111's extras look it up by exact name, so one written in another case
  is sent as the server writes it; ``Lanczos`` runs locally and is always valid;
- field names are checked against the server's txt2img request schema (``/openapi.json``).

A name that matches none is an :class:`~pipeline.errors.InputError` naming the closest ones. A list
the server does not serve (``/openapi.json`` off, no ``/schedulers`` before 1.9) is skipped, the field
list with one warning per server: the names go as written. A server that does not answer at all (down
while jobs are queued for later) is asked once per submission, with a warning, and nothing is
checked. Lists are cached per server for :data:`CATALOG_TTL_S`.
"""

from __future__ import annotations

import difflib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError, SDError, SDTransientError
from pipeline.models import GenerationParams
from pipeline.sd.client import SDClient
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.upscale.params import UpscaleParams

__all__ = ["CATALOG_TTL_S", "ServerCatalog", "open_catalog"]

logger = logging.getLogger(__name__)

#: How long one server's lists are reused, in seconds (new checkpoints show up after this).
CATALOG_TTL_S = 60.0
#: Closest names an error lists.
_CLOSEST = 3
_TXT2IMG = "/sdapi/v1/txt2img"

_cache: dict[tuple[str, str], tuple[float, Any]] = {}
_warned: set[tuple[str, str]] = set()
_lock = threading.Lock()


def _closest(name: str, choices: Iterable[str]) -> list[str]:
    options = sorted(set(choices))
    lowered = {option.lower(): option for option in options}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=_CLOSEST, cutoff=0.3)
    return [lowered[key] for key in close] or options[:_CLOSEST]


def _norm(text: str) -> str:
    return text.strip().casefold()


class ServerCatalog:
    """The checkpoints, samplers, schedulers and txt2img fields of one SD server (cached per server)."""

    def __init__(self, client: SDClient, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._clock = clock
        #: The server did not answer (down, timed out, 5xx): the other lists are not asked for either.
        self._unreachable = False

    def _list(self, path: str) -> Any:
        """The JSON of ``GET path``, cached; None (warned once) when the server does not serve it."""
        key = (self._client.url, path)
        now = self._clock()
        with _lock:
            hit = _cache.get(key)
        if hit is not None and now - hit[0] < CATALOG_TTL_S:
            return hit[1]
        if self._unreachable:
            return None
        try:
            value = self._client.get_json(path)
        except SDTransientError as exc:
            # Jobs may be queued while the server is down: names go as written, checked next time.
            self._unreachable = True
            logger.warning(
                "cannot reach the SD server at %s to check names (%s): they are sent as written, unchecked",
                self._client.url,
                exc.message,
            )
            return None
        except SDError as exc:
            with _lock:
                first = key not in _warned
                _warned.add(key)
            if first:
                # Only the field list is worth a warning: without it a misspelt field is sent unchecked.
                log = logger.warning if path == "/openapi.json" else logger.info
                log(
                    "the SD server at %s does not serve %s (%s): names are sent as written, unchecked",
                    self._client.url,
                    path,
                    exc.message,
                )
            value = None
        with _lock:
            _cache[key] = (now, value)
        return value

    def known_fields(self) -> frozenset[str] | None:
        """The property names of the server's txt2img request schema (``/openapi.json``), or None."""
        spec = self._list("/openapi.json")
        try:
            body = spec["paths"][_TXT2IMG]["post"]["requestBody"]["content"]["application/json"]["schema"]
            if "$ref" in body:
                body = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
            properties = body["properties"]
        except (KeyError, TypeError, AttributeError):
            return None
        return frozenset(properties) if isinstance(properties, dict) else None

    def samplers(self) -> list[str] | None:
        """The server's samplers as :meth:`check` sends them, or None when it does not list them."""
        return _names(self._list("/sdapi/v1/samplers"), ("label", "name"))

    def schedulers(self) -> list[str] | None:
        """The server's schedulers by label (as :meth:`check` sends them), or None when it does not list them."""
        return _names(self._list("/sdapi/v1/schedulers"), ("label", "name"))

    def models(self) -> list[str] | None:
        """The server's checkpoint titles (``/sdapi/v1/sd-models``), or None when it does not list them."""
        return _names(self._list("/sdapi/v1/sd-models"), ("title",))

    def upscalers(self) -> list[str] | None:
        """The server's upscaler names (``/sdapi/v1/upscalers``), or None when it does not list them."""
        return _names(self._list("/sdapi/v1/upscalers"), ("name",))

    def check_upscale(self, params: UpscaleParams) -> UpscaleParams:
        """``params`` with the server's names for its upscaler, sampler and scheduler (those every tile
        is sent with).

        Raises:
            InputError: an upscaler, sampler or scheduler the server does not have (``field`` says which).
        """
        update = self._sampling(params.sampler_name, params.scheduler)
        if not params.local:
            upscaler = self._resolve_upscaler(params.upscaler)
            if upscaler is not None:
                update["upscaler"] = upscaler
        return params.model_copy(update=update) if update else params

    def _sampling(self, sampler_name: str, scheduler: str) -> dict[str, Any]:
        """The server's names for a sampler and a scheduler, where it has them (``sampler_name`` and
        ``scheduler`` keys of a model update).

        Raises:
            InputError: a sampler or scheduler the server does not have.
        """
        update: dict[str, Any] = {}
        sampler = self._resolve("sampler_name", sampler_name, self._list("/sdapi/v1/samplers"))
        if sampler is not None:
            update["sampler_name"] = sampler
        resolved = self._resolve("scheduler", scheduler, self._list("/sdapi/v1/schedulers"))
        if resolved is not None:
            update["scheduler"] = resolved
        return update

    def check(self, generation: GenerationParams) -> GenerationParams:
        """``generation`` with the server's names for its checkpoint, sampler and scheduler.

        Raises:
            InputError: a checkpoint, sampler or scheduler the server does not have (``field`` says which).
        """
        update = self._sampling(generation.sampler_name, generation.scheduler)
        checkpoint = generation.checkpoint
        if checkpoint is not None:
            title = self._resolve_model(checkpoint)
            if title is not None:
                update["override_settings"] = {**(generation.override_settings or {}), "sd_model_checkpoint": title}
        return generation.model_copy(update=update) if update else generation

    def resolve_checkpoint(self, name: str) -> str:
        """The server's title of checkpoint ``name`` (a title, model name or hash), or ``name`` as
        given when the server does not list its checkpoints.

        Raises:
            InputError: the server lists its checkpoints and ``name`` is not one of them.
        """
        return self._resolve_model(name) or name

    def _resolve(self, field: str, name: str, entries: Any) -> str | None:
        if not isinstance(entries, list) or not entries:
            return None
        names: dict[str, str] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            # A scheduler is sent by its label (what infotexts show): A1111 takes either.
            label = entry.get("label")
            canonical: str = label if isinstance(label, str) and label else entry["name"]
            for alias in [entry["name"], entry.get("label"), *(entry.get("aliases") or [])]:
                if isinstance(alias, str):
                    names.setdefault(_norm(alias), canonical)
        found = names.get(_norm(name))
        if found is not None:
            return found
        what = "sampler" if field == "sampler_name" else "scheduler"
        shown = sorted(set(names.values()))
        closest = _closest(name, shown)
        raise InputError(
            f"the SD server at {self._client.url} has no {what} {name!r}; closest: {', '.join(closest)}",
            field=field,
            value=name,
            expected="one of: " + ", ".join(shown),
        )

    def _resolve_upscaler(self, name: str) -> str | None:
        """The server's spelling of upscaler ``name`` (A1111's extras match names exactly, so another
        case is sent as the server writes it), or None when the server does not list its upscalers."""
        names = self.upscalers()
        if names is None:
            return None
        if name in names:
            return name
        folded = [known for known in names if _norm(known) == _norm(name)]
        if len(folded) == 1:
            return folded[0]
        raise InputError(
            f"the SD server at {self._client.url} has no upscaler {name!r}; closest: "
            + ", ".join(_closest(name, names)),
            field="upscaler",
            value=name,
            expected="one of: " + ", ".join(names),
        )

    def _resolve_model(self, name: str) -> str | None:
        entries = self._list("/sdapi/v1/sd-models")
        if not isinstance(entries, list) or not entries:
            return None
        wanted = _norm(name)
        titles: list[str] = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("title"), str):
                continue
            title: str = entry["title"]
            titles.append(title)
            filename = str(entry.get("filename") or "").replace("\\", "/").rsplit("/", 1)[-1]
            keys = {title, title.rsplit(" [", 1)[0], entry.get("model_name"), entry.get("hash"), filename}
            sha256 = entry.get("sha256")
            if any(isinstance(key, str) and key and _norm(key) == wanted for key in keys) or (
                isinstance(sha256, str) and len(wanted) >= 10 and sha256.lower().startswith(wanted)
            ):
                return title
        by_stem = {title.rsplit(" [", 1)[0].rsplit(".", 1)[0]: title for title in titles}
        raise InputError(
            f"the SD server at {self._client.url} has no checkpoint {name!r}; closest: "
            + ", ".join(by_stem[stem] for stem in _closest(name, by_stem)),
            field="sd_model_checkpoint",
            value=name,
            expected="a checkpoint title, model name or hash from /sdapi/v1/sd-models",
        )


def _names(entries: Any, keys: tuple[str, ...]) -> list[str] | None:
    """The first non-empty string of ``keys`` of each entry of a list the server answered, in its order."""
    if not isinstance(entries, list) or not entries:
        return None
    names: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = next((entry[key] for key in keys if isinstance(entry.get(key), str) and entry[key]), None)
        if name is not None and name not in names:
            names.append(name)
    return names or None


@contextmanager
def open_catalog(settings: Settings) -> Iterator[ServerCatalog]:
    """The catalog of the first SD server of ``settings.sd_api_url`` (its client closed on exit)."""
    with SDClient(settings) as client:
        yield ServerCatalog(client)
