"""Settings: .env.example in sync, validation messages, masking of secrets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import Settings, load_settings, mask_url, settings_env

_REPO = Path(__file__).resolve().parent.parent
_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")


def _example_entries() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in (_REPO / ".env.example").read_text().splitlines():
        match = _LINE.match(line.strip())
        if match:
            entries[match[1]] = match[2]
    return entries


def test_env_example_lists_every_setting() -> None:
    assert set(_example_entries()) == {name.upper() for name in Settings.model_fields}


def test_env_example_defaults_match_settings() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    for line in (_REPO / ".env.example").read_text().splitlines():
        match = _LINE.match(line)
        if not match or line.startswith("#"):
            continue
        name, value = match[1], match[2]
        field = getattr(defaults, name.lower())
        parsed = getattr(Settings(_env_file=None, **{name.lower(): value}), name.lower())  # type: ignore[call-arg]
        assert parsed == field, f"{name}: .env.example says {value!r}, default is {field!r}"


def test_settings_read_from_env_file(tmp_path: Path) -> None:
    env = tmp_path / "custom.env"
    env.write_text("SD_API_URL=http://gpu-box:7860\nBAND_PX=8\nREDIS_HOST=cache\nREDIS_PASSWORD=s3cret\n")
    settings = load_settings(env)
    assert settings.sd_api_url == "http://gpu-box:7860"
    assert settings.band_px == 8
    assert settings.redis_mode
    assert settings.redis_dsn() == "redis://:s3cret@cache:6379/0"
    assert "s3cret" not in settings.redis_dsn_masked()


def test_settings_env_overrides_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "custom.env"
    env.write_text("STEPS=30\n")
    monkeypatch.setenv("STEPS", "12")
    assert load_settings(env).steps == 12


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("sd_api_url", "gpu-box:7860", "SD_API_URL"),
        ("sd_api_url", "ftp://x", "not an http(s) URL"),
        ("sd_api_url", "http://gpu box:7860", "not an http(s) URL"),
        ("sd_api_url", "http://u:hunter2@host:notaport", "invalid port"),
        ("grid", "0x2", "GRID"),
        ("grid", "abc", "ROWSxCOLS"),
        ("sd_timeout_s", "0", "SD_TIMEOUT_S"),
        ("output_format", "gif", "OUTPUT_FORMAT"),
    ],
)
def test_settings_invalid_value_raises_config_error_naming_it(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**{name: value})
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert "hunter2" not in str(info.value)


def test_mask_url_hides_passwords_only() -> None:
    assert mask_url("redis://:pw@host:6379/0") == "redis://***@host:6379/0"
    assert mask_url("http://user:pw@gpu:7860") == "http://user:***@gpu:7860"
    assert mask_url("http://gpu:7860") == "http://gpu:7860"


def test_settings_env_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(sd_api_auth="u:p", band_px=9, output_dir=tmp_path / "o", redis_url="redis://h:1/2")
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    again = load_settings()
    assert again == settings
