"""A faithful mock of AUTOMATIC1111's ``/sdapi/v1`` API (v1.10), for tests, CI and demos.

- :mod:`~pipeline.sd.mock.http`: the transports: a real HTTP server (``sdpipe mock-sd``) and an
  in-process httpx transport (``SD_API_URL=mock://``).
- :mod:`~pipeline.sd.mock.urls`: ``mock://`` URLs and their options, checked without loading the server.
- :mod:`~pipeline.sd.mock.server`: :class:`MockSDServer`, the state and routes both transports serve.
- :mod:`~pipeline.sd.mock.request`: A1111's txt2img request model (validation, ``/openapi.json``).
- :mod:`~pipeline.sd.mock.txt2img`: how a txt2img runs and what it answers (sizes, seeds, info, infotexts).
- :mod:`~pipeline.sd.mock.catalog`: checkpoints, samplers, schedulers, upscalers and styles, A1111's names.
- :mod:`~pipeline.sd.mock.checkpoints`: the loaded checkpoint, ``/options`` and ``override_settings``.
- :mod:`~pipeline.sd.mock.scripts`: ``script_name``/``alwayson_scripts``, ControlNet and ADetailer.
- :mod:`~pipeline.sd.mock.pnginfo`: ``POST /png-info``.
- :mod:`~pipeline.sd.mock.turns`: the FIFO queue lock (one generation at a time, in arrival order).
- :mod:`~pipeline.sd.mock.faults`: fault plans (500s, resets, hangs, garbage) and task bookkeeping.
- :mod:`~pipeline.sd.mock.render`: deterministic, detailed images and their A1111-style encoding.
- :mod:`~pipeline.sd.mock.control`: the request log, queued answers and the ``/mock/*`` control routes.
- :mod:`~pipeline.sd.mock.kit`: :func:`start_mock_sd` and :class:`MockSD`, the mock as other projects' test tool.
- :mod:`~pipeline.sd.mock.pytest_plugin`: the pytest plugin ``sdpipe`` (fixtures ``sd_server``,
  ``sd_server_factory``), registered by the ``pytest11`` entry point; never imported from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.sd.mock.control import (
        CONTROL_API_VERSION,
        MockControl,
        QueuedAnswer,
    )
    from pipeline.sd.mock.faults import (
        FAULT_KINDS,
        FaultPlan,
    )
    from pipeline.sd.mock.http import (
        DEFAULT_MOCK_PORT,
        get_mock_server,
        make_http_server,
        mock_transport,
        run_forever,
        serve,
    )
    from pipeline.sd.mock.kit import (
        MockAnswer,
        MockRequest,
        MockSD,
        start_mock_sd,
    )
    from pipeline.sd.mock.render import (
        render,
    )
    from pipeline.sd.mock.server import (
        MockResponse,
        MockSDServer,
    )
    from pipeline.sd.mock.urls import parse_mock_url, parse_models

__all__ = [
    "DEFAULT_MOCK_PORT",
    "get_mock_server",
    "make_http_server",
    "mock_transport",
    "parse_mock_url",
    "parse_models",
    "run_forever",
    "serve",
    "MockResponse",
    "MockSDServer",
    "FAULT_KINDS",
    "FaultPlan",
    "render",
    "CONTROL_API_VERSION",
    "MockControl",
    "QueuedAnswer",
    "MockAnswer",
    "MockRequest",
    "MockSD",
    "start_mock_sd",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".http": [
            "DEFAULT_MOCK_PORT",
            "get_mock_server",
            "make_http_server",
            "mock_transport",
            "run_forever",
            "serve",
        ],
        ".server": ["MockResponse", "MockSDServer"],
        ".urls": ["parse_mock_url", "parse_models"],
        ".faults": ["FAULT_KINDS", "FaultPlan"],
        ".render": ["render"],
        ".control": ["CONTROL_API_VERSION", "MockControl", "QueuedAnswer"],
        ".kit": ["MockAnswer", "MockRequest", "MockSD", "start_mock_sd"],
    },
)
