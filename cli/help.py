"""How ``--help`` reads: the type names people know instead of Typer's ``<str>``-style placeholders,
and command docstrings as flowing paragraphs instead of their source line breaks.

Typer (0.2x) labels every value ``<str>``, ``<int>``, ``<list[str]>``, and even on/off flags
``<bool>``; its Rich help keeps a docstring's line breaks, so text wrapped at 100 columns in the
source breaks mid-sentence at 80. :func:`polish_help` fixes the first, once, before the app runs;
:func:`flowing` and :func:`flow_help` the second, as each command is built.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import typer
from typer.core import TyperArgument, TyperOption

__all__ = ["flow_help", "flowing", "polish_help", "readable_type"]

#: Typer's labels, as the help shows them (click's familiar names).
_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN"}
_LABEL_RE = re.compile(r"<(?P<inner>.+)>(?P<more>\.\.\.)?")


def readable_type(label: str | None) -> str | None:
    """``<str>`` -> ``TEXT``, ``<list[int]>`` -> ``INTEGER``, ``<png|webp>`` -> ``[png|webp]``,
    ``<path>`` -> ``PATH``; anything else (a metavar the code chose) unchanged."""
    if label is None:
        return None
    match = _LABEL_RE.fullmatch(label)
    if match is None:
        return label
    inner = match["inner"]
    listed = re.fullmatch(r"list\[(.+)\]", inner)
    if listed is not None:
        inner = listed[1]
    inner = inner.removesuffix(" range")
    if "|" in inner:
        name = f"[{inner}]"
    else:
        name = _TYPE_NAMES.get(inner, inner.upper())
    return name + (match["more"] or "")


_option_type = TyperOption.display_type_rich
_argument_type = TyperArgument.display_type_rich


def _option_display(self: TyperOption, ctx: Any) -> str | None:
    if self.is_flag or self.count:  # --overwrite, --wait/--no-wait: nothing to type after them
        return None
    return readable_type(_option_type(self, ctx))


def _argument_display(self: TyperArgument, ctx: Any) -> str | None:
    return readable_type(_argument_type(self, ctx))


def flowing(doc: str) -> str:
    """A docstring with each paragraph on one line (paragraphs stay apart)."""
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in inspect.cleandoc(doc).split("\n\n"))


def polish_help() -> None:
    """Readable type names in every help (process-wide; once is enough, again is harmless)."""
    TyperOption.display_type_rich = _option_display  # type: ignore[method-assign]
    TyperArgument.display_type_rich = _argument_display  # type: ignore[method-assign,assignment]


def flow_help(app: typer.Typer) -> None:
    """``app``'s commands' docstrings, its sub-apps' included, as flowing paragraphs."""
    pending = [app]
    while pending:
        current = pending.pop()
        for command in current.registered_commands:
            doc = command.help or (command.callback.__doc__ if command.callback else None)
            if doc:
                command.help = flowing(doc)
        for group in current.registered_groups:
            if group.typer_instance is not None:
                pending.append(group.typer_instance)
