"""Option groups: flags declared once as a dataclass, spliced into each command's signature."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from cli.option_groups import OptionGroup, flat_params, with_option_groups
from cli.upscale_options import UpscaleFlags
from pipeline.upscale.planning import ROW_UPSCALE_KEYS


@dataclass(frozen=True)
class _Colours(OptionGroup):
    red: Annotated[int | None, typer.Option("--red", help="Red.")] = None
    blue: Annotated[bool, typer.Option("--blue", help="Blue.")] = False


def _paint(
    name: str, colours: _Colours = _Colours(), loud: Annotated[bool, typer.Option("--loud")] = False
) -> tuple[str, _Colours, bool]:
    return name, colours, loud


def test_option_groups_splice_the_fields_where_the_group_stands() -> None:
    grouped = with_option_groups(_paint)

    assert list(inspect.signature(grouped).parameters) == ["name", "red", "blue", "loud"]
    assert grouped(name="x", red=3, loud=True) == ("x", _Colours(red=3, blue=False), True)


def test_option_groups_typer_parses_the_fields_into_the_group() -> None:
    seen: list[tuple[str, _Colours, bool]] = []
    app = typer.Typer()

    @app.command()
    @with_option_groups
    def paint(name: str, colours: _Colours = _Colours(), loud: bool = False) -> None:
        seen.append((name, colours, loud))

    result = CliRunner().invoke(app, ["wall", "--red", "7", "--blue"], catch_exceptions=False)
    help_text = CliRunner().invoke(app, ["--help"], catch_exceptions=False).output

    assert result.exit_code == 0, result.output
    assert seen == [("wall", _Colours(red=7, blue=True), False)]
    assert "--red" in help_text and "Red." in help_text and "--colours" not in help_text


def test_option_groups_refuse_a_field_named_like_another_parameter() -> None:
    def clash(red: int, colours: _Colours = _Colours()) -> None: ...

    with pytest.raises(TypeError, match="red"):
        with_option_groups(clash)


def test_option_groups_flat_params_give_the_fields_back_under_their_own_names() -> None:
    params = {"name": "x", "colours": _Colours(red=1)}

    assert flat_params(params) == {"name": "x", "red": 1, "blue": False}


def test_option_groups_upscale_fields_are_the_row_keys() -> None:
    flags = UpscaleFlags(upscale=2.0, upscale_tile=256)

    assert set(flags.values()) == set(ROW_UPSCALE_KEYS)
    assert flags.fields() == {"upscale": 2.0, "upscale_tile": 256}
