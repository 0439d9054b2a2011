"""Reading a batch file for ``sdpipe batch FILE``: every row checked and planned before anything is enqueued.

A row becomes ``count`` job specs through :func:`pipeline.jobs.planning.plan_generate`, the same path as
``sdpipe generate``, so a batch row and a ``generate`` call with the same values make the same jobs
(and fingerprints). Values come from, lowest first: the settings, the command-line defaults, the
file's own ``defaults`` (YAML), the row (a schedule's flags come after the file's ``defaults``). A
bad row does not stop the reading: every problem of every row is collected and raised at once as
:class:`BatchFileError`, and no row is returned.

The formats themselves (``.txt``, ``.jsonl``, ``.csv``, ``.yaml``) are parsed in
:mod:`pipeline.batches.formats`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from pipeline.batches.expansion import RowVariant, batch_template_seed, row_variants, split_template_keys
from pipeline.batches.formats import RowProblem, parse_batch_file
from pipeline.batches.rows import ROW_KEYS, FieldIssue, check_row, generation_request
from pipeline.errors import BatchFileError, InputError
from pipeline.jobs.naming import check_name_template, is_name_char
from pipeline.jobs.planning import RequestChecker, build_step_params, plan_generate
from pipeline.models import PRIORITIES, GenerationParams, JobSpec, StepParams, parse_grid
from pipeline.settings import OutputFormat, Settings
from pipeline.upscale.planning import with_row_upscale

__all__ = [
    "MAX_ROW_COUNT",
    "ROW_KEYS",
    "BatchFileError",
    "PlannedRow",
    "RowProblem",
    "describe_plan",
    "read_batch_file",
]

#: Most jobs one row may ask for with ``count``.
MAX_ROW_COUNT = 1000

_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
#: GenerationParams fields and the row key that sets each.
_PARAM_KEYS = {
    "prompt": "prompt",
    "negative_prompt": "negative",
    "seed": "seed",
    "steps": "steps",
    "cfg_scale": "cfg",
    "width": "width",
    "height": "height",
    "sampler_name": "sampler",
    "scheduler": "scheduler",
}
#: The row key of a GenerationParams field named by an InputError's ``field``.
_ROW_KEY_OF = {"sampler_name": "sampler", "sd_model_checkpoint": "model", "cfg_scale": "cfg"}
#: Fields of the InputErrors of the request checks (the server's lists, the hires size), by field.
_REQUEST_CHECK_FIELDS = frozenset({"sampler_name", "scheduler", "sd_model_checkpoint", "hr_scale"})
#: Words in an InputError from plan_generate / build_step_params and the row key they are about;
#: the earliest one in the message wins. "size" stands for width or height (MAX_PIXELS).
_MESSAGE_KEYS = (
    ("output name", "name"),
    ("prompt", "prompt"),
    ("seed", "seed"),
    ("count", "count"),
    ("width", "width"),
    ("height", "height"),
    ("MAX_PIXELS", "size"),
    ("grid", "grid"),
    ("band_px", "band_px"),
    ("sigma", "sigma"),
    ("quality", "quality"),
    ("image is", "size"),
)
#: Messages about a combination of values (size x grid x band, size vs MAX_PIXELS), not one value.
_COMBINATION_WORDS = ("MAX_PIXELS", "tile", "image is")


@dataclass(frozen=True)
class PlannedRow:
    """One valid row and the jobs it becomes."""

    #: 1-based line in the file.
    line: int
    #: Every parameter in effect for the row (settings and defaults applied), JSON-able.
    params: dict[str, Any]
    #: ``count`` job specs, seeds ``seed … seed+count-1``, from :func:`plan_generate`.
    specs: list[JobSpec]


def read_batch_file(
    path: Path,
    settings: Settings,
    *,
    defaults: Mapping[str, Any],
    batch_id: str,
    now: float,
    output_dir: str | Path | None = None,
    backend_url: str | None = None,
    name_template: str | None = None,
    overwrite: bool = False,
    checker: RequestChecker | None = None,
    defaults_over_file: bool = False,
) -> list[PlannedRow]:
    """Read, check and plan every row of ``path``; return them in file order.

    ``defaults`` (keys of a :class:`~pipeline.batches.rows.JobRow`; None means unset) are the
    command-line values; the file's own ``defaults`` and then each row override them
    (``defaults_over_file``, a schedule's flags: the file's defaults, then the flags, then each row).
    ``batch_id``, ``now``, ``output_dir`` and ``backend_url`` go into every job spec as in
    :func:`plan_generate`, and so do ``name_template`` (``{row}`` is the row's line) and
    ``overwrite``. ``checker`` checks field names, the checkpoint, sampler and scheduler against
    the SD server.

    Raises:
        InputError: the file is missing, a folder, of an unknown type, unreadable, not UTF-8, empty or
            malformed as a whole; or ``defaults`` holds a bad value.
        BatchFileError: one or more rows are invalid; every problem is listed.
    """
    known_fields = checker.known_fields() if checker is not None else None
    parsed = parse_batch_file(path, known_fields=known_fields)
    if name_template is not None:
        check_name_template(name_template, field="--name-template")
    planner = _Planner(
        settings,
        batch_id=batch_id,
        now=now,
        output_dir=output_dir,
        backend_url=backend_url,
        name_template=name_template,
        overwrite=overwrite,
        checker=checker,
    )

    template_options, defaults = split_template_keys(defaults)
    base, issues = planner.check_defaults(defaults, text_values=True)
    if issues:
        field, message, _ = issues[0]
        raise InputError(f"default {field}: {message}", field=f"defaults.{field}")
    problems: list[RowProblem] = []
    if parsed.defaults:
        file_options, file_raw = split_template_keys(parsed.defaults)
        template_options.update(file_options)
        file_defaults, issues = planner.check_defaults(file_raw, text_values=False)
        lines = parsed.default_lines
        problems.extend(RowProblem(lines.get(i.field, lines.get(None, 1)), i.field, i.message) for i in issues)
        # batch: the file's defaults over the flags; a schedule's flags (defaults_over_file) over the file's
        base = {**base, **file_defaults} if not defaults_over_file else {**file_defaults, **base}

    planned: list[PlannedRow] = []
    used_names: dict[str, int] = {}  # output name (casefolded) -> line that writes it
    seen_rows = 0
    for raw in parsed.rows:
        seen_rows += 1
        if isinstance(raw, RowProblem):
            problems.append(raw)
            continue
        try:
            row_options, row_raw = split_template_keys(raw.values)
        except InputError as exc:
            raise InputError(f"line {raw.line}: {exc.message}", field=exc.field) from exc
        own, issues = check_row(
            row_raw, text_values=parsed.text_values, known_fields=known_fields, check_keys=not parsed.text_values
        )
        values = {**base, **own}
        if "prompt" not in values and not any(issue.field == "prompt" for issue in issues):
            issues.append(FieldIssue("prompt", "no prompt given"))
        variants = [RowVariant(values, None)]
        if not issues:
            try:  # a template that cannot expand stops the reading: one line, nothing planned
                variants = row_variants(
                    values,
                    {**template_options, **row_options},
                    wildcards_dir=settings.wildcards_dir,
                    max_prompts=settings.max_prompts,
                    known_fields=known_fields,
                    default_seed=batch_template_seed(batch_id, raw.line),
                )
            except InputError as exc:
                raise InputError(f"line {raw.line}: {exc.message}", field=exc.field, limit=exc.limit) from exc
        for variant in variants:
            outcome = planner.plan(variant.values, line=raw.line)
            if isinstance(outcome, list):
                issues.extend(outcome)
                continue
            issues.extend(_claim_names(outcome, raw.line, used_names))
            if not issues and not problems:  # after the first problem, rows are checked, not kept
                params, specs = outcome
                if variant.record is not None:
                    params = {**params, **variant.record}
                    specs = [spec.model_copy(update={"prompt_template": variant.record}) for spec in specs]
                planned.append(PlannedRow(line=raw.line, params=params, specs=specs))
        problems.extend(RowProblem(raw.line, issue.field, issue.message) for issue in _unique(issues))
    if not seen_rows:
        raise InputError(
            f"{path.name} has no rows",
            field="rows",
            limit=1,
            expected=_EMPTY_EXPECTED.get(path.suffix.lower(), "some rows"),
        )
    if problems:
        problems.sort(key=lambda problem: problem.line)
        raise BatchFileError(path.name, problems)
    return planned


#: What an empty batch file of each kind should hold.
_EMPTY_EXPECTED = {
    ".txt": "one prompt per line",
    ".jsonl": 'one JSON object per line, e.g. {"prompt": "a lighthouse at dusk"}',
    ".csv": "a header row (e.g. prompt,seed) and one row per job",
    ".yaml": "a list of jobs, e.g. - prompt: a lighthouse at dusk",
    ".yml": "a list of jobs, e.g. - prompt: a lighthouse at dusk",
}


def describe_plan(rows: Sequence[PlannedRow]) -> list[dict[str, Any]]:
    """One JSON-able summary per row for ``--dry-run``: its settings, seeds and output names."""
    summaries = []
    for row in rows:
        params = row.params
        summaries.append(
            {
                "line": row.line,
                "prompt": params["prompt"],
                "count": len(row.specs),
                "seeds": [spec.generation.seed for spec in row.specs if spec.generation is not None],
                "size": f"{params['width']}x{params['height']}",
                **{key: params[key] for key in ("steps", "cfg", "sampler", "scheduler", "grid", "band_px", "sigma")},
                "format": params["format"],
                "names": [spec.output_name for spec in row.specs],
            }
        )
    return summaries


def _clean_name(name: str) -> str:
    """A row's ``name`` as a plain file name: odd characters become ``-``; leaving OUTPUT_DIR is refused.

    Raises:
        ValueError: empty, or a path (``/``, ``\\``, a leading ``.``, hence ``..``).
    """
    text = name.strip()
    if not text:
        raise ValueError("is empty")
    if "/" in text or "\\" in text or text.startswith("."):
        raise ValueError(f"name {name!r} would leave OUTPUT_DIR")
    # Letters of every script are kept (pipeline.jobs.naming.is_name_char); each run of others becomes "-".
    kept: list[str] = []
    for char in unicodedata.normalize("NFC", text):
        if is_name_char(char):
            kept.append(char)
        elif not kept or kept[-1] != "\0":
            kept.append("\0")
    return "".join(kept).replace("\0", "-")


def _claim_names(outcome: tuple[dict[str, Any], list[JobSpec]], line: int, used: dict[str, int]) -> list[FieldIssue]:
    """Register a row's chosen output names; a name an earlier row writes is a problem of this row."""
    params, specs = outcome
    if params["name"] is None:
        return []  # default names hold the job id: never shared
    issues = []
    for spec in specs:
        key = spec.output_name.casefold()  # case-insensitive file systems would merge them
        if key in used:
            issues.append(
                FieldIssue("name", f"output name {spec.output_name!r} is also written by line {used[key]}", False)
            )
        else:
            used[key] = line
    return issues


def _unique(issues: list[FieldIssue]) -> list[FieldIssue]:
    seen: set[tuple[str | None, str]] = set()
    unique = []
    for issue in issues:
        if (issue.field, issue.message) not in seen:
            seen.add((issue.field, issue.message))
            unique.append(issue)
    return unique


class _Planner:
    """Plans one merged row at a time; step parameters are cached (most rows share them)."""

    def __init__(
        self,
        settings: Settings,
        *,
        batch_id: str,
        now: float,
        output_dir: str | Path | None,
        backend_url: str | None,
        name_template: str | None = None,
        overwrite: bool = False,
        checker: RequestChecker | None = None,
    ) -> None:
        self.name_template = name_template
        self.overwrite = overwrite
        self.settings = settings
        self.checker = checker
        self.batch_id = batch_id
        self.now = now
        self.output_dir = output_dir
        self.backend_url = backend_url
        self._steps: dict[tuple[Any, Any, Any], StepParams | list[FieldIssue]] = {}

    def check_defaults(self, raw: Mapping[Any, Any], *, text_values: bool) -> tuple[dict[str, Any], list[FieldIssue]]:
        """A defaults mapping checked on its own (against the settings), bad values dropped.

        Only problems of one value are reported here (steps 900, format gif...); combinations that
        depend on a row (grid vs that row's size) are left to the rows.
        """
        known = self.checker.known_fields() if self.checker is not None else None
        values, issues = check_row(raw, text_values=text_values, known_fields=known, json_text=False)
        for _ in ROW_KEYS:  # each round drops at least one value
            probe = {"prompt": "defaults", **values}
            if isinstance(probe.get("count"), int) and 1 <= probe["count"] <= MAX_ROW_COUNT:
                probe["count"] = 1
            outcome = self.plan(probe)
            bad = (
                [issue for issue in outcome if issue.local and issue.field in values]
                if isinstance(outcome, list)
                else []
            )
            if not bad:
                break
            issues.extend(bad)
            for issue in bad:
                values.pop(str(issue.field), None)
        return values, issues

    def plan(
        self, values: Mapping[str, Any], *, line: int | None = None
    ) -> tuple[dict[str, Any], list[JobSpec]] | list[FieldIssue]:
        """The row's parameters and job specs, or everything found wrong with it."""
        issues: list[FieldIssue] = []
        count = values.get("count", 1)
        if not 1 <= count <= MAX_ROW_COUNT:
            issues.append(FieldIssue("count", f"must be between 1 and {MAX_ROW_COUNT} (got {count})"))
            count = 1
        output_format: OutputFormat | None = None
        if "format" in values:
            wanted = values["format"].strip().lower()
            wanted = "jpeg" if wanted == "jpg" else wanted
            if wanted in _FORMATS:
                output_format = wanted
            else:
                issues.append(FieldIssue("format", f"must be png, webp or jpeg (got {values['format']!r})"))
        name = None
        if "name" in values:
            try:
                name = _clean_name(values["name"])
            except ValueError as exc:
                issues.append(FieldIssue("name", str(exc)))
        for key in ("sampler", "scheduler"):
            if key in values and not values[key].strip():
                issues.append(FieldIssue(key, "is empty"))
        step_params = self._step_params(values.get("grid"), values.get("band_px"), values.get("sigma"))
        steps_ok = isinstance(step_params, StepParams)
        if not isinstance(step_params, StepParams):
            issues.extend(step_params)
            step_params = self._step_params(None, None, None)  # check the rest against the settings' own
            if not isinstance(step_params, StepParams):
                return issues
        extra = {key: value for key, value in values.items() if key not in ROW_KEYS}
        # Check every generation field at once (plan_generate stops at its first problem).
        draft = {
            **extra,
            "prompt": "-",
            "seed": values.get("seed", -1),
            "steps": values.get("steps", self.settings.steps),
            "cfg_scale": values.get("cfg", self.settings.cfg_scale),
            "width": values.get("width", self.settings.width),
            "height": values.get("height", self.settings.height),
            "sampler_name": values.get("sampler", self.settings.sampler),
            "scheduler": values.get("scheduler", self.settings.scheduler),
        }
        try:
            GenerationParams.model_validate(draft)
        except ValidationError as exc:
            issues.extend(_pydantic_issue(error) for error in exc.errors(include_url=False))
        request = generation_request({"prompt": "-", **values})
        try:
            specs = plan_generate(
                self.settings,
                request,
                step_params,
                count=count,
                output_format=output_format,
                quality=values.get("quality"),
                name=name,
                name_template=self.name_template,
                row=line,
                overwrite=self.overwrite,
                batch_id=self.batch_id,
                output_dir=self.output_dir,
                backend_url=self.backend_url,
                checker=self.checker,
                now=self.now,
            )
        except InputError as exc:
            known = {issue.field for issue in issues}
            more = [
                issue for issue in _issues_from(exc, values) if (steps_ok or issue.local) and issue.field not in known
            ]
            return issues + more
        try:
            specs = with_row_upscale(self.settings, specs, values, self.checker)
        except InputError as exc:
            issues.append(FieldIssue(exc.field or "upscale", exc.message))
        priority = values.get("priority")
        if priority is not None:
            if priority not in PRIORITIES:
                issues.append(FieldIssue("priority", f"must be high, normal or low (got {priority!r})"))
            else:
                specs = [spec.model_copy(update={"priority": priority}) for spec in specs]
        if issues:
            return issues
        generation = specs[0].generation
        assert generation is not None
        upscale = specs[0].upscale
        params = {
            "prompt": generation.prompt,
            "negative": generation.negative_prompt,
            "seed": generation.seed,
            "steps": generation.steps,
            "cfg": generation.cfg_scale,
            "width": generation.width,
            "height": generation.height,
            "sampler": generation.sampler_name,
            "scheduler": generation.scheduler,
            "count": count,
            "grid": step_params.grid,
            "band_px": step_params.band_px,
            "sigma": step_params.sigma,
            "format": specs[0].output_format,
            "quality": specs[0].output_quality,
            "name": name,
            "model": values.get("model"),
            **extra,
        }
        params |= {
            "upscale": upscale.scale if upscale else None,
            "upscale_denoise": upscale.denoise if upscale else None,
            "upscaler": upscale.upscaler if upscale else None,
            "upscale_tile": upscale.tile_px if upscale else None,
            "upscale_overlap": upscale.overlap_px if upscale else None,
            "upscale_seam_fix": upscale.seam_fix if upscale else None,
            "upscale_vary_seed": upscale.vary_seed if upscale else None,
        }
        params["priority"] = priority  # every row key, None when not set (as the upscale keys)
        return params, specs

    def _step_params(self, grid: str | None, band_px: int | None, sigma: float | None) -> StepParams | list[FieldIssue]:
        key = (grid, band_px, sigma)
        cached = self._steps.get(key)
        if cached is None:
            try:
                cached = build_step_params(self.settings, grid=grid, band_px=band_px, sigma=sigma)
            except InputError:
                cached = self._step_issues(grid, band_px, sigma)
            if len(self._steps) < 4096:
                self._steps[key] = cached
        return cached

    def _step_issues(self, grid: str | None, band_px: int | None, sigma: float | None) -> list[FieldIssue]:
        """Which of grid, band_px and sigma is wrong (each checked alone, the others from the settings)."""
        issues = []
        if grid is not None:
            try:
                parse_grid(grid)
            except InputError as exc:
                issues.append(FieldIssue("grid", _tidy("grid", exc.message)))
        for key, band, sig in (("band_px", band_px, None), ("sigma", None, sigma)):
            try:
                build_step_params(self.settings, grid=None, band_px=band, sigma=sig)
            except InputError as exc:
                field = _field_of(exc.message) or key
                issues.append(FieldIssue(field, _tidy(field, exc.message)))
        return issues or [FieldIssue(None, "invalid grid, band_px or sigma")]


def _issues_from(exc: InputError, values: Mapping[str, Any]) -> list[FieldIssue]:
    """Attribute an InputError of plan_generate to the row key it is about."""
    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        return [_pydantic_issue(error) for error in cause.errors(include_url=False)]
    if exc.field in _REQUEST_CHECK_FIELDS or exc.message.startswith("unknown field"):
        checked = str(exc.field)
        return [FieldIssue(_ROW_KEY_OF.get(checked, checked), exc.message, checked != "hr_scale")]
    field = _field_of(exc.message)
    if field == "size":
        field = "height" if "height" in values and "width" not in values else "width"
    local = not any(word in exc.message for word in _COMBINATION_WORDS)
    return [FieldIssue(field, _tidy(field, exc.message), local)]


def _pydantic_issue(error: Any) -> FieldIssue:
    loc = str(error["loc"][0]) if error.get("loc") else ""
    field = _PARAM_KEYS.get(loc, loc or None)
    got = error.get("input")
    shown = repr(got) if isinstance(got, str) else got
    info = GenerationParams.model_fields.get(loc)
    bounds = {
        name: getattr(meta, name)
        for meta in (info.metadata if info else [])
        for name in ("ge", "le", "gt", "lt")
        if hasattr(meta, name)
    }
    if "ge" in bounds and "le" in bounds:
        message = f"must be between {bounds['ge']} and {bounds['le']} (got {shown})"
    elif "ge" in bounds and error.get("type") == "greater_than_equal":
        unit = " pixels" if field in ("width", "height") else ""
        message = f"must be at least {bounds['ge']}{unit} (got {shown})"
    else:
        message = f"{str(error.get('msg', 'invalid')).removeprefix('Value error, ')} (got {shown})"
    return FieldIssue(field, message)


def _field_of(message: str) -> str | None:
    found = [(message.find(word), field) for word, field in _MESSAGE_KEYS if word in message]
    return min(found)[1] if found else None


def _tidy(field: str | None, message: str) -> str:
    """``steps must be …`` -> ``must be …`` (the field is printed in front of it already)."""
    if field and message.startswith(f"{field} must"):
        return message[len(field) + 1 :]
    return message
