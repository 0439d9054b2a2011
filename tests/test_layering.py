"""The layering is a set of import-linter contracts in pyproject.toml (``uv run lint-imports``, run by
.ci/run). What import-linter cannot see is *when* an import runs: the contract on the mock SD server
allows two imports of it on condition that they are lazy, which these tests check."""

from __future__ import annotations

import json
import subprocess
import sys


def _loaded_after(code: str) -> set[str]:
    """The ``pipeline.sd.mock`` modules a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in sys.modules if m.startswith('pipeline.sd.mock')]))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out))


def test_mock_server_is_not_loaded_for_an_http_sd_url() -> None:
    code = (
        "from pipeline.settings import Settings\n"
        "from pipeline.sd.client import SDClient\n"
        "settings = Settings(_env_file=None, sd_api_url='http://gpu1:7860,http://gpu2:7860')\n"
        "SDClient(settings)"
    )
    assert _loaded_after(code) == set()


def test_mock_server_is_loaded_where_a_mock_url_is_resolved() -> None:
    code = (
        "from pipeline.settings import Settings\n"
        "from pipeline.sd.client import SDClient\n"
        "SDClient(Settings(_env_file=None, sd_api_url='mock://?seed=3'))"
    )
    assert "pipeline.sd.mock.http" in _loaded_after(code)
