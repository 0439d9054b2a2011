"""Prompt templates: ``{a|b|c}`` variants, ``{2$$a|b|c}`` picks, ``__name__`` wildcards, expanded by ``dynamicprompts``.

The grammar, the combinatorial and random samplers and the wildcard files are the ``dynamicprompts``
library's (the one behind the A1111 extension sd-dynamic-prompts). What this module adds is what a
batch needs before anything is enqueued: a template is checked first (an unbalanced brace, a wildcard
without a file, more prompts than the cap), each problem one :class:`~pipeline.errors.InputError`, so
the library never samples a broken template (it would loop on a missing wildcard); and each expansion
says how it was made (mode, index, template seed), so a result can be made again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

__all__ = ["Expansion", "TemplateMode", "check_template", "expand_templates", "is_template"]

#: Deepest nesting of wildcard files checked (a wildcard's lines may hold templates of their own).
_MAX_WILDCARD_DEPTH = 8
#: Most options of one part of a template for which the choices made are traced (beyond: not recorded).
_MAX_PART_OPTIONS = 1000


@dataclass(frozen=True)
class TemplateMode:
    """How templates expand: every combination (capped), or ``count`` random samples."""

    combinatorial: bool = False
    #: Most prompts a template may make in combinatorial mode.
    max_prompts: int = 100
    #: The random sampler's seed; None: a new one each time (recorded in each expansion).
    seed: int | None = None


@dataclass(frozen=True)
class Expansion:
    """One prompt (and negative prompt) a template made, and how."""

    prompt: str
    negative: str
    #: Position among the template's expansions (combinatorial order, or the random sample's index).
    index: int
    #: The random sampler's seed (random mode), so the same template and seed make the same prompts.
    template_seed: int | None
    #: What each variant and wildcard of the prompt template became, in template order (``{"part":
    #: "__weather__", "value": "fog"}``); None when it cannot be told (variables, huge parts).
    picks: tuple[dict[str, str], ...] | None = None

    def record(self, *, prompt_template: str, negative_template: str, combinatorial: bool) -> dict[str, Any]:
        """What a sidecar and a manifest keep: the templates and the choices that made this expansion."""
        choices: dict[str, Any] = {"mode": "combinatorial" if combinatorial else "random", "index": self.index}
        if self.template_seed is not None:
            choices["template_seed"] = self.template_seed
        if self.picks is not None:
            choices["picks"] = list(self.picks)
        return {"prompt": prompt_template, "negative": negative_template, "choices": choices}


def is_template(text: str) -> bool:
    """Whether ``text`` holds template syntax (a brace or a ``__wildcard__``)."""
    return "{" in text or "}" in text or ("__" in text and text.count("__") >= 2)


def _check_braces(text: str, field: str) -> None:
    depth_at: list[int] = []
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "{":
            depth_at.append(index)
        elif char == "}":
            if not depth_at:
                raise InputError(
                    f"{field}: unbalanced '}}' at character {index + 1} of {text!r}: remove it or escape it as \\}}",
                    field="template",
                    value=text,
                )
            depth_at.pop()
    if depth_at:
        raise InputError(
            f"{field}: unbalanced '{{' at character {depth_at[-1] + 1} of {text!r}: close it with '}}'",
            field="template",
            value=text,
        )


def _wildcard_names(node: Any) -> Iterator[str]:
    from dynamicprompts.commands import WildcardCommand

    if isinstance(node, WildcardCommand):
        if isinstance(node.wildcard, str):
            yield node.wildcard
        else:
            yield from _wildcard_names(node.wildcard)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        for item in dataclasses.fields(node):
            yield from _wildcard_names(getattr(node, item.name))
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _wildcard_names(item)


@contextlib.contextmanager
def _library() -> Iterator[None]:
    """dynamicprompts warns about its own pyparsing calls (deprecated names): not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def _parse(text: str, field: str) -> Any:
    from dynamicprompts.parser.parse import parse
    from pyparsing import ParseBaseException

    _check_braces(text, field)
    try:
        with _library():
            return parse(text)
    except ParseBaseException as exc:  # the template is malformed
        raise InputError(f"{field}: not a valid template ({exc}): {text!r}", field="template", value=text) from exc


def _wildcard_manager(wildcards_dir: Path) -> Any:
    from dynamicprompts.wildcards import WildcardManager

    return WildcardManager(wildcards_dir)


def check_template(text: str, wildcards_dir: Path, *, field: str = "prompt", _depth: int = 0) -> None:
    """Refuse a template that cannot expand: unbalanced braces, malformed syntax, a missing wildcard file.

    Raises:
        InputError: naming the template (or the wildcard and the file it needs) and the fix.
    """
    tree = _parse(text, field)
    manager = _wildcard_manager(wildcards_dir)
    for name in dict.fromkeys(_wildcard_names(tree)):
        if not isinstance(name, str) or "${" in name:
            continue  # built from variables: only known when sampling
        with _library():
            values = manager.get_all_values(name) if wildcards_dir.is_dir() else []
        if not values:
            where = "" if wildcards_dir.is_dir() else f" (WILDCARDS_DIR {wildcards_dir} does not exist)"
            raise InputError(
                f"{field}: wildcard __{name}__ has no file{where}: add {wildcards_dir / name}.txt "
                "(one entry a line) or set WILDCARDS_DIR",
                field="template",
                value=name,
            )
        if _depth < _MAX_WILDCARD_DEPTH:
            for value in values:
                if is_template(value):
                    check_template(value, wildcards_dir, field=field, _depth=_depth + 1)


