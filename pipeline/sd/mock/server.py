"""The mock SD server's state and routes: :class:`MockSDServer`, served by :mod:`pipeline.sd.mock.http`.

One instance answers every request of both transports (real HTTP and the in-process ``mock://``
transport), one generation at a time in FIFO order; see :mod:`pipeline.sd.mock.http` for what it copies
from A1111, :mod:`pipeline.sd.mock.txt2img` for the txt2img details and :mod:`pipeline.sd.mock.faults` for
fault injection and task tracking.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from secrets import compare_digest
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from pipeline.sd.mock import catalog, img2img, pnginfo
from pipeline.sd.mock import txt2img as t2i
from pipeline.sd.mock.checkpoints import Checkpoints
from pipeline.sd.mock.faults import (
    DEFAULT_HANG_MS,
    FAULT_KINDS,
    REQUEST_HISTORY,
    FaultPlan,
    Hang,
    TaskBoard,
    garbage_image_base64,
    request_record,
)
from pipeline.sd.mock.request import openapi_document, parse_request
from pipeline.sd.mock.scripts import (
    ScriptEffects,
    ScriptError,
    apply_scripts,
    extensions_payload,
    script_info_payload,
    scripts_payload,
)
from pipeline.sd.mock.turns import Turns
from pipeline.sd.mock.urls import check_options

if TYPE_CHECKING:
    from pipeline.sd.mock.control import MockControl

__all__ = ["MockResponse", "MockSDServer"]

logger = logging.getLogger(__name__)

#: ``GET /face-restorers``: A1111's two, as a fresh install lists them.
_FACE_RESTORERS = [
    {"name": "CodeFormer", "cmd_dir": "/stable-diffusion-webui/models/Codeformer"},
    {"name": "GFPGAN", "cmd_dir": None},
]
#: Prompts remembered in service order by ``/mock/stats`` (``served``).
_SERVED_HISTORY = 1000

_Handler = Callable[["_Request"], "MockResponse"]


@dataclass(frozen=True)
class MockResponse:
    """One HTTP answer of the mock: status, headers and body bytes.

    ``abort`` replaces the answer by a transport failure: ``reset`` (the connection is dropped) or
    ``timeout`` (in-process only: the caller's read timeout ran out first).
    """

    status: int
    headers: dict[str, str]
    body: bytes
    abort: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class _Request:
    query: str
    headers: Mapping[str, str]
    body: bytes
    read_timeout_s: float | None = None
    #: What :mod:`pipeline.sd.mock.control` and the route tell each other (queued answer, fault met).
    notes: dict[str, Any] = field(default_factory=dict)


def _respond(status: int, payload: Any) -> MockResponse:
    return MockResponse(
        status, {"content-type": "application/json"}, json.dumps(payload, separators=(",", ":")).encode()
    )


def _http_exception(status: int, detail: str) -> MockResponse:
    return _respond(status, {"error": "HTTPException", "detail": detail, "body": "", "errors": ""})


def _abort(kind: str) -> MockResponse:
    return MockResponse(0, {}, b"", abort=kind)


@dataclass
class _Stats:
    requests: int = 0
    completed: int = 0
    images: int = 0
    failures: int = 0
    interrupts: int = 0
    prompts: Counter[str] = field(default_factory=Counter)
    served: deque[str] = field(default_factory=lambda: deque(maxlen=_SERVED_HISTORY))
    faults: Counter[str] = field(default_factory=Counter)
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REQUEST_HISTORY))
    img2img_requests: int = 0
    img2img_completed: int = 0
    extras: int = 0


class MockSDServer:
    """The mock's request handler and state; thread-safe, one generation at a time in FIFO order.

    Args:
        latency_ms: simulated generation time per batch (``n_iter`` batches per request).
        fail_rate: probability that a txt2img answers 500 ``OutOfMemoryError`` (an alias for
            ``faults="500:P"``; may be combined with a plan that does not name ``500``).
        faults: a :class:`FaultPlan` or its text, e.g. ``"500:0.2,reset:0.1,hang:0.05,garbage:0.05"``.
        hang_ms: how long a ``hang`` fault holds its request before answering normally.
        api_auth: ``user:pass[,user2:pass2]`` like A1111's ``--api-auth``; None disables auth.
        seed: seeds the fault and random-seed generators, so runs repeat; None (the default) draws
            them from the OS, so ``seed: -1`` gives a new image on every run, as on a real server.
        models: checkpoint file names listed by ``/sd-models`` (the first one is loaded); may be empty.
        model_load_ms: how long loading another checkpoint takes (``override_settings``, ``/options``,
            refiner, hires checkpoint); every load is counted in ``/mock/stats``.
        nowebui: API only, like A1111's ``--nowebui``: every ``/internal/*`` route answers 404.

    ``models`` and ``options`` (the ``/options`` dict) are plain attributes a test may adjust.

    Raises:
        ValueError: a negative time, ``fail_rate`` outside [0, 1], or an invalid fault plan.
    """

    def __init__(
        self,
        *,
        latency_ms: int = 0,
        fail_rate: float = 0.0,
        faults: str | FaultPlan | None = None,
        hang_ms: int = DEFAULT_HANG_MS,
        api_auth: str | None = None,
        seed: int | None = None,
        models: tuple[str, ...] = catalog.DEFAULT_MODEL_FILES,
        model_load_ms: int = 0,
        nowebui: bool = False,
    ) -> None:
        #: What each txt2img request may meet; one draw per request from the seeded generator.
        self.faults = check_options(
            latency_ms=latency_ms, fail_rate=fail_rate, faults=faults, hang_ms=hang_ms, model_load_ms=model_load_ms
        )
        self.latency_ms = latency_ms
        self.hang_ms = hang_ms
        self.nowebui = nowebui
        self._credentials = [tuple(pair.split(":", 1)) for pair in api_auth.split(",")] if api_auth else []
        self._fault_rng = random.Random(seed)
        self._seed_rng = random.Random(None if seed is None else seed + 1)
        self._lock = threading.Lock()
        #: Checkpoints listed and loaded, and the ``/options`` dict.
        self.checkpoints = Checkpoints(models, model_load_ms, self._lock)
        self.models = self.checkpoints.models
        self.options = self.checkpoints.options
        self._stats = _Stats()
        self._job: t2i.JobState | None = None
        self._interrupted = False
        self._tasks = TaskBoard()
        self._turns = Turns(self._lock, self._tasks)
        self._closed = False
        self._routes: dict[str, dict[str, _Handler]] = {
            "/sdapi/v1/txt2img": {"POST": self._txt2img},
            "/sdapi/v1/img2img": {"POST": self._img2img},
            "/sdapi/v1/extra-single-image": {"POST": self._extra_single_image},
            "/sdapi/v1/progress": {"GET": self._progress},
            "/sdapi/v1/interrupt": {"POST": self._interrupt},
            "/sdapi/v1/skip": {"POST": lambda req: _respond(200, None)},
            "/sdapi/v1/options": {"GET": self._get_options, "POST": self._set_options},
            "/sdapi/v1/sd-models": {"GET": lambda req: _respond(200, self.models)},
            "/sdapi/v1/samplers": {"GET": lambda req: _respond(200, catalog.samplers_payload())},
            "/sdapi/v1/schedulers": {"GET": lambda req: _respond(200, catalog.schedulers_payload())},
            "/sdapi/v1/upscalers": {"GET": lambda req: _respond(200, catalog.upscalers_payload())},
            "/sdapi/v1/latent-upscale-modes": {
                "GET": lambda req: _respond(200, [{"name": name} for name in catalog.LATENT_UPSCALE_MODES])
            },
            "/sdapi/v1/prompt-styles": {"GET": lambda req: _respond(200, _styles_payload())},
            "/sdapi/v1/scripts": {"GET": lambda req: _respond(200, scripts_payload())},
            "/sdapi/v1/script-info": {"GET": lambda req: _respond(200, script_info_payload())},
            "/sdapi/v1/extensions": {"GET": lambda req: _respond(200, extensions_payload())},
            "/sdapi/v1/face-restorers": {"GET": lambda req: _respond(200, _FACE_RESTORERS)},
            "/sdapi/v1/sd-vae": {"GET": lambda req: _respond(200, [])},
            "/sdapi/v1/embeddings": {"GET": lambda req: _respond(200, {"loaded": {}, "skipped": {}})},
            "/sdapi/v1/png-info": {"POST": self._png_info},
            "/sdapi/v1/refresh-checkpoints": {"POST": lambda req: _respond(200, None)},
            "/openapi.json": {"GET": lambda req: _respond(200, openapi_document(self._routes))},
            "/internal/ping": {"GET": lambda req: _respond(200, {})},
            "/internal/progress": {"POST": self._internal_progress},
            "/mock/stats": {"GET": lambda req: _respond(200, self.stats())},
            "/mock/reset": {"POST": lambda req: _respond(200, self.reset())},
        }
        from pipeline.sd.mock.control import MockControl  # it imports this module

        #: The request log, queued answers and the /mock/* control routes (docs/mock-control-api.md).
        self.control: MockControl = MockControl(self)
        self._routes |= self.control.routes()

    # -- the one entry point ------------------------------------------------------------------------
    def handle(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        read_timeout_s: float | None = None,
    ) -> MockResponse:
        """Answer one HTTP request the way A1111 v1.10 would (plus ``/mock/stats`` and ``/mock/reset``).

        ``read_timeout_s`` is how long the caller waits for the answer (in-process transport): a hang
        longer than that comes back as ``abort="timeout"`` and goes on in the background.
        """
        started = time.perf_counter()
        request = _Request(query, {key.lower(): value for key, value in headers.items()}, body, read_timeout_s)
        methods = self._routes.get(path)
        if methods is None or (self.nowebui and path.startswith("/internal/")):
            response = _respond(404, {"detail": "Not Found"})
        elif method.upper() not in methods:
            response = _respond(405, {"detail": "Method Not Allowed"})
        elif path.startswith("/sdapi/") and (denied := self._check_auth(request.headers)) is not None:
            response = denied
        else:
            try:
                response = self.control.answer(path, request, methods[method.upper()])
            except t2i.HTTPError as exc:  # A1111's HTTPException: the detail, no errors text
                response = _http_exception(exc.status, exc.detail)
            except Exception as exc:  # A1111's handler turns any exception into this 500 body.
                logger.warning("mock SD: %s %s failed: %s: %s", method, path, type(exc).__name__, exc)
                response = _respond(500, {"error": type(exc).__name__, "detail": "", "body": "", "errors": str(exc)})
        response.headers["x-process-time"] = f"{time.perf_counter() - started:.4f}"
        self.control.log(method, path, request, response, time.perf_counter() - started)
        return response

    def stats(self) -> dict[str, Any]:
        """Counters since start or the last :meth:`reset` (what ``GET /mock/stats`` returns).

        Besides the counters: ``faults`` (injected, per kind), ``hanging`` (requests held by a hang
        right now) and ``requests``, the last 10,000 txt2img requests that passed validation, each
        ``{"prompt", "seed", "task_id", "at", "outcome", "body", "model", "model_loads"}``: ``at`` is the
        arrival (``time.time()``), outcomes are in :data:`pipeline.sd.mock.faults.OUTCOMES`, ``body`` is
        the JSON body as received (strings over 4 KiB summarised), ``model`` the checkpoint it ran on and
        ``model_loads`` the loads it caused. ``model_loads`` counts every checkpoint load,
        ``model_load_log`` lists them (``{"model", "at"}``) and ``loaded_model`` is the one loaded now.
        """
        with self._lock:
            return {
                "txt2img_requests": self._stats.requests,
                "txt2img_completed": self._stats.completed,
                "img2img_requests": self._stats.img2img_requests,
                "img2img_completed": self._stats.img2img_completed,
                "extras": self._stats.extras,
                "images": self._stats.images,
                "failures": self._stats.failures,
                "interrupts": self._stats.interrupts,
                "max_concurrent": self._turns.max_concurrent,
                "max_in_flight": self._turns.max_in_flight,
                "active": self._turns.active,
                "queued": self._turns.waiting,
                "prompts": dict(self._stats.prompts),
                "served": list(self._stats.served),
                "faults": {kind: self._stats.faults[kind] for kind in FAULT_KINDS},
                "hanging": len(self._tasks.live_hangs()),
                "requests": [dict(record) for record in self._stats.log],
                "model_loads": self.checkpoints.load_count,
                "model_load_log": list(self.checkpoints.load_log),
                "loaded_model": self.checkpoints.loaded["title"] if self.checkpoints.loaded else None,
            }

    def reset(self) -> dict[str, Any]:
        """Zero the counters and forget the requests (a generation in progress keeps running); returns ``{}``."""
        with self._lock:
            self._stats = _Stats()
            self._turns.reset_peaks()
            self.checkpoints.reset_counts()
        return {}

    def close(self) -> None:
        """End every hanging request without an answer; later hangs end at once. Idempotent.

        Closing the HTTP server of :func:`serve` / :func:`make_http_server` calls this.
        """
        with self._lock:
            self._closed = True
            self._tasks.end_hangs("shutdown")
        self.control.close()

    # -- auth ---------------------------------------------------------------------------------
    def _check_auth(self, headers: Mapping[str, str]) -> MockResponse | None:
        if not self._credentials:
            return None
        scheme, _, param = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or not param:
            return _http_exception(401, "Not authenticated")  # A1111 drops WWW-Authenticate.
        try:
            user, sep, password = base64.b64decode(param).decode("ascii").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return _http_exception(401, "Invalid authentication credentials")
        if not sep:
            return _http_exception(401, "Invalid authentication credentials")
        for known_user, known_password in self._credentials:
            if compare_digest(user.encode(), known_user.encode()) and compare_digest(
                password.encode(), known_password.encode()
            ):
                return None
        return _http_exception(401, "Incorrect username or password")

    # -- routes -------------------------------------------------------------------------------------
    def _txt2img(self, request: _Request) -> MockResponse:
        with self._lock:
            self._stats.requests += 1
        values, body, rejection = parse_request(request.headers, request.body)
        if rejection is not None:
            return _respond(rejection[0], rejection[1])
        try:
            effects = apply_scripts(values["script_name"], values["alwayson_scripts"] or {})
        except ScriptError as exc:
            return _http_exception(422, str(exc))
        with self._lock:
            task_id = str(values["force_task_id"] or self._tasks.new_task_id())
            fault = self.control.fault(request, self.faults.draw(self._fault_rng.random()))
            record = request_record(values["prompt"], values["seed"], task_id, fault or "ok", body)
            record |= {"model": None, "model_loads": 0}
            self._stats.log.append(record)
            if fault is not None:
                self._stats.faults[fault] += 1
        if fault == "reset":
            return _abort("reset")
        if fault == "hang" and (cut := self._hang(task_id, record, request.read_timeout_s)) is not None:
            return cut
        self._turns.acquire(task_id)
        completed = False
        loads_before = self.checkpoints.load_count
        try:
            payload = self._process(values, effects, record, fail=fault == "500")
            completed = True
        except Exception:
            with self._lock:
                self._stats.failures += 1
                record["outcome"] = "500" if fault == "500" else "error"
            raise
        finally:
            record["model_loads"] = self.checkpoints.load_count - loads_before
            self._turns.release(task_id, completed=completed)
        first = json.loads(payload["info"])["index_of_first_image"]
        if fault == "garbage" and len(payload["images"]) > first:  # the first real image, not a grid
            payload["images"][first] = garbage_image_base64()
        return _respond(200, payload)

    def _img2img(self, request: _Request) -> MockResponse:
        """img2img (:mod:`pipeline.sd.mock.img2img`): one at a time on the FIFO lock, ``latency_ms`` each."""
        with self._lock:
            self._stats.img2img_requests += 1
            model = self.checkpoints.loaded or (self.checkpoints.selected() if self.models else None)
            samples_format = str(self.options["samples_format"])
        try:
            plan = img2img.plan_img2img(request.body, model, self._seed_rng)
        except ValueError:
            error = {"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}
            return _respond(422, {"detail": [error]})
        task_id = plan.task_id or self._tasks.new_task_id()
        self._turns.acquire(task_id)
        completed = False
        overrides = plan.values.get("override_settings") or {}
        restore = bool(plan.values.get("override_settings_restore_afterwards", True))  # null keeps them
        try:
            # A1111 decodes init_images under its queue lock, first: a request queued behind another
            # one gains nothing by having arrived early, and one that does not decode fails before
            # its override_settings apply.
            decode_started = time.monotonic()
            plan.decode()
            decode_s = time.monotonic() - decode_started
            # process_images: the request's override_settings (a checkpoint loads) around the render.
            with self.checkpoints.overrides(overrides if isinstance(overrides, dict) else {}, restore=restore):
                if self.models:
                    plan.model = self.checkpoints.loaded or self.checkpoints.selected()
                # latency_ms is the whole time per image, as txt2img's, the decoding in its turn included.
                deadline = time.monotonic() + self.latency_ms / 1000 - decode_s
                payload = plan.response(plan.render(), samples_format)
                self._sleep_until(deadline)
            completed = True
        finally:
            self._turns.release(task_id, completed=completed)
        with self._lock:
            self._stats.img2img_completed += 1
        return _respond(200, payload)

    def _extra_single_image(self, request: _Request) -> MockResponse:
        with self._lock:
            self._stats.extras += 1
        try:
            body = img2img.extra_single_image(request.body)
        except ValueError:
            error = {"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}
            return _respond(422, {"detail": [error]})
        return _respond(200, body)

    def _hang(self, task_id: str, record: dict[str, Any], read_timeout_s: float | None) -> MockResponse | None:
        """Hold a request outside the FIFO lock; None once ``hang_ms`` passed (answer it normally)."""
        hang_s = self.hang_ms / 1000
        caller_gives_up_first = read_timeout_s is not None and read_timeout_s < hang_s
        with self._lock:
            hang = Hang(task_id, record, deadline=time.monotonic() + hang_s)
            if self._closed:
                return _abort("reset")
            self._tasks.add_hang(hang)
        hang.ended.wait(read_timeout_s if read_timeout_s is not None and caller_gives_up_first else hang_s)
        with self._lock:
            if hang.ended.is_set():  # interrupted, or the server shuts down: the connection just drops
                return _abort("reset")
            if caller_gives_up_first:  # in-process: the hang goes on without its caller, as on a server
                hang.detached = True
                return _abort("timeout")
            self._tasks.remove_hang(hang)
        return None

    def _process(
        self, values: dict[str, Any], effects: ScriptEffects, record: dict[str, Any], *, fail: bool
    ) -> dict[str, Any]:
        """``process_images``: the request's settings overrides around the generation, then the encoding."""
        if not self.models:
            raise FileNotFoundError(
                "No checkpoints found. When searching for checkpoints, looked at: models/Stable-diffusion"
            )
        overrides = values["override_settings"] or {}
        restore = bool(values["override_settings_restore_afterwards"])  # an explicit null keeps them, as in A1111
        with self._lock:
            samples_format = str(self.options["samples_format"])
        if not restore and "samples_format" in overrides:
            samples_format = str(overrides["samples_format"])  # the API encodes after the overrides are undone
        with self.checkpoints.overrides(overrides, restore=restore):
            with self._lock:
                options = dict(self.options)
            model = self.checkpoints.loaded or self.checkpoints.selected()
            record["model"] = model["title"]
            plan = t2i.plan_generation(values, options, self.models, model, effects, self._seed_rng)
            known_format = samples_format.lower() in t2i.IMAGE_FORMATS
            image_format = samples_format if values["send_images"] and known_format else None
            images, count, grid = self._generate(plan, record, image_format, fail=fail)
        if values["send_images"] and not known_format:
            raise t2i.HTTPError(500, "Invalid image format")
        return plan.response(images, count, grid=grid)

    def _generate(
        self, plan: t2i.GenerationPlan, record: dict[str, Any], image_format: str | None, *, fail: bool
    ) -> tuple[list[str], int, bool]:
        job = t2i.JobState(
            n_iter=plan.n_iter, steps=plan.steps, latency_s=self.latency_ms / 1000, task_id=record.get("task_id")
        )
        with self._lock:
            self._job = job
            self._interrupted = False  # A1111 resets the flag when the next job starts.
            self._stats.prompts[plan.prompts[0]] += 1
            self._stats.served.append(plan.prompts[0])
        images: list[str] = []
        pixels: list[Any] = []
        generated = 0
        try:
            for batch in range(plan.n_iter):
                with self._lock:
                    job.start_batch(batch)
                self.checkpoints.ensure_loaded(self.checkpoints.selected())  # back from a refiner
                # latency_ms is the whole time per batch, as a GPU's is: rendering and encoding
                # happen inside it, so a 500 ms server serves an image every 500 ms, not 530.
                deadline = time.monotonic() + self.latency_ms / 1000
                encoded, rendered = ([], []) if fail else plan.render_batch(batch, image_format)
                loading_since = time.monotonic()
                for title in plan.batch_models:  # hires checkpoint, refiner: loads during the batch
                    self.checkpoints.ensure_loaded(self.checkpoints.find(title) or self.models[0], write_option=False)
                self._sleep_until(deadline + time.monotonic() - loading_since)  # loads add to the batch time
                if fail:
                    raise t2i.OutOfMemoryError(t2i.OOM_MESSAGE)
                images += encoded
                pixels += rendered
                generated += plan.batch_size
                if self._interrupted:  # the current batch comes back, the remaining ones are skipped
                    record["outcome"] = "interrupted"
                    break
        finally:
            with self._lock:
                self._job = None
        grid, maps = plan.extra_images(pixels, image_format)
        with self._lock:
            self._stats.completed += 1
            self._stats.images += len(images)
        return [*([grid] if grid else []), *images, *maps], generated, grid is not None

    def _sleep_until(self, deadline: float) -> None:
        while not self._interrupted and (left_s := deadline - time.monotonic()) > 0:
            time.sleep(min(left_s, t2i.TICK_S))

    def _progress(self, request: _Request) -> MockResponse:
        # A1111's default is false: the image is sent unless skipped.
        skip = parse_qs(request.query).get("skip_current_image", ["false"])[-1].lower() in ("true", "1")
        with self._lock:
            return _respond(200, t2i.progress_payload(self._job, self._interrupted, with_image=not skip))

    def _interrupt(self, request: _Request) -> MockResponse:
        # A1111's interrupt names no task: it stops the current generation, and here every hanging
        # request too (each one stands for a stuck "current" job).
        with self._lock:
            self._interrupted = True
            self._stats.interrupts += 1
            self._tasks.end_hangs("interrupted")
        return _respond(200, {})

    def _internal_progress(self, request: _Request) -> MockResponse:
        try:
            data = json.loads(request.body) if request.body else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            error = {"loc": ["body"], "msg": "field required", "type": "value_error.missing"}
            return _respond(422, {"detail": [error]})
        task_id = data.get("id_task")
        with self._lock:
            running = None
            if self._job is not None:
                progress = t2i.progress_payload(self._job, self._interrupted)
                running = (progress["progress"], progress["eta_relative"])
            return _respond(200, self._tasks.progress(task_id if isinstance(task_id, str) else "", running))

    def _get_options(self, request: _Request) -> MockResponse:
        with self._lock:
            return _respond(200, self.options)

    def _set_options(self, request: _Request) -> MockResponse:
        try:
            changes = json.loads(request.body) if request.body else None
        except ValueError:
            changes = None
        if not isinstance(changes, dict):
            error = {"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}
            return _respond(422, {"detail": [error]})
        self.checkpoints.set_options(changes, self._turns.run)
        return _respond(200, None)

    def _png_info(self, request: _Request) -> MockResponse:
        try:
            return _respond(200, pnginfo.png_info(request.body))
        except pnginfo.InvalidImage:
            return _http_exception(500, "Invalid encoded image")
        except ValueError:
            error = {"loc": ["body", "image"], "msg": "field required", "type": "value_error.missing"}
            return _respond(422, {"detail": [error]})


def _styles_payload() -> list[dict[str, str]]:
    return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in catalog.DEFAULT_STYLES]
