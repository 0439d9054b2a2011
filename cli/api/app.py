"""The FastAPI application of ``sdpipe serve``: one runtime per process, routes, errors, limits."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from actors import Runtime, open_runtime
from cli.api import routes_events, routes_files, routes_jobs, routes_status
from cli.api.access_log import AccessLogMiddleware
from cli.api.auth import TokenGateMiddleware
from cli.api.dashboard import install_dashboard, page
from cli.api.deps import runtime_of, settings_of
from cli.api.docs import install_docs
from cli.api.errors import ApiError, ErrorBody, install_error_handlers
from cli.api.schemas import Health, Readiness
from cli.api.uploads import BodyLimitMiddleware, body_limit
from pipeline.errors import PipelineError, SDError
from pipeline.jobs.uploads import remove_stale_uploads
from pipeline.settings import Settings, mask_url

__all__ = ["API_VERSION", "create_app", "readiness"]

logger = logging.getLogger(__name__)

#: Version of the HTTP API (in the OpenAPI document).
API_VERSION = "1.0.0"


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> FastAPI:
    """The API over ``settings``.

    ``runtime``: an open runtime to use (the caller closes it). None: the app opens its own at startup
    (embedded mode: with in-process workers, so the server works standalone) and closes it at shutdown.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = runtime is None
        try:
            await run_in_threadpool(remove_stale_uploads, settings.output_dir.absolute())
        except OSError as exc:
            logger.warning("cannot clean staged uploads under %s: %s", settings.output_dir, exc)
        app.state.runtime = await run_in_threadpool(open_runtime, settings) if runtime is None else runtime
        mode = "embedded" if app.state.runtime.embedded else "Redis"
        logger.info("sdpipe API ready (%s mode, SD %s)", mode, mask_url(settings.sd_api_url))
        try:
            yield
        finally:
            opened: Runtime = app.state.runtime
            app.state.runtime = None
            if own:
                await run_in_threadpool(_settle_and_close, opened)

    docs = settings.enable_documentation
    app = FastAPI(
        title="sdpipe",
        version=API_VERSION,
        description="Stable Diffusion pipeline: txt2img -> split -> seam-blur -> merge, on Dramatiq workers.",
        lifespan=lifespan,
        docs_url=None,  # install_docs: /docs and /redoc with their assets served from here
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.runtime = None
    install_error_handlers(app, pages=page)
    if docs:
        install_docs(app, openapi_url="/openapi.json")
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=body_limit(settings))
    app.add_middleware(TokenGateMiddleware, settings=settings)  # runs before any body is read
    app.add_middleware(AccessLogMiddleware)  # added last: runs first, so refused requests are logged too
    app.include_router(routes_files.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_status.router)
    app.include_router(routes_events.router)

    @app.get("/healthz", tags=["health"], response_model=Health)
    async def healthz() -> Health:  # async: answers even when every pool thread is busy
        """The process is up."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        tags=["health"],
        response_model=Readiness,
        responses={503: {"model": ErrorBody, "description": "the status store or every SD server is not ready"}},
    )
    def readyz(request: Request) -> Readiness:  # sync: the checks block (in the thread pool)
        """The status store (Redis) answers and at least one SD server is ready."""
        return readiness(runtime_of(request), settings_of(request))

    install_dashboard(app)  # last: its pages are the catch-all outside /api
    return app


def readiness(runtime: Runtime, settings: Settings) -> Readiness:
    """Ping the store, then ask the SD servers (of a comma-separated SD_API_URL) until one is ready.

    ``/readyz`` needs no token, so the answer names no server: which one failed, and why, goes to
    the log (servers are numbered in SD_API_URL order).

    Raises:
        StoreUnavailable: the store does not answer.
        ApiError: 503 when no SD server is ready.
    """
    runtime.store.ping()
    urls = [url.strip() for url in settings.sd_api_url.split(",") if url.strip()]
    for index, url in enumerate(urls):
        try:
            state = runtime.context.sd_client(None if index == 0 else url).check_ready()
        except SDError as exc:
            logger.warning("readyz: SD server %d (%s) not ready: %s", index + 1, mask_url(url), exc.message)
            continue
        return Readiness(status="ready", store="ok", sd=f"server {index + 1} of {len(urls)}: {state}")
    raise ApiError(
        503,
        "not_ready",
        f"none of the {len(urls)} SD server(s) is ready",
        hint="the server log names them; see `sdpipe doctor`",
    )


def _settle_and_close(runtime: Runtime) -> None:
    """Embedded: give the webhooks still being retried ``WEBHOOK_EXIT_WAIT_S`` before the in-memory queue goes."""
    try:
        left = runtime.settle_webhooks()
    except PipelineError as exc:
        logger.warning("webhook deliveries not checked before shutdown: %s", exc)
        left = 0
    if left:
        logger.warning(
            "%d webhook delivery(ies) still pending at shutdown: the next embedded sdpipe process on this "
            "OUTPUT_DIR sends them again (or `sdpipe webhooks retry`)",
            left,
        )
    runtime.close()
