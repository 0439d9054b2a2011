"""One checked batch row -> the rows it stands for: its prompt template expanded, times its sweeps.

A row (or the command line's defaults, or the file's ``defaults``) may carry the keys of
:data:`~pipeline.batches.rows.TEMPLATE_KEYS`: ``template`` (expand ``prompt``/``negative``),
``combinatorial``, ``max_prompts``, ``template_seed``, ``sweep`` ({key: [values]}) and
``contact_sheet``. They are taken out before the row is checked; :func:`row_variants` then gives the
values of each job group, with the record (template, choices, sweep values) the manifest and the
sidecars keep.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.batches.rows import TEMPLATE_KEYS, check_row, generation_request
from pipeline.errors import InputError
from pipeline.jobs.planning import RequestChecker, plan_generate
from pipeline.models import JobSpec, StepParams
from pipeline.prompts.sweeps import parse_sweeps, sweep_combinations
from pipeline.prompts.templates import TemplateMode, expand_templates, is_template
from pipeline.settings import Settings
from pipeline.upscale.planning import with_row_upscale

__all__ = ["RowVariant", "batch_template_seed", "plan_templated", "row_variants", "split_template_keys"]

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


@dataclass(frozen=True)
class RowVariant:
    """The values of one group of jobs a row stands for, and how they were made (None: the row as written)."""

    values: dict[str, Any]
    #: ``{"template": {...}, "sweep": {...}}`` as applicable; None for a plain row.
    record: dict[str, Any] | None
    #: Jobs of this variant (the row's ``count``, or 1 for a random sample).
    count: int | None = None


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise InputError(f"{key}: expected true or false (got {value!r})", field=key, value=str(value))


def _whole(key: str, value: Any, minimum: int) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, int) or isinstance(value, bool) else value
    except ValueError:
        number = None
    if number is None or isinstance(value, bool) or number < minimum:
        raise InputError(f"{key}: expected a whole number >= {minimum} (got {value!r})", field=key, value=str(value))
    return number


def split_template_keys(raw: Mapping[Any, Any]) -> tuple[dict[str, Any], dict[Any, Any]]:
    """``raw`` split into its template/sweep keys (checked, typed) and the rest (a row as before).

    Raises:
        InputError: a template key with a value of the wrong kind.
    """
    options: dict[str, Any] = {}
    rest: dict[Any, Any] = {}
    for key, value in raw.items():
        if key not in TEMPLATE_KEYS:
            rest[key] = value
            continue
        if value is None or (isinstance(value, str) and not value.strip() and key != "template"):
            continue  # an empty CSV cell: not set
        if key in ("template", "combinatorial", "contact_sheet"):
            options[key] = _flag(key, value)
        elif key == "max_prompts":
            options[key] = _whole(key, value, 1)
        elif key == "template_seed":
            options[key] = _whole(key, value, 0)
        else:
            options[key] = parse_sweeps(value if isinstance(value, Mapping) else [str(value)])
    return options, rest


def batch_template_seed(batch_id: str, line: int) -> int:
    """The random template seed of a batch row given none: fixed by the batch id and the line.

    Only the id's first 8 characters count, so ``--resume`` with an 8-character prefix picks the same.
    """
    return zlib.crc32(f"{batch_id[:8]}:{line}".encode()) & 0x7FFFFFFF


def row_variants(
    values: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    wildcards_dir: Path,
    max_prompts: int,
    known_fields: Collection[str] | None = None,
    default_seed: int | None = None,
) -> list[RowVariant]:
    """The job groups of one checked row: each template expansion, for each combination of the sweeps.

    Random picks use ``template_seed`` if the options give one, else ``default_seed`` (a batch file
    derives it from the batch id and the line, so ``--resume`` picks the same prompts again while a new
    batch, e.g. a schedule's next run, picks anew), else a fresh random seed.

    Raises:
        InputError: a template that cannot expand (unbalanced brace, missing wildcard file, more
            combinations than ``max_prompts``), or a sweep value of the wrong type.
    """
    combinatorial = bool(options.get("combinatorial", False))
    templating = bool(options.get("template", combinatorial or "template_seed" in options))
    prompt = str(values.get("prompt", ""))
    negative = str(values.get("negative", ""))
    count = int(values.get("count", 1))
    groups: list[tuple[dict[str, Any], dict[str, Any] | None, int | None]]
    if templating and (is_template(prompt) or is_template(negative)):
        mode = TemplateMode(
            combinatorial=combinatorial,
            max_prompts=int(options.get("max_prompts", max_prompts)),
            seed=options.get("template_seed", default_seed),
        )
        expansions = expand_templates(prompt, negative, wildcards_dir=wildcards_dir, mode=mode, count=count)
        groups = []
        seed = values.get("seed", -1)
        for expansion in expansions:
            own = {**values, "prompt": expansion.prompt}
            if "negative" in values or expansion.negative:
                own["negative"] = expansion.negative
            if not combinatorial and seed != -1:
                own["seed"] = seed + expansion.index  # random mode: one job per sample, seeds as count's
            made = expansion.record(prompt_template=prompt, negative_template=negative, combinatorial=combinatorial)
            groups.append((own, made, None if combinatorial else 1))
    else:
        groups = [(dict(values), None, None)]
    sweeps = options.get("sweep") or {}
    combos = sweep_combinations(sweeps)
    variants = []
    for combo in combos:
        typed: dict[str, Any] = {}
        if combo:
            typed, issues = check_row(combo, text_values=True, known_fields=known_fields, json_text=True)
            if issues:
                field, message, _ = issues[0]
                raise InputError(f"--sweep {field}: {message}", field="--sweep", value=str(field))
        for own, template, group_count in groups:
            record: dict[str, Any] = {}
            if template is not None:
                record["template"] = template
            if combo:
                record["sweep"] = {key: typed.get(_row_key(key), value) for key, value in combo.items()}
                if options.get("contact_sheet"):
                    record["contact_sheet"] = True  # the worker finishing the batch writes it
            merged = {**own, **typed}
            if group_count is not None:
                merged["count"] = group_count
            variants.append(RowVariant(merged, record or None, group_count))
    return variants


def _row_key(key: str) -> str:
    from pipeline.batches.rows import A1111_NAMES

    return A1111_NAMES.get(key, key)


def plan_templated(
    settings: Settings,
    values: Mapping[str, Any],
    options: Mapping[str, Any],
    step_params: StepParams,
    *,
    count: int,
    checker: RequestChecker | None,
    upscale_names: Mapping[str, str] | None = None,
    **plan: Any,
) -> list[JobSpec]:
    """The jobs of one checked request (``generate``, ``POST /api/generate``): every template expansion
    times every sweep combination, each planned by :func:`~pipeline.jobs.planning.plan_generate`
    (``plan`` are its other keyword arguments) and upscaled as its ``upscale*`` keys ask, each spec
    keeping its template record. ``upscale_names``: what a bad upscale value is called (default: its
    row key; ``generate``: its flag).

    Raises:
        InputError: a template that cannot expand, a bad sweep value, or what plan_generate refuses.
    """
    known = checker.known_fields() if checker is not None else None
    specs: list[JobSpec] = []
    variants = row_variants(
        {**values, "count": count},
        options,
        wildcards_dir=settings.wildcards_dir,
        max_prompts=settings.max_prompts,
        known_fields=known,
    )
    for variant in variants:
        planned = plan_generate(
            settings,
            generation_request(variant.values),
            step_params,
            count=variant.values["count"],
            checker=checker,
            **plan,
        )
        planned = with_row_upscale(settings, planned, variant.values, checker, names=upscale_names)  # upscale* keys
        specs += [spec.model_copy(update={"prompt_template": variant.record}) for spec in planned]
    return specs
