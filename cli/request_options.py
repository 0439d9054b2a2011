"""The A1111 request flags ``generate``, ``batch`` and ``schedule add`` share (for ``batch`` and ``schedule
add`` they are defaults of every row): hires fix, styles, refiner, checkpoint, clip skip, variations,
any field (``--param``), an ``alwayson_scripts`` entry (``--script``) and a whole request (``--request``);
their prompt template and sweep flags; and the row defaults ``batch`` and ``schedule add`` take
(``--negative``, ``--seed``, ``--steps``, ... as defaults of every row).

Each flag is declared once, in an option group (:class:`RequestFlags`, :class:`TemplateFlags`,
:class:`RowDefaults`; see :mod:`cli.option_groups`) that each command takes as one parameter;
:func:`request_fields` turns the request flags into the keys of a batch row (A1111 names, plus
``model``), which every entry point then checks the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import (
    BandDefault,
    CfgDefault,
    CountDefault,
    FormatDefault,
    GridDefault,
    HeightDefault,
    NegativeDefault,
    QualityDefault,
    SamplerDefault,
    SchedulerDefault,
    SeedDefault,
    SigmaDefault,
    StepsDefault,
    WidthDefault,
)
from cli.option_groups import OptionGroup
from pipeline.batches.rows import A1111_NAMES
from pipeline.errors import InputError
from pipeline.jobs.planning import parse_overrides
from pipeline.models import Priority
from pipeline.prompts.sweeps import parse_sweeps

__all__ = [
    "ModelOption",
    "OverrideOption",
    "RequestFlags",
    "RowDefaults",
    "ScriptOption",
    "TemplateFlags",
    "apply_flags",
    "request_fields",
]

_PANEL = "A1111 request"
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", help="Checkpoint: title, model name or hash (sd_model_checkpoint).", rich_help_panel=_PANEL
    ),
]
OverrideOption = Annotated[
    list[str] | None,
    typer.Option(
        "--override", help="override_settings KEY=VALUE (repeatable; VALUE is JSON or text).", rich_help_panel=_PANEL
    ),
]
ScriptOption = Annotated[
    list[str] | None,
    typer.Option(
        "--script",
        help="An alwayson_scripts entry NAME=JSON or NAME=@file.json (repeatable); a list is its args.",
        rich_help_panel=_PANEL,
    ),
]


@dataclass(frozen=True)
class RequestFlags(OptionGroup):
    """The A1111 request flags of a command (``--request`` is ``request_file``)."""

    hires: Annotated[
        bool | None,
        typer.Option("--hires", help="Hires fix (enable_hr): a second pass at --hr-scale.", rich_help_panel=_PANEL),
    ] = None
    hr_scale: Annotated[
        float | None, typer.Option("--hr-scale", help="Hires scale (hr_scale), e.g. 2.", rich_help_panel=_PANEL)
    ] = None
    hr_upscaler: Annotated[
        str | None,
        typer.Option("--hr-upscaler", help="Hires upscaler (hr_upscaler), e.g. Latent.", rich_help_panel=_PANEL),
    ] = None
    hr_steps: Annotated[
        int | None,
        typer.Option("--hr-steps", help="Hires pass steps (hr_second_pass_steps).", rich_help_panel=_PANEL),
    ] = None
    denoise: Annotated[
        float | None,
        typer.Option("--denoise", help="Denoising strength of the hires pass.", rich_help_panel=_PANEL),
    ] = None
    styles: Annotated[
        list[str] | None, typer.Option("--styles", help="A saved style (repeatable).", rich_help_panel=_PANEL)
    ] = None
    refiner: Annotated[
        str | None,
        typer.Option("--refiner", help="Refiner checkpoint (refiner_checkpoint).", rich_help_panel=_PANEL),
    ] = None
    refiner_switch_at: Annotated[
        float | None,
        typer.Option("--refiner-switch-at", help="Fraction of steps before the refiner.", rich_help_panel=_PANEL),
    ] = None
    model: ModelOption = None
    clip_skip: Annotated[
        int | None,
        typer.Option("--clip-skip", help="Clip skip (CLIP_stop_at_last_layers).", rich_help_panel=_PANEL),
    ] = None
    subseed: Annotated[int | None, typer.Option("--subseed", help="Variation seed.", rich_help_panel=_PANEL)] = None
    subseed_strength: Annotated[
        float | None,
        typer.Option("--subseed-strength", help="Variation strength, 0 to 1.", rich_help_panel=_PANEL),
    ] = None
    override: OverrideOption = None
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", help="Any A1111 txt2img field KEY=JSON (repeatable), e.g. tiling=true.", rich_help_panel=_PANEL
        ),
    ] = None
    script: ScriptOption = None
    request_file: Annotated[
        Path | None,
        typer.Option(
            "--request", help="An A1111 txt2img request body (JSON file); flags override it.", rich_help_panel=_PANEL
        ),
    ] = None

    def fields(self) -> dict[str, Any]:
        """The flags given as the keys of a batch row (see :func:`request_fields`).

        Raises:
            InputError: as :func:`request_fields`.
        """
        values = self.values()
        return request_fields(request=values.pop("request_file"), **values)


_TEMPLATES = "Prompt templates and sweeps"


@dataclass(frozen=True)
class TemplateFlags(OptionGroup):
    """The prompt template and sweep flags of a command."""

    template: Annotated[
        bool | None,
        typer.Option(
            "--template/--no-template",
            help="Expand {a|b} variants and __wildcards__ (WILDCARDS_DIR) in prompts (a row's template key wins).",
            rich_help_panel=_TEMPLATES,
        ),
    ] = None
    combinatorial: Annotated[
        bool,
        typer.Option(
            "--combinatorial", help="Every combination of a template (implies --template).", rich_help_panel=_TEMPLATES
        ),
    ] = False
    max_prompts: Annotated[
        int | None,
        typer.Option(
            "--max-prompts",
            min=1,
            help="Most prompts a template may make (default MAX_PROMPTS).",
            rich_help_panel=_TEMPLATES,
        ),
    ] = None
    template_seed: Annotated[
        int | None,
        typer.Option(
            "--template-seed",
            min=0,
            help="Seed of random template picks: the same prompts each run (implies --template).",
            rich_help_panel=_TEMPLATES,
        ),
    ] = None
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            "--sweep",
            help="Render every value of a field: KEY=V1,V2 (repeatable; any request field), e.g. cfg_scale=5,7,9.",
            rich_help_panel=_TEMPLATES,
        ),
    ] = None
    contact_sheet: Annotated[
        bool,
        typer.Option(
            "--contact-sheet",
            help="After a sweep batch completes, write one labelled X/Y contact sheet beside the results.",
            rich_help_panel=_TEMPLATES,
        ),
    ] = False

    def fields(self) -> dict[str, Any]:
        """The flags given as keys of a batch row (see pipeline.batches.expansion).

        Raises:
            InputError: a malformed ``--sweep``, or ``--contact-sheet`` without one.
        """
        fields: dict[str, Any] = {}
        if self.template is not None:
            fields["template"] = self.template
        if self.combinatorial:
            fields["combinatorial"] = True
        if self.max_prompts is not None:
            fields["max_prompts"] = self.max_prompts
        if self.template_seed is not None:
            fields["template_seed"] = self.template_seed
        if self.sweep:
            fields["sweep"] = parse_sweeps(self.sweep)
        if self.contact_sheet:
            if not self.sweep:
                raise InputError("--contact-sheet needs a --sweep (its X and Y axes)", field="--contact-sheet")
            fields["contact_sheet"] = True
        return fields


@dataclass(frozen=True)
class RowDefaults(OptionGroup):
    """The generation flags of ``batch`` and ``schedule add``: defaults of every row (a row's own keys win)."""

    negative: NegativeDefault = None
    seed: SeedDefault = None
    steps: StepsDefault = None
    cfg: CfgDefault = None
    width: WidthDefault = None
    height: HeightDefault = None
    sampler: SamplerDefault = None
    scheduler: SchedulerDefault = None
    count: CountDefault = None
    grid: GridDefault = None
    band_px: BandDefault = None
    sigma: SigmaDefault = None
    output_format: FormatDefault = None
    quality: QualityDefault = None

    def over(self, fields: dict[str, Any], *, priority: Priority | None) -> dict[str, Any]:
        """A batch's defaults: ``fields`` (the other groups' row keys) with these flags and ``priority`` on top."""
        flags = {"format" if name == "output_format" else name: value for name, value in self.values().items()}
        return apply_flags(fields, **flags, priority=priority)


def _read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}", field=what, value=str(path)) from exc
    except ValueError as exc:
        raise InputError(f"{what} {path} is not JSON: {exc}", field=what, value=str(path)) from exc


