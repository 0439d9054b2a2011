"""Option groups: flags several commands share, declared once as a dataclass of Typer options.

Typer reads a command's options from its signature, one parameter each, so flags shared by
``generate``, ``batch`` and ``schedule add`` used to be listed three times. An :class:`OptionGroup`
declares them once, as fields annotated with their ``typer.Option``; a command takes the group as one
parameter, and :func:`with_option_groups` shows Typer the group's fields in that parameter's place
(so ``--help`` lists them where the parameter stands) and hands the command the group built from them::

    @dataclass(frozen=True)
    class UpscaleFlags(OptionGroup):
        upscale: Annotated[float | None, typer.Option("--upscale", help="...")] = None

    @with_option_groups
    def generate(prompt: str, upscale_flags: UpscaleFlags = UpscaleFlags()) -> None: ...
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, get_type_hints

__all__ = ["OptionGroup", "flat_params", "with_option_groups"]


class OptionGroup:
    """Base of a frozen dataclass whose fields are a group of command options (each field's annotation
    an ``Annotated[..., typer.Option(...)]``, its default the option's default)."""

    def values(self) -> dict[str, Any]:
        """The fields by name, as the command's parameters were named before they were grouped."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}  # type: ignore[arg-type]


def with_option_groups(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with each :class:`OptionGroup` parameter spliced, for Typer, into the group's fields.

    Raises:
        TypeError: ``command`` has no group parameter, or a group field has the name of another parameter.
    """
    signature = inspect.signature(command, eval_str=True)
    parameters: list[inspect.Parameter] = []
    groups: dict[str, tuple[type[OptionGroup], tuple[str, ...]]] = {}
    for parameter in signature.parameters.values():
        group = parameter.annotation
        if not (isinstance(group, type) and issubclass(group, OptionGroup)):
            parameters.append(parameter)
            continue
        hints = get_type_hints(group, include_extras=True)
        fields = dataclasses.fields(group)  # type: ignore[arg-type]
        groups[parameter.name] = (group, tuple(field.name for field in fields))
        parameters.extend(
            inspect.Parameter(field.name, parameter.kind, default=field.default, annotation=hints[field.name])
            for field in fields
        )
    if not groups:
        raise TypeError(f"{command.__qualname__} has no OptionGroup parameter")
    names = [parameter.name for parameter in parameters]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise TypeError(f"{command.__qualname__}: option group fields clash with parameters: {', '.join(clashes)}")

    @functools.wraps(command)
    def grouped(*args: Any, **kwargs: Any) -> Any:
        for name, (group, fields) in groups.items():
            kwargs[name] = group(**{field: kwargs.pop(field) for field in fields if field in kwargs})
        return command(*args, **kwargs)

    # Typer reads the signature (inspect.signature stops at __signature__) and the annotations.
    grouped.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    grouped.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return grouped


def flat_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` (a command's ``locals()``) with each :class:`OptionGroup` replaced by its fields: the
    parameters as Typer parsed them, e.g. for what an idempotency key stands for."""
    flat: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, OptionGroup):
            flat.update(value.values())
        else:
            flat[name] = value
    return flat
