"""The web dashboard of ``sdpipe serve`` at ``/``: overview, jobs, one job, gallery, batches and
schedules, submit; server-rendered (Jinja2) with a little plain JavaScript, every asset served from
here. It is a face on the HTTP API: its pages render what the ``/api`` routes' own functions return,
its buttons call the same functions, and its live parts read the API from the browser.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from cli.api.dashboard import actions, pages
from cli.api.dashboard.render import SignInRequired, page, sign_in_redirect

__all__ = ["STATIC_URL", "install_dashboard", "page"]

#: Where the dashboard's scripts and styles are served.
STATIC_URL = "/static/dashboard"
_STATIC_DIR = Path(__file__).parent / "static"


def install_dashboard(app: FastAPI) -> None:
    """Add the dashboard's pages, actions and assets to ``app`` (after the API's routes)."""
    app.mount(STATIC_URL, StaticFiles(directory=_STATIC_DIR), name="dashboard-static")
    app.add_exception_handler(SignInRequired, sign_in_redirect)
    app.include_router(actions.signin_page)
    app.include_router(actions.router)
    app.include_router(pages.router)