def _params(items: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--param {item!r} is not KEY=JSON", field="--param", value=item, expected="KEY=JSON")
        try:
            fields[key.strip()] = json.loads(raw)
        except ValueError:
            fields[key.strip()] = raw  # plain text, e.g. --param hr_upscaler=Latent
    return fields


def _scripts(items: list[str]) -> dict[str, Any]:
    scripts: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--script {item!r} is not NAME=JSON or NAME=@file.json", field="--script", value=item)
        value = _read_json_file(Path(raw[1:]), "--script file") if raw.startswith("@") else None
        if value is None:
            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise InputError(f"--script {name}: not JSON ({exc})", field="--script", value=item) from exc
        if isinstance(value, list):
            value = {"args": value}
        if not isinstance(value, dict):
            raise InputError(
                f'--script {name}: expected an object {{"args": [...]}} or a list of args',
                field="--script",
                value=item,
                expected='{"args": [...]}',
            )
        scripts[name.strip()] = value
    return scripts


def request_fields(
    *,
    request: Path | None = None,
    hires: bool | None = None,
    hr_scale: float | None = None,
    hr_upscaler: str | None = None,
    hr_steps: int | None = None,
    denoise: float | None = None,
    styles: list[str] | None = None,
    refiner: str | None = None,
    refiner_switch_at: float | None = None,
    model: str | None = None,
    clip_skip: int | None = None,
    subseed: int | None = None,
    subseed_strength: float | None = None,
    override: list[str] | None = None,
    param: list[str] | None = None,
    script: list[str] | None = None,
) -> dict[str, Any]:
    """The flags as the keys of a batch row: ``--request``'s body first, then ``--param``, then each flag.

    Raises:
        InputError: an unreadable ``--request`` or ``--script`` file, a malformed ``--param``/``--script``.
    """
    fields: dict[str, Any] = {}
    if request is not None:
        body = _read_json_file(request, "--request")
        if not isinstance(body, dict):
            raise InputError(f"--request {request}: expected a JSON object (an A1111 txt2img body)", field="--request")
        fields.update(body)
    fields.update(_params(param or []))
    flags = {
        "enable_hr": hires,
        "hr_scale": hr_scale,
        "hr_upscaler": hr_upscaler,
        "hr_second_pass_steps": hr_steps,
        "denoising_strength": denoise,
        "styles": styles or None,
        "refiner_checkpoint": refiner,
        "refiner_switch_at": refiner_switch_at,
        "model": model,
        "subseed": subseed,
        "subseed_strength": subseed_strength,
    }
    fields.update({key: value for key, value in flags.items() if value is not None})
    overrides = dict(parse_overrides(override or []) or {})
    if clip_skip is not None:
        overrides["CLIP_stop_at_last_layers"] = clip_skip
    if overrides:
        fields["override_settings"] = {**(fields.get("override_settings") or {}), **overrides}
    scripts = _scripts(script or [])
    if scripts:
        fields["alwayson_scripts"] = {**(fields.get("alwayson_scripts") or {}), **scripts}
    return fields


def apply_flags(fields: dict[str, Any], **flags: Any) -> dict[str, Any]:
    """``fields`` (a row, a ``--request`` body) with the flags given (not None) on top, under sdpipe's names."""
    merged = dict(fields)
    for key, value in flags.items():
        if value is None:
            continue
        for a1111, own in A1111_NAMES.items():
            if own == key:
                merged.pop(a1111, None)  # --negative wins over the body's negative_prompt
        merged[key] = value
    return merged
