"""Output names: the ``OUTPUT_NAME`` template (``--name-template``) and the slugs that go into it.

A template is plain text with tokens, like A1111's and ComfyUI's ``filename_prefix``::

    {date}     the job's creation date, local time (``20261207``; ``{date:%Y-%m-%d}`` takes a strftime format)
    {time}     its creation time (``142501``; ``{time:%H-%M}`` likewise)
    {job}      the job id's first 8 hex digits
    {batch}    the batch id's first 8 hex digits (``none`` without a batch)
    {seed}     the seed the SD server used
    {model}    the model the SD server used (a slug; ``none`` for ``process`` jobs)
    {prompt}   a slug of the prompt (of the file name for ``process``)
    {row}      the batch file's line, else the job's position in its command (1, 2, ...)

and ``/`` for folders (``{date:%Y-%m-%d}/{prompt}-{seed}``). Names never leave ``OUTPUT_DIR``: a
template that is absolute, has a ``..``, ``.``, empty or hidden (``.x``) folder, a backslash, or
characters other than letters, digits, ``-``, ``_``, ``.``, space and ``/`` is refused.

A name is fixed when its job is created (:func:`expand_name`), so every delivery and retry of the
job agrees. ``{seed}`` with seed -1 and ``{model}`` are only known once the image exists: they stay
in the job's name as placeholders and :func:`resolve_late_tokens` fills them in at merge time from
what the SD server said (saved once with the image), the same for every delivery of the job.
"""

from __future__ import annotations

import re
import string
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.errors import InputError

__all__ = [
    "DEFAULT_NAME_TEMPLATE",
    "LATE_TOKENS",
    "NAME_TOKENS",
    "NameFields",
    "check_name_template",
    "check_output_name",
    "expand_name",
    "is_name_char",
    "resolve_late_tokens",
    "slugify",
]

#: The default ``OUTPUT_NAME``: ``20261207-142501-3f2a9c1b-a-lighthouse-at-dusk``.
DEFAULT_NAME_TEMPLATE = "{date}-{time}-{job}-{prompt}"
#: Every token a template may use.
NAME_TOKENS = ("date", "time", "job", "batch", "seed", "model", "prompt", "row")
#: Tokens that may only be known after generation: kept as ``{seed}`` / ``{model}`` until merge.
LATE_TOKENS = ("seed", "model")
#: Longest prompt (or model) slug, in characters.
SLUG_MAX_CHARS = 48
#: Longest folder or file name a template may produce, in UTF-8 bytes (file systems allow 255;
#: room is left for a ``-0001`` counter and the extension).
MAX_SEGMENT_BYTES = 200
#: The value of a token that has none (no batch, no model for a ``process`` job).
NO_VALUE = "none"

_DEFAULT_FORMATS = {"date": "%Y%m%d", "time": "%H%M%S"}
_SEPARATORS = "-_. "
_FORMATTER = string.Formatter()
_DASHES = re.compile(r"-{2,}")


@dataclass(frozen=True)
class NameFields:
    """What a job's name is made of, as known when the job is created."""

    created_at: float
    job_id: str
    prompt_label: str
    batch_id: str | None = None
    #: The seed asked for; -1 (random) is resolved at merge time.
    seed: int = -1
    row: int | None = None
    #: True for ``process`` jobs: no SD server, so ``{seed}`` and ``{model}`` are ``none`` at once.
    no_generation: bool = False


def is_name_char(char: str) -> bool:
    """Whether ``char`` may appear in a file name sdpipe writes: a letter or digit of any script (with
    its combining marks), ``-``, ``_``, ``.`` or a space (``/`` separates folders in templates only)."""
    return char.isalnum() or char in _SEPARATORS or unicodedata.category(char).startswith("M")


