"""Browser tests of the dashboard: Debian's chromium driven by Playwright (never a browser download).

One browser for the whole session; each test gets a fresh context (no cookies) at 1280x800 and the
real app on uvicorn in a thread (``start_api``), with the mock SD server over HTTP. A missing
``/usr/bin/chromium`` skips locally and fails under ``CI=true`` (``.ci/run`` installs it).
Screenshots go to ``SCREENSHOT_DIR`` (ignored by git); the README's come from there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_api.conftest import ApiServer, StartApi, start_api  # noqa: F401 - fixture re-export

CHROMIUM = Path(os.environ.get("SDPIPE_CHROMIUM", "/usr/bin/chromium"))
#: Where the tests write a screenshot of each page (``.gitignore`` lists it).
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless chromium for the session."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if _in_ci():
            pytest.fail(message + "; CI must run the browser tests")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A new page in its own context (no cookies) at 1280x800; a JavaScript dialog fails the test
    (an ``alert`` would mean a prompt ran as script)."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    opened = context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield opened
    finally:
        context.close()
    assert dialogs == [], f"a dialog opened: {dialogs}"
    assert errors == [], f"script errors: {errors}"


def screenshot(page: Any, name: str, *, small: bool = False) -> Path:
    """Write ``SCREENSHOT_DIR/<name>.png`` of the page as it is (the viewport, 1280x800).

    ``small``: as a 128-colour PNG, optimised (the README's images are made so: a fraction of the size,
    and a page of text and flat colours looks the same).
    """
    SCREENSHOT_DIR.mkdir(exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    page.screenshot(path=str(path))
    if small:
        from PIL import Image

        with Image.open(path) as image:
            reduced = image.convert("RGB").quantize(colors=128, method=Image.Quantize.FASTOCTREE)
        reduced.save(path, optimize=True)
    return path


@pytest.fixture
def dash(start_api: StartApi, sd_server_factory: Any) -> Any:  # noqa: F811 - the fixture imported above
    """A function starting the app (``start_api`` overrides) on a mock SD server over HTTP
    (``mock`` options: ``latency_ms`` ...); returns ``(api, mock)``."""

    def start(mock: dict[str, Any] | None = None, **overrides: Any) -> tuple[ApiServer, Any]:
        sd = sd_server_factory(**(mock or {}))
        api = start_api(sd_api_url=sd.url, **overrides)
        return api, sd

    return start
