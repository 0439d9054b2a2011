"""``parse_backends`` / ``backends_for``: options of an entry other than ``;max=N`` are refused by name."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.sd.backends import backends_for, parse_backends
from pipeline.settings import Settings


def test_parse_backends_unknown_option_raises_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        parse_backends("http://gpu1:7860;max=2,http://u:hunter2@gpu2:7860;foo=1")
    assert info.value.message.startswith("unknown option 'foo' in SD_API_URL entry 'http://u:***@gpu2:7860'")
    assert "invalid SD_API_URL entry" not in info.value.message  # no doubled prefix
    assert "hunter2" not in str(info.value)


def test_backends_for_pinned_url_with_unknown_option_raises_config_error(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="unknown option 'slots'"):
        backends_for(settings, pinned="http://gpu3:7860;slots=2")


def test_parse_backends_max_keeps_working_with_mock_fault_plans() -> None:
    (backend,) = parse_backends("mock://x?faults=500:0.1;reset:0.1;max=3")
    assert (backend.key, backend.max_slots) == ("mock://x?faults=500:0.1;reset:0.1", 3)
