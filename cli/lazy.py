"""The root command group, loading each command's module only when that command runs.

Importing every command module up front cost about a second before any command did anything
(numpy, PIL, Dramatiq, Redis, httpx and pydantic models, pulled in by modules the command never
uses). :class:`LazyGroup` knows each command by name, module and one-line help
(:class:`LazyCommand`): ``sdpipe --help`` lists them all from that table, and ``sdpipe NAME``
imports ``NAME``'s module alone. ``tests/test_cli/test_help.py`` keeps the one-line helps equal to
the commands' own docstrings.

Start-up also pauses Python's cyclic garbage collector (:func:`pause_collector`) until the command
runs: importing the libraries a command needs leaves some 60,000 objects that all stay alive, and
the collector traversed them about 100 times for nothing (15-17 ms of the ~250 ms of CPU an
embedded ``sdpipe status`` took). The console script pauses it before ``cli.main`` is imported
(:mod:`cli.entry`, where the pause lives). The command itself runs with the collector on, as any program.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

import typer
import typer.main
from typer._click.exceptions import UsageError
from typer.core import DEFAULT_MARKUP_MODE, MarkupMode, TyperCommand, TyperGroup
from typer.models import CommandInfo

from cli.entry import pause_collector, resume_collector
from cli.help import flow_help, flowing

__all__ = ["LazyCommand", "LazyGroup", "load_command", "loaded_command", "pause_collector", "resume_collector"]


@dataclass(frozen=True)
class LazyCommand:
    """One command of the root group: where it lives, and the line ``sdpipe --help`` shows for it.

    ``attribute`` names a command function, or (``group=True``) a ``typer.Typer`` of subcommands.
    ``exits_quickly``: the command leaves nothing for the interpreter's teardown to finish (no thread, no
    file or temporary file left open: its stores are closed, a file it writes is written atomically), so
    the process may end with :func:`os._exit` once it has run (:func:`cli.entry.quick_exit`).
    """

    name: str
    module: str
    attribute: str
    help: str
    group: bool = False
    exits_quickly: bool = False


class _LoadedCommand(TyperCommand):
    """A command built by :func:`load_command`: the collector is back on before its code runs."""

    def invoke(self, ctx: Any) -> Any:
        resume_collector()
        return super().invoke(ctx)


#: Commands already built, by name: a command is built once per process (tests invoke many times).
_LOADED: dict[str, Any] = {}

#: The entry :func:`load_command` loaded last: the command this process runs.
_last_loaded: LazyCommand | None = None


def loaded_command() -> LazyCommand | None:
    """The command this process loaded to run (the last one :func:`load_command` loaded), or None."""
    return _last_loaded


def load_command(entry: LazyCommand, *, rich_markup_mode: MarkupMode = DEFAULT_MARKUP_MODE) -> Any:
    """``entry``'s click command (a Typer group for a ``group`` entry), importing its module now."""
    global _last_loaded
    _last_loaded = entry
    command = _LOADED.get(entry.name)
    if command is not None:
        return command
    target = getattr(importlib.import_module(entry.module), entry.attribute)
    if entry.group:
        resume_collector()  # a group's subcommands run from here on
        flow_help(target)
        command = typer.main.get_group(target)
        command.name = entry.name
    else:
        doc = target.__doc__
        info = CommandInfo(name=entry.name, callback=target, help=flowing(doc) if doc else None, cls=_LoadedCommand)
        command = typer.main.get_command_from_info(
            info, pretty_exceptions_short=True, rich_markup_mode=rich_markup_mode
        )
    _LOADED[entry.name] = command
    return command


class LazyGroup(TyperGroup):
    """A Typer group whose commands are :class:`LazyCommand` entries (set :attr:`entries` on a subclass)."""

    entries: Sequence[LazyCommand] = ()

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._by_name = {entry.name: entry for entry in self.entries}
        #: True while the help is rendered: the listing needs each command's line, not the command.
        self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return [*self.commands, *(name for name in self._by_name if name not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = self.commands.get(cmd_name)
        if command is not None:
            return command
        entry = self._by_name.get(cmd_name)
        if entry is None:
            return None
        if self._listing:
            return TyperCommand(name=entry.name, help=entry.help)
        return load_command(entry, rich_markup_mode=self.rich_markup_mode)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        # TyperGroup suggests from ``self.commands``, which holds only the commands loaded so far.
        try:
            return self._click_resolve_command(ctx, args)
        except UsageError as exc:
            matches = get_close_matches(args[0], self.list_commands(ctx)) if args else []
            if matches:
                exc.message = f"{exc.message.rstrip('.')}. Did you mean {', '.join(repr(m) for m in matches)}?"
            raise
