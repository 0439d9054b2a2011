"""Parsing batch files (``.txt``, ``.jsonl``, ``.csv``, ``.yaml``/``.yml``) into rows with line numbers.

Each row comes out as the mapping of keys it wrote (or as a :class:`RowProblem` when the row as a
whole is unreadable); :func:`pipeline.batches.rows.check_row` then checks its keys and the types of its values.
:mod:`pipeline.batches.files` merges defaults, checks ranges and plans the jobs. Text, JSON lines and
CSV are read lazily, so a large file is never held as a list of rows.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.batches.rows import ROW_KEYS, FieldIssue, check_row, describe_value, key_problem, unknown_key
from pipeline.errors import InputError

__all__ = [
    "BATCH_EXTENSIONS",
    "ROW_KEYS",
    "FieldIssue",
    "ParsedFile",
    "RawRow",
    "RowProblem",
    "check_row",
    "describe_value",
    "parse_batch_file",
    "unknown_key",
]

#: File extensions sdpipe reads as batch files.
BATCH_EXTENSIONS = (".txt", ".jsonl", ".csv", ".yaml", ".yml")
_EXTENSIONS_TEXT = ".txt, .jsonl, .csv, .yaml or .yml"
#: The C loader is PyYAML's SafeLoader compiled (same safe constructors); the Python one otherwise.
_Loader = yaml.SafeLoader | yaml.CSafeLoader
_YAML_LOADER: type[_Loader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class RowProblem:
    """One thing wrong with one line of a batch file."""

    #: 1-based line in the file.
    line: int
    #: The row key at fault, or None for the row as a whole (bad JSON, not an object...).
    field: str | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, {self.field}: {self.message}" if self.field else f"line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class RawRow:
    """A row as written: its keys and values, not yet checked."""

    line: int
    values: dict[str, Any]


@dataclass
class ParsedFile:
    """A batch file split into rows (lazily for line formats), plus a YAML file's own defaults."""

    #: Rows in file order; a :class:`RowProblem` stands for a row that could not be read at all.
    rows: Iterator[RawRow | RowProblem]
    #: Values are text to convert (CSV cells), rather than typed JSON/YAML values; their keys (the
    #: header's columns) were checked already.
    text_values: bool = False
    #: The YAML file's ``defaults`` mapping (empty for other formats).
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Line of each ``defaults`` key, and of the mapping itself under the key None.
    default_lines: dict[str | None, int] = field(default_factory=dict)


