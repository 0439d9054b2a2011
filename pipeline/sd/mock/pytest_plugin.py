"""pytest plugin ``sdpipe``: a mock AUTOMATIC1111 API over real HTTP for your tests (``sd_server``).

Installed with sdpipe (entry point ``pytest11``), inert until a test asks for a fixture: importing this
module loads no numpy, PIL or httpx and starts no thread or server. ``pytest -p no:sdpipe`` turns it off.

Fixtures (each gives :class:`pipeline.sd.mock.kit.MockSD` objects):

- ``sd_server``: a mock on a free port, ``.url``. Fresh for each test by default; with the ini option
  ``sd_server_scope = session`` (or ``--sd-server-scope=session``) one server is shared by the whole run
  and :meth:`~pipeline.sd.mock.kit.MockSD.reset` before each test. ``@pytest.mark.sd_server(**options)``
  gives a test its own server with those options, whatever the scope.
- ``sd_server_factory``: ``sd_server_factory(**options)`` starts another server per call (options:
  ``latency_ms``, ``faults``, ``fail_rate``, ``hang_ms``, ``models``, ``model_load_ms``, ``api_auth``,
  ``nowebui``, ``seed``);
  all stop after the test.
- ``sd_server_session``: the shared server itself, started at first use, never reset for you.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pipeline.sd.mock.kit import MockSD

__all__ = ["sd_server", "sd_server_factory", "sd_server_session"]

_SCOPES = ("function", "session")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "sd_server_scope",
        "sdpipe: 'function' (a fresh sd_server per test, the default) or 'session' (one, reset between tests)",
        default="function",
    )
    parser.getgroup("sdpipe", "sdpipe mock SD server").addoption(
        "--sd-server-scope",
        choices=_SCOPES,
        default=None,
        help="one sd_server per test (function) or one for the run, reset between tests (session)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sd_server(**options): this test's sd_server gets its own mock server with these options "
        "(latency_ms, faults, fail_rate, hang_ms, models, model_load_ms, api_auth, nowebui, seed)",
    )


def _scope(config: pytest.Config) -> str:
    scope = str(config.getoption("sd_server_scope") or config.getini("sd_server_scope") or "function").strip()
    if scope not in _SCOPES:
        raise pytest.UsageError(f"sd_server_scope = {scope!r}: use function or session")
    return scope


@pytest.fixture
def sd_server_factory() -> Iterator[Callable[..., MockSD]]:
    """Start mock A1111 servers on free ports: ``sd_server_factory(latency_ms=200, faults="500:0.1")``."""
    from pipeline.sd.mock.kit import start_mock_sd  # here, not at import: the plugin stays inert

    with ExitStack() as servers:

        def start(**options: Any) -> MockSD:
            return servers.enter_context(start_mock_sd(**options))

        yield start


@pytest.fixture(scope="session")
def sd_server_session() -> Iterator[MockSD]:
    """One mock A1111 server for the whole run, with default options; not reset between tests."""
    from pipeline.sd.mock.kit import start_mock_sd

    with start_mock_sd() as server:
        yield server


@pytest.fixture
def sd_server(request: pytest.FixtureRequest, sd_server_factory: Callable[..., MockSD]) -> MockSD:
    """A mock A1111 server over HTTP (``.url``), fresh or shared and reset, per ``sd_server_scope``."""
    marker = request.node.get_closest_marker("sd_server")
    if marker is not None:
        if marker.args:
            raise pytest.UsageError("@pytest.mark.sd_server takes keyword options only, e.g. sd_server(latency_ms=50)")
        return sd_server_factory(**marker.kwargs)
    if _scope(request.config) == "session":
        shared: MockSD = request.getfixturevalue("sd_server_session")
        shared.reset()
        return shared
    return sd_server_factory()
