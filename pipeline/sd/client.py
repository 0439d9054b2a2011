"""Synchronous client of an AUTOMATIC1111-compatible ``/sdapi/v1`` server (A1111, Forge, SD.Next).

Every failure leaves this module as a :mod:`pipeline.errors` type, mapped at the boundary with
``raise ... from exc`` and carrying the server's own message, so actors decide retries by type alone:

========================================================  ==================================
what happened                                             raised
========================================================  ==================================
refused / reset / DNS / closed without answer             :class:`SDUnavailable`
connect, read, write or pool timeout                      :class:`SDTimeout`
5xx (OutOfMemoryError, NansException...), 429             :class:`SDServerError`
5xx that is a mistake of the request (KeyError...)        :class:`SDRequestRejected`
200 with no image and no ``info`` (SD.Next, no model)     :class:`SDServerError`
401                                                       :class:`SDAuthError`
404 (API off, or 1.9's "Sampler not found")               :class:`SDNotFound`
422 and other 4xx, redirects                              :class:`SDRequestRejected`
200 whose body is not JSON or whose image does not decode :class:`SDBadImage`
a malformed URL or ``SD_API_AUTH``                        :class:`ConfigError`
========================================================  ==================================

A 200 with a non-JSON body is :class:`SDBadImage` (permanent): it comes from something that is not an
A1111 API (a proxy's login page, another web app), and asking again gets the same answer.

A1111 keeps running a request whose client went away, and ``POST /sdapi/v1/interrupt`` stops whatever
job is current, whoever sent it. So every txt2img names itself with ``force_task_id`` =
:func:`sd_task_id` (``sdpipe-<job id>``), and when its read times out the client asks the UI route
``POST /internal/progress`` about that task before raising :class:`SDTimeout`: *active* → interrupt it;
*queued* → log that it will still run and be wasted (interrupt cannot reach a queued job); no answer
(404 under ``--nowebui``, any failure) → log a warning and leave the server alone. That follow-up never
raises and each of its calls is bounded by :data:`HEALTH_TIMEOUT_S`.

``mock://`` URLs are served in-process by :mod:`pipeline.sd.mock.http` through the same code path.
Credentials (in the URL or ``SD_API_AUTH``) go into the Authorization header only, never into
:attr:`SDClient.url`, logs or error messages.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx

from pipeline.errors import (
    ConfigError,
    SDBadImage,
    SDError,
    SDNotFound,
    SDPermanentError,
    SDTimeout,
    SDUnavailable,
)
from pipeline.models import GenerationParams, SDResult
from pipeline.sd import response as sd_response
from pipeline.settings import Settings, mask_url, split_sd_entry, strip_credentials, strip_credentials_in_text

__all__ = ["HEALTH_TIMEOUT_S", "WRITE_TIMEOUT_S", "SDClient", "request_body", "sd_task_id"]

logger = logging.getLogger(__name__)

#: Timeout of the cheap calls (progress, sd-models, options, interrupt), in seconds: a server whose
#: worker pool is exhausted stops answering even these, and a health check must not hang on it.
HEALTH_TIMEOUT_S = 5.0
#: Timeout for sending a request body, in seconds (txt2img bodies are a few hundred bytes).
WRITE_TIMEOUT_S = 30.0
#: Host the in-process mock answers as (never resolved: the mock transport intercepts every request).
_MOCK_HOST = "http://mock-sd"
#: The generation route.
_TXT2IMG = "/sdapi/v1/txt2img"
#: The image-to-image route and the extras (upscaler) route.
_IMG2IMG = "/sdapi/v1/img2img"
_EXTRA_SINGLE = "/sdapi/v1/extra-single-image"
#: The header of a body encoded by :func:`request_body`.
_JSON_CONTENT = {"Content-Type": "application/json"}
#: The UI's per-task status route (absent under ``--nowebui``), and the interrupt route.
_TASK_PROGRESS = "/internal/progress"
_INTERRUPT = "/sdapi/v1/interrupt"
#: Name of each httpx timeout (``SDTimeout.field`` is ``<name>_timeout``, or ``health_timeout``).
_TIMEOUT_NAMES: dict[type[httpx.TimeoutException], str] = {
    httpx.ConnectTimeout: "connect",
    httpx.ReadTimeout: "read",
    httpx.WriteTimeout: "write",
    httpx.PoolTimeout: "pool",
}

#: What broke, per transport error that happens after the connection was made.
_LOST_REASONS: dict[type[httpx.TransportError], str] = {
    httpx.RemoteProtocolError: "the server closed the connection without a complete answer",
    httpx.ReadError: "the connection broke while reading the answer",
    httpx.WriteError: "the connection broke while sending the request",
}


def sd_task_id(job_id: str) -> str:
    """The A1111 task id (``force_task_id``) sdpipe sends with the txt2img of ``job_id``."""
    return f"sdpipe-{job_id}"


def request_body(payload: dict[str, Any]) -> bytes:
    """``payload`` as the JSON body a request sends (what httpx's ``json=`` encodes)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _split_auth(value: str, source: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise ConfigError(f"{source} is not user:pass", field="SD_API_AUTH", expected="user:pass")
    return user, password


class SDClient:
    """A thread-safe client of one SD server.

    Args:
        settings: ``sd_api_url`` (the first one of a comma-separated list), ``sd_api_auth`` and timeouts.
        base_url: overrides ``settings.sd_api_url``; ``mock://[name][?latency_ms=&faults=&seed=...]``
            is the in-process mock (one shared instance per distinct URL; options in
            :func:`pipeline.sd.mock.http.get_mock_server`).
        transport: an httpx transport to use instead of the network (tests).

    Raises:
        ConfigError: the URL is not http(s)/mock, or ``SD_API_AUTH`` is not ``user:pass``.
    """

    def __init__(
        self, settings: Settings, *, base_url: str | None = None, transport: httpx.BaseTransport | None = None
    ) -> None:
        raw, _ = split_sd_entry((base_url if base_url is not None else settings.sd_api_url).split(",")[0])
        self._max_pixels = settings.max_pixels
        self._secrets: list[str] = []
        auth: tuple[str, str] | None = None
        if raw.startswith("mock://"):
            # Lazy: only mock users pay for numpy rendering (one of the two imports of the mock that
            # the import-linter contract in pyproject.toml allows; tests/test_layering.py checks it is lazy).
            from pipeline.sd.mock import http as mock_sd

            try:
                server = mock_sd.get_mock_server(raw)
            except ValueError as exc:
                raise ConfigError(
                    f"invalid SD_API_URL: {exc}", field="SD_API_URL", expected="mock://?latency_ms=200"
                ) from exc
            transport = transport or mock_sd.mock_transport(server)
            self._url, httpx_base = raw, _MOCK_HOST
        else:
            try:
                parsed = httpx.URL(raw)
            except httpx.InvalidURL as exc:
                raise ConfigError(
                    f"SD_API_URL {mask_url(raw)!r} is not a valid URL",
                    field="SD_API_URL",
                    expected="http://localhost:7860",
                ) from exc
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ConfigError(
                    f"SD_API_URL {mask_url(raw)!r} is not an http(s) URL",
                    field="SD_API_URL",
                    expected="http://localhost:7860 or mock://",
                )
            if parsed.userinfo:
                # Credentials in the URL are specific to this server: they win over SD_API_AUTH.
                auth = (parsed.username, parsed.password)
                self._secrets += [parsed.userinfo.decode("ascii", "replace"), parsed.password]
            httpx_base = str(parsed.copy_with(userinfo=b"")).rstrip("/")
            self._url = strip_credentials(raw).rstrip("/")  # as backend_key has it: records compare the two
        if auth is None and settings.sd_api_auth is not None:
            secret = settings.sd_api_auth.get_secret_value()
            auth = _split_auth(secret, "SD_API_AUTH")
            self._secrets += [secret, auth[1]]
        self._secrets = sorted({s for s in self._secrets if s}, key=len, reverse=True)
        self._timeout = httpx.Timeout(
            connect=settings.sd_connect_timeout_s,
            read=settings.sd_timeout_s,
            write=WRITE_TIMEOUT_S,
            pool=settings.sd_connect_timeout_s,
        )
        self._health_timeout = httpx.Timeout(
            HEALTH_TIMEOUT_S, connect=min(HEALTH_TIMEOUT_S, self._timeout.connect or HEALTH_TIMEOUT_S)
        )
        verify: ssl.SSLContext | bool = True
        if transport is None and httpx_base.startswith("http://"):
            # Requests go to base_url's paths and redirects are not followed: a plain-http server's
            # client never opens a TLS connection, so it gets a context without the CA bundle
            # (reading it costs ~20 ms of CPU per client, which `sdpipe generate` paid to check a
            # request against the catalog). Verification stays on: a TLS connection would fail.
            # Given as ``verify``, not as a transport of our own: httpx ignores the environment's
            # proxies (HTTP_PROXY, NO_PROXY) for a client built with an explicit transport.
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._client = httpx.Client(
            base_url=httpx_base,
            auth=httpx.BasicAuth(*auth) if auth else None,
            timeout=self._timeout,
            transport=transport,
            verify=verify,
            headers={"Accept": "application/json"},
        )

    @property
    def url(self) -> str:
        """The server's base URL without credentials (safe to log and store)."""
        return self._url

    # -- public calls -------------------------------------------------------------------------------
    def txt2img(
        self, params: GenerationParams, *, job_id: str, on_answer: Callable[[], None] | None = None
    ) -> SDResult:
        """Generate one image (``POST /sdapi/v1/txt2img``, named ``force_task_id=sdpipe-<job_id>``) and check it.

        On a read timeout the server's current job is interrupted first if it is this one (see above).
        ``on_answer`` is called as soon as the server's success status and headers arrived, before the
        body is read, checked and decoded: the server is free from then on (A1111 releases its lock
        before it sends the answer; the pool hands its slot to the next job).

        Raises:
            SDTransientError: unreachable, timed out, or a 5xx/429 (retry later).
            SDPermanentError: auth, missing API, rejected request, or an image that does not decode.
            ConfigError: the URL is unusable.
        """
        started = time.perf_counter()
        task_id = sd_task_id(job_id)
        try:
            response = self._request(
                "POST",
                _TXT2IMG,
                job_id=job_id,
                json=params.to_payload() | {"force_task_id": task_id},
                timeout=self._timeout,
                sampler=params.sampler_name,
                on_headers=on_answer,
            )
        except SDTimeout as exc:
            if isinstance(exc.__cause__, httpx.ReadTimeout):  # sent, so it may be running: stop it if ours
                self._stop_abandoned(task_id, job_id)
            raise
        body = sd_response.json_body(response, self._url, _TXT2IMG)
        result = sd_response.build_result(
            body,
            requested_seed=params.seed,
            backend_url=self._url,
            elapsed_s=time.perf_counter() - started,
            max_pixels=self._max_pixels,
            job_id=job_id,
        )
        return sd_response.check_against_request(result, params)

    def img2img(
        self,
        payload: dict[str, Any],
        *,
        job_id: str,
        seed: int,
        on_answer: Callable[[], None] | None = None,
        encoded: bytes | None = None,
    ) -> SDResult:
        """Re-render an image (``POST /sdapi/v1/img2img`` with ``payload``, which names its ``force_task_id``).

        ``encoded``: ``payload`` already serialised by :func:`request_body` (its ``force_task_id``
        included), for a caller that encodes it before it takes a server's slot: a megabyte of
        base64 is milliseconds of CPU the server would otherwise wait for.
        Errors, timeouts and ``on_answer`` as :meth:`txt2img`; ``seed`` is the requested one (for a
        server whose ``info`` lacks it).
        """
        started = time.perf_counter()
        task_id = str(payload.get("force_task_id") or sd_task_id(job_id))
        if encoded is None:
            encoded = request_body(payload | {"force_task_id": task_id})
        try:
            response = self._request(
                "POST",
                _IMG2IMG,
                job_id=job_id,
                content=encoded,
                timeout=self._timeout,
                sampler=str(payload.get("sampler_name") or ""),
                on_headers=on_answer,
            )
        except SDTimeout as exc:
            if isinstance(exc.__cause__, httpx.ReadTimeout):
                self._stop_abandoned(task_id, job_id)
            raise
        body = sd_response.json_body(response, self._url, _IMG2IMG)
        return sd_response.build_result(
            body,
            requested_seed=seed,
            backend_url=self._url,
            elapsed_s=time.perf_counter() - started,
            max_pixels=self._max_pixels,
            job_id=job_id,
        )

    def extra_single_image(
        self, image_b64: str, *, scale: float, upscaler: str, job_id: str, on_answer: Callable[[], None] | None = None
    ) -> bytes:
        """Enlarge an image by ``scale`` with the server's ``upscaler`` (``POST /sdapi/v1/extra-single-image``).

        Returns the encoded image the server sent back (not yet decoded: the caller decodes it bounded).

        Raises:
            SDBadImage: the answer holds no image; others as :meth:`txt2img`.
        """
        payload = {
            "image": image_b64,
            "resize_mode": 0,
            "upscaling_resize": scale,
            "upscaler_1": upscaler,
            "upscaler_2": "None",
            "extras_upscaler_2_visibility": 0,
            "show_extras_results": True,
        }
        response = self._request(
            "POST", _EXTRA_SINGLE, job_id=job_id, json=payload, timeout=self._timeout, on_headers=on_answer
        )
        body = sd_response.expect(response, self._url, _EXTRA_SINGLE, dict)
        image = body.get("image")
        try:
            data = base64.b64decode(image) if isinstance(image, str) else b""
        except ValueError:
            data = b""
        if not data:
            raise SDBadImage(f"the SD server at {self._url} answered {_EXTRA_SINGLE} without an image", url=self._url)
        return data

    def progress(self) -> dict[str, Any]:
        """``GET /sdapi/v1/progress?skip_current_image=true`` with a short timeout (liveness)."""
        path = "/sdapi/v1/progress"
        response = self._request("GET", path, params={"skip_current_image": "true"}, timeout=self._health_timeout)
        return sd_response.expect(response, self._url, path, dict)

    def task_progress(self, task_id: str, *, image: bool = False) -> dict[str, Any] | None:
        """The running generation's progress, as ``GET /sdapi/v1/progress`` reports it, if it is ``task_id``'s.

        A1111 and Forge report whatever job is current, without naming it; a server that names it
        (``current_task``, or ``id_live_preview``/``id_task``) is checked against ``task_id``. Returns
        ``{"step", "steps", "progress", "eta_s"}`` (and ``"image"``, base64, when ``image`` and the
        server sent one), or None while idle or busy with another task.

        Raises:
            SDError: the server did not answer.
        """
        path = "/sdapi/v1/progress"
        params = {"skip_current_image": "false" if image else "true"}
        response = self._request("GET", path, params=params, timeout=self._health_timeout)
        body: dict[str, Any] = sd_response.expect(response, self._url, path, dict) or {}
        state: dict[str, Any] = body["state"] if isinstance(body.get("state"), dict) else {}
        named = body.get("current_task") or state.get("current_task") or body.get("id_task")
        if isinstance(named, str) and named and named != task_id:
            return None
        steps = int(state.get("sampling_steps") or 0)
        progress = float(body.get("progress") or 0.0)
        if steps <= 0 and progress <= 0:
            return None  # idle: the call has not started rendering, or has just ended
        found: dict[str, Any] = {
            "step": int(state.get("sampling_step") or 0),
            "steps": steps,
            "progress": round(progress, 4),
            "eta_s": round(float(body.get("eta_relative") or 0.0), 2),
        }
        if image and isinstance(body.get("current_image"), str) and body["current_image"]:
            found["image"] = body["current_image"]
        return found

    def get_json(self, path: str) -> Any:
        """``GET path`` with the short timeout: its JSON (lists such as ``/sdapi/v1/samplers``, ``/openapi.json``).

        Raises:
            SDError: the server did not answer 2xx with JSON (:class:`SDNotFound` for a non-JSON answer).
        """
        response = self._request("GET", path, timeout=self._health_timeout)
        try:
            return response.json()
        except ValueError as exc:
            raise SDNotFound(f"the SD server at {self._url} answered GET {path} with no JSON", url=self._url) from exc

    def models(self) -> list[dict[str, Any]]:
        """``GET /sdapi/v1/sd-models`` (readiness).

        Raises:
            SDPermanentError: the server lists no checkpoint.
        """
        path = "/sdapi/v1/sd-models"
        models = sd_response.expect(self._request("GET", path, timeout=self._health_timeout), self._url, path, list)
        if not models:
            raise SDPermanentError(
                f"the SD server at {self._url} has no model loaded (GET {path} returned [])",
                url=self._url,
                field="sd_model_checkpoint",
            )
        return [m for m in models if isinstance(m, dict)]

    def check_ready(self) -> str:
        """Liveness (progress) then readiness (models, loaded checkpoint), as one line.

        Returns:
            e.g. ``"ready: 1 model, checkpoint v1-5-pruned-emaonly.safetensors [6ce0161689], idle"``.

        Raises:
            SDError: a subclass saying why the server is not usable.
        """
        state = self.progress().get("state")
        jobs = state.get("job_count", 0) if isinstance(state, dict) else 0
        models = self.models()
        checkpoint = models[0].get("title") or models[0].get("model_name")
        try:
            path = "/sdapi/v1/options"
            options = sd_response.expect(
                self._request("GET", path, timeout=self._health_timeout), self._url, path, dict
            )
            checkpoint = options.get("sd_model_checkpoint") or checkpoint
        except SDError as exc:  # optional: forks trim /options, and models already proved readiness
            logger.debug("GET /sdapi/v1/options failed, using the first model: %s", exc)
        busy = f"busy ({jobs} job{'s' if jobs != 1 else ''} running)" if isinstance(jobs, int) and jobs > 0 else "idle"
        count = f"{len(models)} model{'s' if len(models) != 1 else ''}"
        return f"ready: {count}, checkpoint {checkpoint}, {busy}"

    def loaded_checkpoint(self) -> tuple[str | None, str | None]:
        """The checkpoint the server has selected (``GET /sdapi/v1/options``: ``sd_model_checkpoint``,
        a title) and its short hash (``sd_checkpoint_hash``, first 10 hex digits), each None if absent."""
        path = "/sdapi/v1/options"
        options = sd_response.expect(self._request("GET", path, timeout=self._health_timeout), self._url, path, dict)
        title, full_hash = options.get("sd_model_checkpoint"), options.get("sd_checkpoint_hash")
        return (
            title if isinstance(title, str) and title else None,
            full_hash[:10] if isinstance(full_hash, str) and full_hash else None,
        )

    def set_checkpoint(self, checkpoint: str, *, job_id: str | None = None) -> None:
        """Load ``checkpoint`` and keep it loaded: ``POST /sdapi/v1/options`` with ``sd_model_checkpoint``.

        A1111 loads it before answering (after the generation in progress: it waits on the queue
        lock), so this takes as long as the load; it gets the generation's read timeout.

        Raises:
            SDError: the server refused (500 ``model '...' not found``) or could not be reached.
        """
        self._request(
            "POST",
            "/sdapi/v1/options",
            job_id=job_id,
            json={"sd_model_checkpoint": checkpoint},
            timeout=self._timeout,
        )

    def interrupt(self) -> None:
        """``POST /sdapi/v1/interrupt``: stop the server's *current* job, whoever sent it."""
        self._request("POST", "/sdapi/v1/interrupt", timeout=self._health_timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> SDClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SDClient({self._url!r})"

    def _stop_abandoned(self, task_id: str, job_id: str) -> None:
        """Interrupt the server's current job if it is ``task_id`` (given up on); never raises."""
        try:
            answer = self._request(
                "POST",
                _TASK_PROGRESS,
                job_id=job_id,
                json={"id_task": task_id, "id_live_preview": -1, "live_preview": False},
                timeout=self._health_timeout,
            )
            state = answer.json()
            if not isinstance(state, dict):
                raise ValueError(f"{_TASK_PROGRESS} answered {type(state).__name__}, not an object")
        except Exception as exc:  # the caller is raising SDTimeout: nothing here may mask it
            why = f"no {_TASK_PROGRESS} (API-only --nowebui?)" if isinstance(exc, SDNotFound) else self._scrub(str(exc))
            logger.warning(
                "job %s: cannot tell whether the SD server at %s still runs task %s: %s; not interrupting it",
                job_id,
                self._url,
                task_id,
                why,
            )
            return
        if state.get("active") is True:
            try:
                self._request("POST", _INTERRUPT, job_id=job_id, timeout=self._health_timeout)
            except Exception as exc:
                logger.warning("job %s: could not interrupt task %s: %s", job_id, task_id, self._scrub(str(exc)))
                return
            logger.info("job %s: interrupted task %s, abandoned on the SD server at %s", job_id, task_id, self._url)
        elif state.get("queued") is True:
            logger.warning(
                "job %s: task %s is still queued on the SD server at %s: it will run later and its image will be "
                "discarded (interrupt only stops the current job)",
                job_id,
                task_id,
                self._url,
            )
        else:
            logger.info("job %s: task %s is no longer running on the SD server at %s", job_id, task_id, self._url)

    # -- the boundary -------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return strip_credentials_in_text(text)

    def _request(
        self,
        method: str,
        path: str,
        *,
        timeout: httpx.Timeout,
        job_id: str | None = None,
        json: Any = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        sampler: str | None = None,
        on_headers: Callable[[], None] | None = None,
    ) -> httpx.Response:
        """One call, its answer read whole; an error status raised as an SD error.

        ``content``: a JSON body already encoded (:func:`request_body`), sent instead of ``json``.

        ``on_headers``: called once a success status line and headers arrived, before the body is
        read. A1111 releases its generation lock before it serialises and sends the answer, so the
        server is free from then on: the pool hands its slot to the next request while this one's
        body (an image, base64 in JSON) is still being read.
        """
        job = job_id or "-"
        headers = _JSON_CONTENT if content is not None else None
        started = time.perf_counter()
        try:
            request = self._client.build_request(
                method, path, json=json, content=content, headers=headers, params=params, timeout=timeout
            )
            response = self._client.send(request, stream=True)
            try:
                if on_headers is not None and response.status_code < 300:
                    on_headers()
                response.read()
            finally:
                response.close()
        except httpx.HTTPError as exc:
            elapsed_s = time.perf_counter() - started
            logger.warning("job %s: %s %s -> %s after %.2fs", job, method, path, type(exc).__name__, elapsed_s)
            raise self._transport_error(exc, method, path, timeout) from exc
        elapsed_s = time.perf_counter() - started
        if response.status_code >= 300:
            logger.info("job %s: %s %s -> %d in %.2fs", job, method, path, response.status_code, elapsed_s)
            raise sd_response.status_error(response, self._url, method, path, sampler=sampler, scrub=self._scrub)
        logger.debug("job %s: %s %s -> %d in %.2fs", job, method, path, response.status_code, elapsed_s)
        return response

    def _transport_error(self, exc: httpx.HTTPError, method: str, path: str, timeout: httpx.Timeout) -> Exception:
        where, detail = f"{method} {path}", self._scrub(str(exc))
        if isinstance(exc, httpx.TimeoutException):
            name = next((v for k, v in _TIMEOUT_NAMES.items() if isinstance(exc, k)), "read")
            seconds = getattr(timeout, name) or 0.0
            health = timeout is self._health_timeout and name == "read"
            return SDTimeout(
                f"the SD server at {self._url} did not answer {where} within the {name} timeout ({seconds:g} s)",
                url=self._url,
                field="health_timeout" if health else f"{name}_timeout",
                limit=seconds,
            )
        if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
            return ConfigError(f"cannot send {where} to {self._url}: {detail}", field="SD_API_URL")
        if isinstance(exc, httpx.ConnectError):
            lowered = detail.lower()
            reason = detail or "connection failed"
            if "refused" in lowered:
                reason = "connection refused"
            elif any(s in lowered for s in ("name or service", "nodename nor servname", "getaddrinfo", "resolution")):
                reason = f"unknown host ({detail})"
            return SDUnavailable(
                f"cannot reach the SD server at {self._url}: {reason}",
                url=self._url,
            )
        reason = type(exc).__name__
        for kind, text in _LOST_REASONS.items():
            if isinstance(exc, kind):
                reason = text
                break
        return SDUnavailable(
            f"lost the connection to the SD server at {self._url} during {where}: {reason}"
            + (f" ({detail})" if detail else ""),
            url=self._url,
            field="connection",
        )