def slugify(text: str, max_chars: int = SLUG_MAX_CHARS) -> str:
    """A lowercase slug of ``text`` for file names: letters and digits of any script are kept, accents on
    Latin letters dropped, everything else becomes ``-`` (``"A lighthouse, dusk!"`` -> ``a-lighthouse-dusk``,
    ``"Café"`` -> ``cafe``, ``"東京の夜景"`` -> ``東京の夜景``); ``image`` when nothing is left."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept: list[str] = []
    for char in decomposed:
        if unicodedata.category(char).startswith("M"):
            # An accent on a Latin letter goes ("é" -> "e"); marks that are part of a script stay
            # (Japanese dakuten, Devanagari vowel signs), recomposed below.
            if kept and kept[-1].isascii():
                continue
            kept.append(char)
        elif char.isalnum():
            kept.append(char.lower())
        else:
            kept.append("-")
    slug = _DASHES.sub("-", unicodedata.normalize("NFC", "".join(kept))).strip("-")
    return slug[:max_chars].rstrip("-") or "image"


def check_name_template(template: str, *, field: str = "OUTPUT_NAME") -> str:
    """Check a naming template (see the module docstring) and return it.

    Raises:
        InputError: an unknown token, a format on a token other than date/time, a conversion
            (``!r``), a brace left open, a character not allowed, or a path leaving ``OUTPUT_DIR``.
    """

    def refuse(problem: str) -> InputError:
        return InputError(
            f"{field} {template!r}: {problem}",
            field=field,
            value=template,
            expected="tokens " + ", ".join("{" + token + "}" for token in NAME_TOKENS) + " and '/' between folders",
        )

    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise refuse(str(exc)) from None
    literal = ""
    for text, name, spec, conversion in parts:
        literal += text
        if name is None:
            continue
        if name not in NAME_TOKENS:
            raise refuse(f"unknown token {{{name}}}")
        if conversion is not None or (spec and name not in _DEFAULT_FORMATS):
            raise refuse(f"{{{name}}} takes no format")
        literal += "x"  # a token stands for a non-empty name part
    if not template.strip():
        raise refuse("is empty")
    bad = sorted({char for char in literal if not (is_name_char(char) or char == "/")})
    if bad:
        raise refuse(f"has characters that are not allowed ({''.join(bad)!r}; braces only around tokens)")
    _check_segments(literal, refuse)
    return template


def expand_name(template: str, fields: NameFields) -> str:
    """The job's output name (without extension) from ``template``; ``{seed}`` of a random seed and
    ``{model}`` of a generation stay as placeholders for :func:`resolve_late_tokens`.

    Raises:
        InputError: the template is invalid (:func:`check_name_template`).
    """
    check_name_template(template)
    local = time.localtime(fields.created_at)
    values = {
        "job": fields.job_id[:8],
        "batch": fields.batch_id[:8] if fields.batch_id else NO_VALUE,
        "prompt": slugify(fields.prompt_label),
        "row": str(fields.row) if fields.row is not None else NO_VALUE,
        "seed": str(fields.seed) if fields.seed >= 0 else (NO_VALUE if fields.no_generation else "{seed}"),
        "model": NO_VALUE if fields.no_generation else "{model}",
    }
    out = []
    for text, name, spec, _ in _FORMATTER.parse(template):
        out.append(text)
        if name in _DEFAULT_FORMATS:
            stamp = time.strftime(spec or _DEFAULT_FORMATS[name], local)
            out.append("".join(c if is_name_char(c) or c == "/" else "-" for c in stamp))
        elif name is not None:
            out.append(values[name])
    return "".join(out)


def resolve_late_tokens(name: str, *, seed: object, model: object) -> str:
    """``name`` with ``{seed}`` and ``{model}`` filled in from what the SD server said (``none`` if it
    did not say); the same answer for every delivery of a job, since that is saved once."""
    seed_text = str(seed) if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else NO_VALUE
    model_text = slugify(str(model)) if model else NO_VALUE
    return name.replace("{seed}", seed_text).replace("{model}", model_text)


def check_output_name(name: str) -> str:
    """Check a resolved output name stays inside ``OUTPUT_DIR`` (relative, no ``..`` or hidden folder).

    Raises:
        InputError: it would leave ``OUTPUT_DIR`` or a part of it is too long.
    """

    def refuse(problem: str) -> InputError:
        return InputError(f"output name {name!r} {problem}", field="name", value=name, expected="a relative name")

    if "\\" in name or "\0" in name or "{" in name or "}" in name:
        raise refuse("has characters that are not allowed")
    _check_segments(name, refuse)
    return name


def _check_segments(path: str, refuse: Callable[[str], InputError]) -> None:
    if path.startswith("/"):
        raise refuse("is absolute: names stay inside OUTPUT_DIR")
    for segment in path.split("/"):
        if not segment.strip() or segment.startswith(".") or segment in (".", ".."):
            raise refuse(f"has an empty, '.', '..' or hidden part ({segment!r}): names stay inside OUTPUT_DIR")
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise refuse(f"has a part longer than {MAX_SEGMENT_BYTES} bytes")