def _combinations(text: str, wildcards_dir: Path, cap: int) -> list[str]:
    from dynamicprompts.generators import CombinatorialPromptGenerator

    if not is_template(text):
        return [text]
    with _library():
        generator = CombinatorialPromptGenerator(_wildcard_manager(wildcards_dir))
        return [str(prompt) for prompt in generator.generate(text, max_prompts=cap + 1)]


def _samples(text: str, wildcards_dir: Path, seeds: list[int]) -> list[str]:
    from dynamicprompts.generators import RandomPromptGenerator

    if not is_template(text):
        return [text] * len(seeds)
    with _library():
        generator = RandomPromptGenerator(_wildcard_manager(wildcards_dir))
        return [str(prompt) for prompt in generator.generate(text, len(seeds), seeds=seeds)]


def _label(node: Any) -> str:
    from dynamicprompts.commands import LiteralCommand, VariantCommand, WildcardCommand

    if isinstance(node, WildcardCommand) and isinstance(node.wildcard, str):
        return f"__{node.wildcard}__"
    if isinstance(node, VariantCommand):
        texts = [o.value.literal if isinstance(o.value, LiteralCommand) else "…" for o in node.variants]
        return "{" + "|".join(texts) + "}"
    return "{…}"


def _parts(text: str, wildcards_dir: Path) -> list[tuple[str | None, list[str]]] | None:
    """The template as parts in order: literal text (label None) or a variant/wildcard and its options."""
    from dynamicprompts.commands import LiteralCommand, SequenceCommand, VariantCommand, WildcardCommand
    from dynamicprompts.enums import SamplingMethod
    from dynamicprompts.sampling_context import SamplingContext

    with _library():
        tree = _parse(text, "prompt")
        tokens = tree.tokens if isinstance(tree, SequenceCommand) else [tree]
        context = SamplingContext(
            wildcard_manager=_wildcard_manager(wildcards_dir), default_sampling_method=SamplingMethod.COMBINATORIAL
        )
        parts: list[tuple[str | None, list[str]]] = []
        for token in tokens:
            if isinstance(token, LiteralCommand):
                parts.append((None, [token.literal]))
            elif isinstance(token, VariantCommand | WildcardCommand):
                options = []
                for result in context.generator_from_command(token):
                    options.append(str(result))
                    if len(options) > _MAX_PART_OPTIONS:
                        return None
                parts.append((_label(token), sorted(set(options), key=len, reverse=True)))
            else:
                return None  # variables, wraps: not traced
    return parts


def _match(parts: list[tuple[str | None, list[str]]], text: str) -> tuple[dict[str, str], ...] | None:
    """Which option of each part makes ``text`` (the first way that does), or None."""

    def walk(index: int, at: int) -> list[dict[str, str]] | None:
        if index == len(parts):
            return [] if at == len(text) else None
        label, options = parts[index]
        for option in options:
            if text.startswith(option, at):
                rest = walk(index + 1, at + len(option))
                if rest is not None:
                    return rest if label is None else [{"part": label, "value": option}, *rest]
        return None

    found = walk(0, 0)
    return tuple(found) if found is not None else None


def _with_picks(expansions: list[Expansion], template: str, wildcards_dir: Path) -> list[Expansion]:
    parts = _parts(template, wildcards_dir) if is_template(template) else None
    if parts is None:
        return expansions
    return [dataclasses.replace(e, picks=_match(parts, e.prompt)) for e in expansions]


def expand_templates(
    prompt: str, negative: str, *, wildcards_dir: Path, mode: TemplateMode, count: int
) -> list[Expansion]:
    """The prompts a template pair makes: every combination (prompt x negative), or ``count`` random samples.

    Raises:
        InputError: a template that cannot expand (see :func:`check_template`), or in combinatorial
            mode more than ``mode.max_prompts`` prompts.
    """
    check_template(prompt, wildcards_dir, field="prompt")
    check_template(negative, wildcards_dir, field="negative")
    if mode.combinatorial:
        prompts = _combinations(prompt, wildcards_dir, mode.max_prompts)
        negatives = _combinations(negative, wildcards_dir, mode.max_prompts)
        total = len(prompts) * len(negatives)
        if total > mode.max_prompts:
            raise InputError(
                f"prompt: template {prompt!r} makes more than {mode.max_prompts} prompts with --combinatorial: "
                "raise --max-prompts (MAX_PROMPTS) or sample at random (no --combinatorial)",
                field="max_prompts",
                value=prompt,
                limit=mode.max_prompts,
            )
        pairs = [(p, n) for p in prompts for n in negatives]
        made = [Expansion(p, n, index, None) for index, (p, n) in enumerate(pairs)]
        return _with_picks(made, prompt, wildcards_dir)
    template_seed = mode.seed if mode.seed is not None else random.SystemRandom().randrange(2**31)
    # One sampler seed per image: the i-th prompt depends only on (template, template seed, i).
    seeds = [template_seed + index for index in range(count)]
    prompts = _samples(prompt, wildcards_dir, seeds)
    negatives = _samples(negative, wildcards_dir, [seed + 2**31 for seed in seeds])
    made = [Expansion(p, n, index, template_seed) for index, (p, n) in enumerate(zip(prompts, negatives, strict=True))]
    return _with_picks(made, prompt, wildcards_dir)
