"""A1111 infotext: the ``parameters`` text that AUTOMATIC1111 writes into its images.

Layout (A1111 v1.10 ``create_infotext``)::

    <prompt, possibly several lines>
    Negative prompt: <negative prompt>            (omitted when the negative prompt is empty)
    Steps: 20, Sampler: Euler, CFG scale: 7.0, Seed: 1234, Size: 512x512, Version: v1.10.1

:func:`parse_infotext` ports A1111's ``parse_generation_parameters``: the last line is the params
line only when it holds at least 3 ``key: value`` matches, otherwise it is prompt text. Unlike A1111,
values stay strings and none of A1111's UI defaults (``Clip skip: 1``, ``Hires ...``, ``RNG``,
``Schedule type``, ...) are filled in, and prompt styles are not extracted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping

__all__ = [
    "MIN_PARAMS_PER_LINE",
    "build_infotext",
    "format_value",
    "insert_params",
    "parse_infotext",
]

#: A1111 reads the last line as the params line only if it holds at least this many pairs.
MIN_PARAMS_PER_LINE = 3

#: A1111's ``re_param``: a key, ``:``, then a JSON-quoted string or everything up to the next comma.
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
#: Keys we write ourselves: A1111's key pattern restricted to ASCII, no surrounding spaces.
_RE_OUR_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9 _/-]*[A-Za-z0-9_/-]")
_NEGATIVE_PREFIX = "Negative prompt:"
_VERSION_KEY = "Version"


def format_value(value: object) -> str:
    """``str(value)``, JSON-quoted (non-ASCII kept) when it contains ``,``, ``:`` or a newline.

    A1111's ``quote`` JSON-dumps the original object; we dump its ``str()`` so every value parses
    back as one string (identical for strings, ints, floats and bools).
    """
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object | None]) -> str:
    """The infotext A1111 would write: prompt, optional ``Negative prompt:`` line, params line.

    Params with a None value are left out; a param whose value equals its key is written bare.
    """
    params_line = _format_params(params)
    negative = f"\n{_NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{params_line}".strip()


def parse_infotext(text: str) -> dict[str, str]:
    """Parse an infotext the way A1111 v1.10 does.

    Returns:
        ``Prompt`` and ``Negative prompt`` (possibly empty) plus every ``key: value`` of the params
        line, as strings; quoted values are JSON-decoded, ``WxH`` values become ``<key>-1`` and
        ``<key>-2``, and pairs with an empty value are dropped (A1111 fails on them and skips them).
    """
    *lines, last_line = text.strip().split("\n")
    if len(_RE_PARAM.findall(last_line)) < MIN_PARAMS_PER_LINE:
        lines.append(last_line)
        last_line = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    done_with_prompt = False
    for raw in lines:
        line = raw.strip()
        if line.startswith(_NEGATIVE_PREFIX):
            done_with_prompt = True
            line = line[len(_NEGATIVE_PREFIX) :].strip()
        (negative_lines if done_with_prompt else prompt_lines).append(line)

    result = {"Prompt": _join_lines(prompt_lines), "Negative prompt": _join_lines(negative_lines)}
    for key, value in _RE_PARAM.findall(last_line):
        if not value:
            continue
        if value[0] == '"' and value[-1] == '"':
            value = _unquote(value)
        size = _RE_IMAGE_SIZE.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size[1], size[2]
        else:
            result[key] = value
    return result


def insert_params(text: str | None, extra: Mapping[str, object], *, drop: Collection[str] = ()) -> str:
    """Add or replace ``extra`` keys in the params line of ``text``, new keys going before ``Version``;
    the pairs of the keys in ``drop`` (and not in ``extra``) are removed first.

    Existing pairs keep their text and position; a key already present gets its value replaced in
    place. New keys go just before ``Version`` (A1111 keeps ``Version`` last), or at the end. When
    ``text`` is None/empty or has no params line, a params line made of ``extra`` alone is appended;
    A1111 only recognises it when it holds at least :data:`MIN_PARAMS_PER_LINE` pairs. None values
    are skipped.

    Raises:
        ValueError: a key is not made of ``[A-Za-z0-9 _/-]`` (at least 2 characters, no edge spaces).
    """
    pairs = {key: value for key, value in extra.items() if value is not None}
    for key in pairs:
        if not _RE_OUR_KEY.fullmatch(key):
            raise ValueError(f"infotext key {key!r} must be made of [A-Za-z0-9 _/-] without edge spaces")
    stripped = (text or "").strip()
    if not stripped:
        return _format_params(pairs)
    *lines, last_line = stripped.split("\n")
    if len(_RE_PARAM.findall(last_line)) < MIN_PARAMS_PER_LINE:
        return f"{stripped}\n{_format_params(pairs)}" if pairs else stripped
    last_line = last_line.rstrip(", \t\r")  # so that new pairs can simply be appended
    gone = [m for m in _RE_PARAM.finditer(last_line) if m[1] in drop and m[1] not in pairs]
    for m in reversed(gone):  # a pair with its comma (the last one's: the comma before it, stripped below)
        last_line = last_line[: m.start()] + last_line[m.end() :]
    last_line = last_line.strip(", \t\r")
    matches = list(_RE_PARAM.finditer(last_line))

    # Edit the line by spans so that bare flags and spacing between the pairs survive untouched.
    edits: list[tuple[int, int, str]] = []
    present = {m[1] for m in matches}
    for m in matches:
        if m[1] in pairs:
            edits.append((m.start(1), m.end(2), _format_pair(m[1], pairs[m[1]])))
    new_pairs = {key: value for key, value in pairs.items() if key not in present}
    if new_pairs:
        version = next((m for m in matches if m[1] == _VERSION_KEY), None)
        if version is not None:
            edits.append((version.start(1), version.start(1), _format_params(new_pairs) + ", "))
        else:
            edits.append((len(last_line), len(last_line), ", " + _format_params(new_pairs)))
    for start, end, replacement in sorted(edits, reverse=True):
        last_line = last_line[:start] + replacement + last_line[end:]
    return "\n".join([*lines, last_line])


def _format_pair(key: str, value: object) -> str:
    return key if key == value else f"{key}: {format_value(value)}"


def _format_params(params: Mapping[str, object | None]) -> str:
    return ", ".join(_format_pair(key, value) for key, value in params.items() if value is not None)


def _join_lines(lines: list[str]) -> str:
    # A1111 appends with "\n" only once the text is non-empty, so leading empty lines vanish.
    joined = ""
    for line in lines:
        joined += ("" if joined == "" else "\n") + line
    return joined


def _unquote(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text
