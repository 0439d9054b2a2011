"""``--help`` of every command, as a person reads it at 80 columns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer.main

from cli.help import flowing
from cli.lazy import load_command
from cli.main import COMMANDS as LAZY_COMMANDS
from cli.main import app
from tests.test_cli.conftest import Invoke


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``group`` (Typer's own click-like objects), with its path; loads lazy ones."""
    yield path, group
    if hasattr(group, "list_commands"):
        for name in group.list_commands(None):
            yield from _commands(group.get_command(None, name), (*path, name))


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


@pytest.mark.parametrize("entry", LAZY_COMMANDS, ids=lambda entry: entry.name)
def test_help_listing_line_is_the_first_paragraph_of_the_command_help(entry: Any) -> None:
    # sdpipe --help lists commands from the table in cli.main without importing them: it must say what they say
    command = load_command(entry)
    assert command.name == entry.name
    assert entry.help == flowing(command.help or "").split("\n\n")[0]


def test_help_lists_every_command_of_the_table_in_order(sdpipe: Invoke) -> None:
    result = sdpipe("--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    positions = [result.stdout.find(f"│ {entry.name} ") for entry in LAZY_COMMANDS]
    assert -1 not in positions
    assert positions == sorted(positions)


def test_help_suggests_a_command_for_a_typo(sdpipe: Invoke) -> None:
    result = sdpipe("stauts")
    assert result.exit_code == 2
    assert "Did you mean 'status'?" in result.output
