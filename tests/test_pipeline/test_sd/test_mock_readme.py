"""README "The mock SD server" names every route the mock serves, and no route it does not serve."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.sd.mock.http import MockSDServer

README = Path(__file__).resolve().parents[3] / "README.md"


def _route_paragraph() -> str:
    section = README.read_text(encoding="utf-8").split("## The mock SD server\n", 1)[1]
    return section.strip().split("\n\n", 1)[0]


def test_readme_mock_section_lists_the_routes_the_mock_serves() -> None:
    paragraph = _route_paragraph()
    listed_part = paragraph.split("any other route is a 404", 1)[0]
    names = set(re.findall(r"`([^`\s]+)`", listed_part)) - {"SD_API_URL=mock://", "/sdapi/v1/"}
    listed = {name if name.startswith("/") else f"/sdapi/v1/{name}" for name in names}
    served = {path for path in MockSDServer()._routes if not path.startswith("/mock/")}

    assert listed == served, f"README lists but mock lacks {listed - served}; mock serves unlisted {served - listed}"