def parse_batch_file(path: Path, *, known_fields: Collection[str] | None = None) -> ParsedFile:
    """Open ``path`` and return its rows.

    Raises:
        InputError: a missing file, a folder, an unknown extension, unreadable or non-UTF-8 bytes,
            or a file whose structure is wrong as a whole (CSV without a ``prompt`` column, YAML that
            is neither a list nor ``{defaults, jobs}``). Empty files are found by the caller.
    """
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return ParsedFile(rows=_txt_rows(text))
    if suffix == ".jsonl":
        return ParsedFile(rows=_jsonl_rows(text))
    if suffix == ".csv":
        return ParsedFile(rows=_csv_rows(path.name, text, known_fields), text_values=True)
    return _yaml_file(path.name, text)


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InputError(f"batch file {path} does not exist", field="path", value=str(path))
    if path.is_dir():
        raise InputError(
            f"batch file {path} is a folder, not a file",
            field="path",
            value=str(path),
            expected="a file such as prompts.txt",
        )
    if path.suffix.lower() not in BATCH_EXTENSIONS:
        raise InputError(
            f"batch file {path.name} has an unknown extension {path.suffix!r}",
            field="extension",
            value=path.suffix,
            expected=_EXTENSIONS_TEXT,
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(
            f"cannot read batch file {path}: {exc.strerror or exc}", field="permissions", value=str(path)
        ) from exc
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(
            f"{path.name} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
            field="encoding",
            expected="UTF-8",
        ) from exc


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Physical lines (``\\n``, ``\\r\\n`` or ``\\r``), numbered from 1, without their line ends."""
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        yield number, line.rstrip("\n")


def _txt_rows(text: str) -> Iterator[RawRow | RowProblem]:
    for number, line in _lines(text):
        prompt = line.strip()
        if prompt and not prompt.startswith("#"):
            yield RawRow(number, {"prompt": prompt})


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _jsonl_rows(text: str) -> Iterator[RawRow | RowProblem]:
    for number, line in _lines(text):
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKey as exc:
            yield RowProblem(number, str(exc), "the key appears twice in this row")
            continue
        except ValueError as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            yield RowProblem(number, None, f"not valid JSON ({reason})")
            continue
        if isinstance(value, dict):
            yield RawRow(number, value)
        else:
            yield RowProblem(number, None, f"expected a JSON object {{...}}, got {describe_value(value)}")


def _csv_rows(file_name: str, text: str, known_fields: Collection[str] | None) -> Iterator[RawRow | RowProblem]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # an unterminated quote is an error
    columns: list[str] | None = None
    end = 0  # physical line the previous record ended on
    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if columns is None:
                columns = [cell.strip() for cell in record]
                if "prompt" not in columns:
                    raise InputError(
                        f"{file_name}: the header (line {start}) has no 'prompt' column",
                        field="header",
                        expected="a first row naming the columns, e.g. prompt,steps,seed",
                    )
                seen: set[str] = set()
                for index, column in enumerate(columns):
                    if not column:
                        yield RowProblem(start, None, f"column {index + 1} of the header has no name")
                    elif (problem := key_problem(column, known_fields)) is not None:
                        yield RowProblem(start, column, problem.replace("key", "column", 1))
                        columns[index] = ""
                    elif column in seen:
                        yield RowProblem(start, column, "this column appears twice in the header")
                    seen.add(column)
                continue
            if len(record) > len(columns):
                yield RowProblem(start, None, f"{len(record)} cells, but the header names {len(columns)} columns")
                continue
            values = {
                column: cell.strip() for column, cell in zip(columns, record, strict=False) if column and cell.strip()
            }
            yield RawRow(start, values)
    except csv.Error as exc:
        raise InputError(
            f"{file_name}: line {reader.line_num} is not valid CSV ({exc})", field="syntax", value="csv"
        ) from exc


class _AliasLineLoader(yaml.SafeLoader):
    """The Python SafeLoader, noting the line of each list item that is an alias (``- *row``): the
    composed node only knows where its anchor is. Used only for files with such items (it is slower)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_lines: dict[tuple[int, int], int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if isinstance(parent, yaml.SequenceNode) and self.check_event(yaml.AliasEvent):
            event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
            if event.start_mark is not None:
                self.alias_lines[(id(parent), index)] = event.start_mark.line + 1
        return super().compose_node(parent, index)


def _has_alias_items(jobs: yaml.SequenceNode) -> bool:
    """Whether an item starts before the previous one ended: it is an alias of an earlier node."""
    previous_end = jobs.start_mark.index
    for item in jobs.value:
        if item.start_mark.index < previous_end:
            return True
        previous_end = item.end_mark.index
    return False


def _yaml_file(file_name: str, text: str, loader_class: type[_Loader] = _YAML_LOADER) -> ParsedFile:
    shape = "a list of jobs (- prompt: ...), or a mapping with 'defaults:' and 'jobs:'"
    loader = loader_class(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" on line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InputError(f"{file_name} is not valid YAML{where} ({problem})", field="syntax", value="yaml") from exc
        parsed = ParsedFile(rows=iter(()))
        if root is None:
            return parsed  # empty: reported by the caller
        if isinstance(root, yaml.MappingNode):
            parts = {_scalar(key): value for key, value in root.value}
            unknown = sorted(str(key) for key in parts if key not in ("defaults", "jobs"))
            if unknown or "jobs" not in parts:
                found = f"found {', '.join(unknown)}" if unknown else "no 'jobs' key"
                raise InputError(
                    f"{file_name}: a YAML mapping must have 'jobs' (and 'defaults'); {found}",
                    field="jobs",
                    expected=shape,
                )
            defaults_node = parts.get("defaults")
            if defaults_node is not None:
                parsed.defaults, parsed.default_lines = _yaml_defaults(file_name, loader, defaults_node)
            jobs_node = parts["jobs"]
        else:
            jobs_node = root
        if not isinstance(jobs_node, yaml.SequenceNode):
            if isinstance(jobs_node, yaml.ScalarNode) and loader.construct_document(jobs_node) is None:
                return parsed  # "jobs:" with nothing under it: empty
            raise InputError(
                f"{file_name}: expected a list of jobs, found {_node_kind(jobs_node)}", field="jobs", expected=shape
            )
        if not isinstance(loader, _AliasLineLoader) and _has_alias_items(jobs_node):
            return _yaml_file(file_name, text, _AliasLineLoader)
        alias_lines = loader.alias_lines if isinstance(loader, _AliasLineLoader) else {}
        checked: set[int] = set()
        parsed.rows = (
            _yaml_row(loader, item, checked, alias_lines.get((id(jobs_node), index)))
            for index, item in enumerate(jobs_node.value)
        )
        return parsed
    finally:
        loader.dispose()


def _yaml_defaults(file_name: str, loader: _Loader, node: yaml.Node) -> tuple[dict[str, Any], dict[str | None, int]]:
    lines: dict[str | None, int] = {None: node.start_mark.line + 1}
    if isinstance(node, yaml.ScalarNode) and loader.construct_document(node) is None:
        return {}, lines
    if not isinstance(node, yaml.MappingNode):
        raise InputError(
            f"{file_name}: 'defaults' (line {node.start_mark.line + 1}) must be a mapping, found {_node_kind(node)}",
            field="defaults",
            expected="a mapping, e.g. defaults: {steps: 30, grid: 2x2}",
        )
    for key, _ in node.value:
        if key.tag != _YAML_MERGE_TAG:
            lines[str(_scalar(key))] = key.start_mark.line + 1
    try:
        values = loader.construct_document(node)
    except (yaml.YAMLError, ValueError) as exc:
        raise InputError(
            f"{file_name}: cannot read 'defaults' (line {lines[None]}): {getattr(exc, 'problem', None) or exc}",
            field="defaults",
            expected="plain keys and values, e.g. defaults: {steps: 30, grid: 2x2}",
        ) from exc
    return {str(key): value for key, value in values.items()}, lines


def _yaml_row(loader: _Loader, node: yaml.Node, checked: set[int], line: int | None) -> RawRow | RowProblem:
    """One item of the jobs list, on ``line`` (None: where the node starts). ``checked``: ids of mapping
    nodes already checked for duplicate keys (an alias repeats a node, and constructing a node with
    ``<<`` merges rewrites its key list)."""
    line = line or node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode) and id(node) not in checked:
        checked.add(id(node))
        seen: set[Any] = set()
        for key, _ in node.value:
            name = _scalar(key)
            if key.tag != _YAML_MERGE_TAG and name in seen:
                return RowProblem(key.start_mark.line + 1, str(name), "the key appears twice in this row")
            seen.add(name)
    try:
        value = loader.construct_document(node)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer over Python's digit limit
        return RowProblem(line, None, f"cannot read this item ({getattr(exc, 'problem', None) or exc})")
    if isinstance(node, yaml.MappingNode):
        return RawRow(line, {str(key): item for key, item in value.items()})
    if isinstance(node, yaml.ScalarNode):
        if isinstance(value, str):
            return RawRow(line, {"prompt": value})
        if value is None:
            return RowProblem(line, None, "empty item (expected a prompt or a mapping such as {prompt: ...})")
        return RowProblem(
            line, None, f"expected a prompt or a mapping such as {{prompt: ...}}, got {describe_value(value)}"
        )
    return RowProblem(line, None, "expected a prompt or a mapping such as {prompt: ...}, got a list")


def _scalar(node: yaml.Node) -> Any:
    return node.value if isinstance(node, yaml.ScalarNode) else repr(node)


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the value {node.value!r}"
