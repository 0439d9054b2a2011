"""Settings validation the user audit found missing: an explicit env file, REDIS_URL's database,
options of SD_API_URL entries (``;max=N`` only) and of ``mock://`` URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.errors import hint_for
from pipeline.errors import ConfigError
from pipeline.settings import (
    load_settings,
    mask_url,
    split_sd_entry,
    strip_credentials,
    strip_credentials_in_text,
)

# -- --env-file ------------------------------------------------------------------------------------


def test_load_settings_missing_env_file_raises_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "prod.env"
    with pytest.raises(ConfigError) as info:
        load_settings(missing)
    assert str(info.value.message) == f"env file {missing} does not exist"
    assert hint_for(info.value) is not None and "--env-file" in hint_for(info.value)


def test_load_settings_env_file_that_is_a_directory_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(tmp_path)


def test_load_settings_without_env_file_needs_no_dotenv(tmp_path: Path) -> None:
    assert not (tmp_path / ".env").exists()  # clean_environ runs every test in tmp_path
    assert load_settings().redis_url is None


# -- REDIS_URL -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis://127.0.0.1:6379/abc", "database part is not /N"),
        ("redis://:hunter2@127.0.0.1:6379/-1", "database part is not /N"),
        ("redis://127.0.0.1:6379/1/2", "database part is not /N"),
        ("redis://127.0.0.1:6379?db=x", "db= is not a whole number"),
        # a / in the password moves the rest into the path: the message must not echo it
        ("redis://:hun/ter2hunter2@127.0.0.1:6379/0", "must be percent-encoded"),
        ("http://127.0.0.1:6379/0", "is not a Redis URL"),
    ],
)
def test_redis_url_malformed_database_raises_config_error(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(redis_url=url)
    message = str(info.value)
    assert "REDIS_URL" in message and fragment in message
    assert "hunter2" not in message and "ter2" not in message and "\n" not in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/",
        "redis://127.0.0.1:6379/15",
        "rediss://:pw@cache:6380/2",
        "redis://127.0.0.1:6379?db=3",
        "unix:///run/redis.sock?db=1",
    ],
)
def test_redis_url_well_formed_database_is_accepted(url: str) -> None:
    settings = load_settings(redis_url=url)
    assert settings.redis_dsn() == url


# -- SD_API_URL options ----------------------------------------------------------------------------


def test_sd_api_url_unknown_option_is_named_instead_of_invalid_port() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(sd_api_url="http://127.0.0.1:17860;foo=1")
    message = str(info.value)
    assert "unknown option 'foo' in SD_API_URL entry 'http://127.0.0.1:17860'" in message
    assert "the only option is ;max=N" in message
    assert "invalid port" not in message


def test_sd_api_url_unknown_option_before_max_is_rejected_without_password() -> None:
    with pytest.raises(ConfigError, match="unknown option 'foo'") as info:
        load_settings(sd_api_url="http://u:hunter2@gpu1:7860;foo=1;max=2")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("http://gpu1:7860", ("http://gpu1:7860", 1)),
        ("http://gpu1:7860 ; MAX = 3 ", ("http://gpu1:7860", 3)),
        ("http://u:p;x=1@gpu1:7860;max=2", ("http://u:p;x=1@gpu1:7860", 2)),
        ("mock://?faults=500:0.2;reset:0.1;max=2", ("mock://?faults=500:0.2;reset:0.1", 2)),
    ],
)
def test_split_sd_entry_separates_max_from_the_url(entry: str, expected: tuple[str, int]) -> None:
    assert split_sd_entry(entry) == expected


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("http://gpu1:7860;max=2;max=3", "gives ;max twice"),
        ("http://gpu1:7860;max=0", "has max='0'"),
        ("mock://?faults=500:0.1;seed=3", "unknown option 'seed'"),
    ],
)
def test_split_sd_entry_bad_option_raises_value_error(entry: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        split_sd_entry(entry)


# -- mock:// options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("mock://?latency_ms=abc", ["latency_ms='abc'", "not a whole number"]),
        ("mock://?bogus=1", ["unknown mock:// option 'bogus'", "latency_ms, fail_rate, seed, faults"]),
        ("mock://?faults=boom:0.5", ["faults='boom:0.5'", "unknown fault kind"]),
        ("mock://?latency_ms=-5", ["latency_ms and hang_ms must be >= 0"]),
        ("mock://?model_load_ms=-1", ["model_load_ms must be >= 0"]),
        ("mock://?models=;", ["models=';'", "no checkpoint names"]),
        ("http://gpu1:7860,mock://a?fail_rate=2", ["fail_rate"]),
    ],
)
def test_sd_api_url_bad_mock_option_raises_config_error(url: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(sd_api_url=url)
    message = str(info.value)
    assert "SD_API_URL" in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_sd_api_url_good_mock_options_are_accepted() -> None:
    url = "mock://a?latency_ms=5&seed=3&faults=500:0.2;reset:0.1&nowebui=1;max=2"
    assert load_settings(sd_api_url=url).sd_api_url == url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:Ab3/xYzSecret@redis:6379/0", "redis://***@redis:6379/0"),
        ("redis://me:pa#ss?word@cache:6380/1", "redis://me:***@cache:6380/1"),
        ("http://user:pw@gpu:7860", "http://user:***@gpu:7860"),
        ("http://gpu:7860/path", "http://gpu:7860/path"),
        # ambiguous (a path with @, or a password with /): masked, since a leak costs more than a vague URL
        ("http://gpu:7860/path@x", "http://gpu:***@x"),
    ],
)
def test_mask_url_hides_passwords_a_url_parser_misreads(url: str, masked: str) -> None:
    # An unencoded / ? or # in a password ends the host part early for urlsplit
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("url", "stripped", "masked"),
    [
        ("http://user:p@ss@gpu:7860", "http://gpu:7860", "http://user:***@gpu:7860"),
        ("http://user:pw@gpu:7860/sd/", "http://gpu:7860/sd/", "http://user:***@gpu:7860/sd/"),
        ("redis://:Ab3/xYzSecret@redis:6379/0", "redis://redis:6379/0", "redis://***@redis:6379/0"),
        ("http://gpu:7860", "http://gpu:7860", "http://gpu:7860"),
    ],
)
def test_strip_and_mask_credentials_agree_on_the_host(url: str, stripped: str, masked: str) -> None:
    assert strip_credentials(url) == stripped
    assert mask_url(url) == masked
    assert strip_credentials_in_text(f"cannot reach {url}: refused") == f"cannot reach {stripped}: refused"


# -- webhooks ----------------------------------------------------------------------------------------


def test_load_settings_webhook_stale_after_not_above_timeout_raises_config_error_naming_both() -> None:
    # An attempt under way saves nothing until it ends: a sweep would take it for a lost message.
    with pytest.raises(ConfigError) as info:
        load_settings(webhook_timeout_s=300)
    assert "WEBHOOK_STALE_AFTER_S (300) must be > WEBHOOK_TIMEOUT_S (300)" in info.value.message
    assert load_settings(webhook_timeout_s=300, webhook_stale_after_s=301).webhook_stale_after_s == 301
