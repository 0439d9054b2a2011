"""What a job carries of the command that submitted it: ``--out`` and ``--sd-url`` in Redis mode only."""

from __future__ import annotations

from pathlib import Path

from pipeline.jobs.planning import travelling_overrides
from pipeline.settings import Settings


def test_travelling_overrides_in_embedded_mode_record_only_the_sd_url(settings: Settings, tmp_path: Path) -> None:
    embedded = settings.model_copy(update={"output_dir": tmp_path / "elsewhere"})
    assert travelling_overrides(embedded, out=tmp_path / "elsewhere", sd_url="http://gpu1:7860") == (
        None,
        "http://gpu1:7860",
    )


def test_travelling_overrides_carry_out_as_absolute_path_and_sd_url_in_redis_mode(
    settings: Settings,
) -> None:
    redis = settings.model_copy(update={"redis_host": "localhost", "output_dir": Path("rel/out")})
    assert travelling_overrides(redis, out=Path("rel/out"), sd_url="http://gpu1:7860") == (
        str(Path("rel/out").absolute()),
        "http://gpu1:7860",
    )


def test_travelling_overrides_carry_an_s3_out_as_its_url(settings: Settings) -> None:
    redis = settings.model_copy(update={"redis_host": "localhost", "output_url": "s3://bucket/team"})
    assert travelling_overrides(redis, out="s3://bucket/team", sd_url=None) == ("s3://bucket/team", None)


def test_travelling_overrides_leave_workers_their_own_settings_when_nothing_was_overridden(
    settings: Settings,
) -> None:
    redis = settings.model_copy(update={"redis_host": "localhost"})
    assert travelling_overrides(redis, out=None, sd_url=None) == (None, None)
