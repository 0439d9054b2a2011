"""``--help`` of every command, as a person reads it at 80 columns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer.main

from cli.main import app
from tests.test_cli.conftest import Invoke


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``group`` (Typer's own click-like objects), with its path."""
    yield path, group
    for name, command in getattr(group, "commands", {}).items():
        yield from _commands(command, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=lambda path: " ".join(path) or "sdpipe")
def test_help_shows_no_type_placeholders(sdpipe: Invoke, path: tuple[str, ...]) -> None:
    result = sdpipe(*path, "--help", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    for placeholder in ("<bool>", "<str>", "<int>", "<float>", "<list[str]>", "<path>"):
        assert placeholder not in result.stdout


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_help_text_is_not_hard_wrapped_and_every_option_has_help(path: tuple[str, ...], command: Any) -> None:
    # A docstring's line breaks would be kept by the help renderer: paragraphs reach it as one line
    for paragraph in (command.help or "").split("\n\n"):
        assert "\n" not in paragraph.strip(), f"{' '.join(path)}: {paragraph!r}"
    for param in command.params:
        if param.param_type_name == "option" and not param.hidden:
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"
