"""Batch files: every format, defaults precedence, validation of every row, names, count expansion."""

from __future__ import annotations

import csv
import io
import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cli.errors import hint_for
from pipeline.batches.files import (
    MAX_ROW_COUNT,
    ROW_KEYS,
    BatchFileError,
    PlannedRow,
    RowProblem,
    describe_plan,
    read_batch_file,
)
from pipeline.errors import InputError
from pipeline.jobs.planning import GenerationRequest, build_step_params, plan_generate
from pipeline.models import GenerationParams
from pipeline.settings import Settings
from pipeline.upscale.params import UpscaleParams

BATCH_ID = "b" * 32
NOW = 1_700_000_000.0


class FieldsOnly:
    """A request checker that knows the server's field names and accepts every model and sampler."""

    def __init__(self, fields: frozenset[str]) -> None:
        self.fields = fields

    def known_fields(self) -> frozenset[str] | None:
        return self.fields

    def check(self, generation: GenerationParams) -> GenerationParams:
        return generation

    def check_upscale(self, params: UpscaleParams) -> UpscaleParams:
        return params


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def read(path: Path, settings: Settings, defaults: dict[str, Any] | None = None, **kwargs: Any) -> list[PlannedRow]:
    return read_batch_file(path, settings, defaults=defaults or {}, batch_id=BATCH_ID, now=NOW, **kwargs)


def problems_of(path: Path, settings: Settings, defaults: dict[str, Any] | None = None) -> list[tuple[int, str | None]]:
    with pytest.raises(BatchFileError) as caught:
        read(path, settings, defaults)
    return [(problem.line, problem.field) for problem in caught.value.problems]


def jsonl(*rows: Any) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


# --- formats ------------------------------------------------------------------------------------


def test_read_batch_file_txt_skips_blank_lines_and_comments(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "prompts.txt", "# nightly set\n\n  a lighthouse at dusk  \n   # indented comment\n\r\nfox\n")

    rows = read(path, settings)

    assert [(row.line, row.params["prompt"]) for row in rows] == [(3, "a lighthouse at dusk"), (6, "fox")]
    assert rows[0].params["steps"] == settings.steps and rows[0].params["seed"] == -1


def test_read_batch_file_jsonl_rows_set_parameters(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path,
        "prompts.jsonl",
        jsonl(
            {"prompt": "a", "negative": "blurry", "seed": 7, "steps": 30, "cfg": 5, "sampler": "DPM++ 2M"},
            "",
            {"prompt": "b", "width": 768, "height": 512, "grid": "1x3", "band_px": 8, "sigma": 2, "format": "webp"},
        ),
    )

    first, second = read(path, settings)

    gen = first.specs[0].generation
    assert gen is not None
    assert (first.line, gen.prompt, gen.negative_prompt, gen.seed, gen.steps) == (1, "a", "blurry", 7, 30)
    assert gen.cfg_scale == 5.0 and isinstance(first.params["cfg"], float)  # an int stands for a float
    assert gen.sampler_name == "DPM++ 2M"
    assert second.line == 3
    spec = second.specs[0]
    assert spec.generation is not None and (spec.generation.width, spec.generation.height) == (768, 512)
    assert (spec.step_params.rows, spec.step_params.cols, spec.step_params.band_px, spec.step_params.sigma) == (
        1,
        3,
        8,
        2.0,
    )
    assert spec.output_format == "webp"


def test_read_batch_file_csv_coerces_text_and_empty_cells_mean_unset(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path,
        "prompts.csv",
        "prompt,seed,steps,cfg,width,format\n"
        "a lighthouse, 12 ,30,6.5,640,jpg\n"  # spaces around a number are fine; jpg means jpeg
        "fox,,,,,\n"
        "\n"
        '"owl, at night",3,,,,\n',
    )

    rows = read(path, settings, defaults={"steps": 25})

    assert [row.line for row in rows] == [2, 3, 5]
    assert rows[0].params["prompt"] == "a lighthouse"
    assert (rows[0].params["seed"], rows[0].params["steps"], rows[0].params["cfg"]) == (12, 30, 6.5)
    assert (rows[0].params["width"], rows[0].params["format"]) == (640, "jpeg")
    assert (rows[1].params["seed"], rows[1].params["steps"], rows[1].params["width"]) == (-1, 25, settings.width)
    assert rows[2].params["prompt"] == "owl, at night"


def test_read_batch_file_csv_lines_are_physical_lines(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "prompts.csv", 'prompt,steps\n"two\nlines",10\nnext,999\n')

    assert problems_of(path, settings) == [(4, "steps")]


def test_read_batch_file_csv_text_that_is_not_a_number_is_a_problem(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "prompts.csv", "prompt,steps,cfg,seed\na,20.5,x,\nb,,nan,\nc,,,-1\n")

    with pytest.raises(BatchFileError) as caught:
        read(path, settings)

    assert [str(problem) for problem in caught.value.problems] == [
        "line 2, steps: expected a whole number (got '20.5')",
        "line 2, cfg: expected a number (got 'x')",
        "line 3, cfg: must be a finite number (got 'nan')",
    ]


def test_read_batch_file_csv_without_prompt_column_is_input_error(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "prompts.csv", "text,steps\na,20\n")

    with pytest.raises(InputError, match="no 'prompt' column") as caught:
        read(path, settings)
    assert not isinstance(caught.value, BatchFileError)


def test_read_batch_file_csv_unknown_column_is_reported_once_on_the_header(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "prompts.csv", "prompt,stpes\na,20\nb,30\n")

    with pytest.raises(BatchFileError) as caught:
        read(path, settings)

    assert [str(problem) for problem in caught.value.problems] == [
        "line 1, stpes: unknown column 'stpes' (did you mean 'steps'?)"
    ]


def test_read_batch_file_yaml_list_takes_strings_and_mappings(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path, "jobs.yaml", "# comment\n- a lighthouse\n- prompt: fox\n  seed: 5\n\n- {prompt: owl, cfg: 4.5}\n"
    )

    rows = read(path, settings)

    assert [(row.line, row.params["prompt"]) for row in rows] == [(2, "a lighthouse"), (3, "fox"), (6, "owl")]
    assert rows[1].params["seed"] == 5 and rows[2].params["cfg"] == 4.5


def test_read_batch_file_defaults_precedence_settings_flags_file_row(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path,
        "jobs.yml",
        "defaults:\n  steps: 31\n  sampler: Euler\njobs:\n  - prompt: a\n  - prompt: b\n    steps: 40\n    cfg: 3\n",
    )
    flags = {"steps": 25, "cfg": 9.0, "height": 768, "sampler": None}  # None: the flag was not given

    first, second = read(path, settings, defaults=flags)

    # settings < flags < file defaults < row
    assert first.params["width"] == settings.width  # settings only
    assert first.params["height"] == 768 and first.params["cfg"] == 9.0  # flags
    assert first.params["steps"] == 31 and first.params["sampler"] == "Euler"  # file defaults over flags
    assert second.params["steps"] == 40 and second.params["cfg"] == 3.0  # row over everything


def test_read_batch_file_yaml_alias_row_has_its_own_line(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "jobs.yaml", "- &base {prompt: a, steps: 5}\n- {<<: *base, steps: 6}\n- *base\n")

    rows = read(path, settings)

    assert [(row.line, row.params["prompt"], row.params["steps"]) for row in rows] == [
        (1, "a", 5),
        (2, "a", 6),
        (3, "a", 5),
    ]


def test_read_batch_file_yaml_never_runs_python_tags(tmp_path: Path, settings: Settings) -> None:
    marker = tmp_path / "ran"
    path = write(tmp_path, "jobs.yaml", f"- prompt: a\n- !!python/object/apply:os.system ['touch {marker}']\n")

    assert problems_of(path, settings) == [(2, None)]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("foo: 1\n", "found foo"),
        ("defaults: {steps: 3}\n", "no 'jobs' key"),
        ("jobs: 3\n", "expected a list of jobs"),
        ("just a prompt\n", "expected a list of jobs"),
        ("defaults: [1]\njobs: [a]\n", "'defaults' .* must be a mapping"),
        ("- a\n- [b\n", "not valid YAML on line"),
        ("- a\n---\n- b\n", "not valid YAML"),
    ],
)
def test_read_batch_file_yaml_of_the_wrong_shape_is_input_error(
    tmp_path: Path, settings: Settings, text: str, match: str
) -> None:
    path = write(tmp_path, "jobs.yaml", text)

    with pytest.raises(InputError, match=match) as caught:
        read(path, settings)
    assert not isinstance(caught.value, BatchFileError)


# --- validation ---------------------------------------------------------------------------------


def test_read_batch_file_fifty_rows_with_three_bad_rows_names_exactly_those(tmp_path: Path, settings: Settings) -> None:
    rows: list[Any] = [{"prompt": f"prompt {index}", "seed": index} for index in range(50)]
    rows[9] = {"prompt": "too many steps", "steps": 900}
    rows[24] = {"prompt": "  "}
    rows[41] = {"prompt": "typo", "sede": 3}
    path = write(tmp_path, "prompts.jsonl", jsonl(*rows))

    with pytest.raises(BatchFileError) as caught:
        read(path, settings)

    error = caught.value
    assert [(problem.line, problem.field) for problem in error.problems] == [
        (10, "steps"),
        (25, "prompt"),
        (42, "sede"),
    ]
    assert str(error.problems[0]) == "line 10, steps: must be between 1 and 500 (got 900)"
    assert error.message == "prompts.jsonl: 3 bad rows (nothing was enqueued)"
    assert hint_for(error)


def test_read_batch_file_unknown_key_suggests_the_closest(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path,
        "prompts.jsonl",
        jsonl({"prompt": "a", "stpes": 3}, {"prompt": "b", "cfg_scale": 3, "hr_scheduler": "Karras", "zzz": 1}),
    )

    with pytest.raises(BatchFileError) as caught:
        read(path, settings)

    # Without the server's field list, only a near miss of sdpipe's own keys is refused: the rest is sent as written.
    assert [str(problem) for problem in caught.value.problems] == [
        "line 1, stpes: unknown key 'stpes' (did you mean 'steps'?)"
    ]


def test_read_batch_file_checks_field_names_against_the_servers_schema(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "prompts.jsonl", jsonl({"prompt": "a", "enable_hrr": True}, {"prompt": "b", "zzz": 1}))
    checker = FieldsOnly(frozenset({"prompt", "enable_hr", "hr_scale", "steps"}))

    with pytest.raises(BatchFileError) as caught:
        read_batch_file(path, settings, defaults={}, batch_id="b", now=0.0, checker=checker)

    assert [str(problem) for problem in caught.value.problems] == [
        "line 1, enable_hrr: unknown key 'enable_hrr' (did you mean 'enable_hr'?)",
        "line 2, zzz: unknown key 'zzz' (neither sdpipe's nor a field of the server's txt2img request)",
    ]


def test_read_batch_file_json_values_must_have_their_type(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path,
        "prompts.jsonl",
        jsonl(
            {"prompt": "a", "steps": "20"},  # text is not converted in JSON
            {"prompt": "b", "seed": True},  # a bool is not a number
            {"prompt": "c", "cfg": False},
            {"prompt": "d", "steps": 20.0},
            {"prompt": 5},
            {"prompt": "f", "sampler": "  "},
            {"prompt": "g", "seed": None, "negative": None},  # null: not set
        ),
    )

    with pytest.raises(BatchFileError) as caught:
        read(path, settings)

    assert [str(problem) for problem in caught.value.problems] == [
        "line 1, steps: expected a whole number, got the text '20'",
        "line 2, seed: expected a whole number, got true",
        "line 3, cfg: expected a number, got false",
        "line 4, steps: expected a whole number, got the number 20.0",
        "line 5, prompt: expected text, got the number 5",
        "line 6, sampler: is empty",
    ]


def test_read_batch_file_jsonl_bad_lines_are_row_problems(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path,
        "prompts.jsonl",
        jsonl({"prompt": "a"}, "{oops", '"just text"', "[1]", '{"prompt": "b", "prompt": "c"}', {}),
    )

    with pytest.raises(BatchFileError) as caught:
        read(path, settings)

    assert [(p.line, p.field) for p in caught.value.problems] == [
        (2, None),
        (3, None),
        (4, None),
        (5, "prompt"),
        (6, "prompt"),
    ]
    assert caught.value.problems[0].message.startswith("not valid JSON")
    assert caught.value.problems[1].message == "expected a JSON object {...}, got the text 'just text'"
    assert caught.value.problems[4].message == "no prompt given"


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"steps": 0}, "steps", "must be between 1 and 500 (got 0)"),
        ({"cfg": 150}, "cfg", "must be between 0 and 100 (got 150.0)"),
        ({"seed": -2}, "seed", None),
        ({"count": 0}, "count", f"must be between 1 and {MAX_ROW_COUNT} (got 0)"),
        ({"count": MAX_ROW_COUNT + 1}, "count", None),
        ({"format": "gif"}, "format", "must be png, webp or jpeg (got 'gif')"),
        ({"width": 4}, "width", "must be at least 8 pixels (got 4)"),
        ({"height": 4}, "height", "must be at least 8 pixels (got 4)"),
        ({"width": 16384, "height": 16384}, "width", None),  # over MAX_PIXELS
        ({"grid": "3"}, "grid", "grid '3' is not ROWSxCOLS"),
        ({"grid": "1x1"}, "grid", None),
        ({"band_px": 0}, "band_px", "must be at least 1 (got 0)"),
        ({"sigma": 0}, "sigma", "must be greater than 0 (got 0.0)"),
        ({"band_px": 200}, "band_px", None),  # wider than half a 256 px tile
        ({"grid": "64x64", "width": 64}, "grid", None),  # more tiles than pixels
        ({"name": ""}, "name", "is empty"),
        ({"name": "x" * 300}, "name", None),
    ],
)
def test_read_batch_file_bad_value_names_its_field(
    tmp_path: Path, settings: Settings, row: dict[str, Any], field: str, message: str | None
) -> None:
    path = write(tmp_path, "prompts.jsonl", jsonl({"prompt": "fine"}, {"prompt": "bad", **row}))

    with pytest.raises(BatchFileError) as caught:
        read(path, settings)

    assert [(problem.line, problem.field) for problem in caught.value.problems] == [(2, field)]
    if message is not None:
        assert caught.value.problems[0].message == message


def test_read_batch_file_collects_several_problems_of_one_row(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path, "prompts.jsonl", jsonl({"prompt": "a", "grid": "x", "width": 4, "format": "bmp", "steps": "z"})
    )

    assert sorted(field for _, field in problems_of(path, settings) if field) == ["format", "grid", "steps", "width"]


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/b", "a\\b", ".hidden", "..", " ../x"])
def test_read_batch_file_name_that_leaves_output_dir_is_a_problem(
    tmp_path: Path, settings: Settings, name: str
) -> None:
    path = write(tmp_path, "prompts.jsonl", jsonl({"prompt": "a", "name": name}))

    with pytest.raises(BatchFileError) as caught:
        read(path, settings)

    (problem,) = caught.value.problems
    assert (problem.field, problem.message) == ("name", f"name {name!r} would leave OUTPUT_DIR")


def test_read_batch_file_name_odd_characters_are_replaced(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path,
        "prompts.jsonl",
        jsonl(
            {"prompt": "a", "name": "cat: *night* v1..2"},
            {"prompt": "b", "name": "été.png"},
            {"prompt": "c", "name": "東京の夜景 #1"},
        ),
    )

    first, second, third = read(path, settings)

    assert first.specs[0].output_name == "cat- -night- v1..2"
    # Letters of every script are kept (before: "-t-" and "----- -1"); the extension is dropped: the format decides it
    assert second.specs[0].output_name == "été"
    assert third.specs[0].output_name == "東京の夜景 -1"


def test_read_batch_file_duplicate_names_are_a_problem_on_the_later_row(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path,
        "prompts.jsonl",
        jsonl(
            {"prompt": "a", "name": "hero"},
            {"prompt": "b", "name": "set", "count": 3},  # set-1, set-2, set-3
            {"prompt": "c", "name": "HERO"},  # same file on a case-insensitive file system
            {"prompt": "d", "name": "set-2"},
            {"prompt": "e", "name": "hero", "format": "webp"},  # the sidecar hero.json would clash
            {"prompt": "f"},
            {"prompt": "f"},  # default names hold the job id: no clash
        ),
    )

    with pytest.raises(BatchFileError) as caught:
        read(path, settings)

    assert [str(problem) for problem in caught.value.problems] == [
        "line 3, name: output name 'HERO' is also written by line 1",
        "line 4, name: output name 'set-2' is also written by line 2",
        "line 5, name: output name 'hero' is also written by line 1",
    ]


def test_read_batch_file_count_expands_seeds_and_names(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path, "jobs.yaml", "- {prompt: a, count: 3, seed: 100, name: lighthouse}\n- {prompt: b, count: 2}\n"
    )

    first, second = read(path, settings)

    assert [spec.generation.seed for spec in first.specs if spec.generation] == [100, 101, 102]
    assert [spec.output_name for spec in first.specs] == ["lighthouse-1", "lighthouse-2", "lighthouse-3"]
    assert first.params["count"] == 3 and first.params["seed"] == 100
    assert [spec.generation.seed for spec in second.specs if spec.generation] == [-1, -1]
    assert len({spec.job_id for spec in (*first.specs, *second.specs)}) == 5


def test_read_batch_file_yaml_defaults_problem_is_reported_once_on_its_line(tmp_path: Path, settings: Settings) -> None:
    jobs = "".join(f"  - prompt: p{index}\n" for index in range(20))
    path = write(
        tmp_path,
        "jobs.yaml",
        f"defaults:\n  cfg: 5\n  steps: 900\n  stpes: 3\njobs:\n{jobs}  - prompt: x\n    count: 0\n",
    )

    with pytest.raises(BatchFileError) as caught:
        read(path, settings)

    assert [str(problem) for problem in caught.value.problems] == [
        "line 3, steps: must be between 1 and 500 (got 900)",
        "line 4, stpes: unknown key 'stpes' (did you mean 'steps'?)",
        "line 26, count: must be between 1 and 1000 (got 0)",
    ]


def test_read_batch_file_bad_command_line_default_is_input_error(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "prompts.txt", "a\n")

    with pytest.raises(InputError, match="default steps: must be between 1 and 500") as caught:
        read(path, settings, defaults={"steps": 900})
    assert not isinstance(caught.value, BatchFileError)
    with pytest.raises(InputError, match="default stpes: unknown key"):
        read(path, settings, defaults={"stpes": 3})


def test_read_batch_file_command_line_defaults_may_be_text(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "prompts.txt", "a\n")

    (row,) = read(path, settings, defaults={"steps": "30", "sigma": "2.5", "grid": "1x2"})

    assert (row.params["steps"], row.params["sigma"], row.params["grid"]) == (30, 2.5, "1x2")


# --- the file as a whole ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty.txt", ""),
        ("comments.txt", "# nothing yet\n\n   \n"),
        ("blank.jsonl", "\n\n"),
        ("header.csv", "prompt,steps\n"),
        ("empty.yaml", ""),
        ("comment.yml", "# later\n"),
        ("nojobs.yaml", "jobs: []\n"),
        ("nullj.yaml", "defaults: {steps: 3}\njobs:\n"),
    ],
)
def test_read_batch_file_without_rows_is_input_error(tmp_path: Path, settings: Settings, name: str, text: str) -> None:
    path = write(tmp_path, name, text)

    with pytest.raises(InputError, match="has no rows"):
        read(path, settings)


def test_read_batch_file_unknown_extension_is_input_error(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "prompts.json", '[{"prompt": "a"}]')

    with pytest.raises(InputError) as caught:
        read(path, settings)
    assert hint_for(caught.value) == "use .txt, .jsonl, .csv, .yaml or .yml"


def test_read_batch_file_missing_file_and_folder_are_input_errors(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read(tmp_path / "nope.txt", settings)
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        read(tmp_path / "folder.txt", settings)


def test_read_batch_file_not_utf8_is_input_error_naming_the_line(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"fine\ncaf\xe9\n")

    with pytest.raises(InputError, match=r"not UTF-8 text \(byte 0xe9 on line 2\)"):
        read(path, settings)


def test_read_batch_file_utf8_bom_is_ignored(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "prompts.csv"
    path.write_bytes("prompt,steps\nfox,12\n".encode("utf-8-sig"))

    (row,) = read(path, settings)

    assert (row.line, row.params["prompt"], row.params["steps"]) == (2, "fox", 12)


# --- what the rows carry ------------------------------------------------------------------------


def test_read_batch_file_specs_carry_batch_output_dir_and_backend(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "prompts.txt", "a\nb\n")

    rows = read(path, settings, output_dir=tmp_path / "out", backend_url="http://user:secret@sd:7860")

    for spec in (spec for row in rows for spec in row.specs):
        assert spec.batch_id == BATCH_ID and spec.created_at == NOW
        assert spec.output_dir == str(tmp_path / "out")
        assert spec.backend_url == "http://sd:7860"


def test_read_batch_file_fingerprint_matches_generate(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path, "prompts.jsonl", jsonl({"prompt": "fox", "seed": 3, "steps": 12, "name": "fox", "grid": "1x2"})
    )

    (row,) = read(path, settings)
    (expected,) = plan_generate(
        settings,
        GenerationRequest(prompt="fox", seed=3, steps=12),
        build_step_params(settings, grid="1x2", band_px=None, sigma=None),
        name="fox",
        now=NOW,
    )

    assert row.specs[0].fingerprint == expected.fingerprint


def test_read_batch_file_params_hold_every_key_and_are_json(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "prompts.txt", "a\n")

    (row,) = read(path, settings)

    assert set(row.params) == set(ROW_KEYS)
    assert json.loads(json.dumps(row.params)) == row.params
    assert row.params["name"] is None and row.params["grid"] == settings.grid


def test_describe_plan_lists_seeds_size_and_names(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "prompts.jsonl", jsonl({"prompt": "fox", "seed": 5, "count": 2, "width": 640, "name": "f"}))

    (plan,) = describe_plan(read(path, settings))

    assert plan == {
        "line": 1,
        "prompt": "fox",
        "count": 2,
        "seeds": [5, 6],
        "size": f"640x{settings.height}",
        "steps": settings.steps,
        "cfg": settings.cfg_scale,
        "sampler": settings.sampler,
        "scheduler": settings.scheduler,
        "grid": settings.grid,
        "band_px": settings.band_px,
        "sigma": settings.sigma,
        "format": settings.output_format,
        "names": ["f-1", "f-2"],
    }
    assert json.loads(json.dumps(plan)) == plan


def test_row_problem_str_names_line_and_field() -> None:
    assert str(RowProblem(12, "steps", "must be between 1 and 500 (got 900)")) == (
        "line 12, steps: must be between 1 and 500 (got 900)"
    )
    assert str(RowProblem(3, None, "not valid JSON")) == "line 3: not valid JSON"


def test_batch_file_error_counts_bad_rows_and_survives_pickling() -> None:
    error = BatchFileError("p.csv", [RowProblem(2, "steps", "x"), RowProblem(2, "cfg", "y"), RowProblem(5, None, "z")])

    assert error.message == "p.csv: 2 bad rows (nothing was enqueued)"
    assert isinstance(error, InputError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.message, copy.problems) == (error.message, error.problems)


def test_read_batch_file_ten_thousand_rows(tmp_path: Path, settings: Settings) -> None:
    """Scale check without a time limit (the figure is measured by bench/, not asserted here)."""
    rows = [{"prompt": f"lighthouse {index}", "seed": index, "steps": 20 + index % 10} for index in range(10_000)]
    path = write(tmp_path, "big.jsonl", jsonl(*rows))

    planned = read(path, settings)

    assert len(planned) == 10_000
    assert planned[-1].line == 10_000 and planned[-1].params["steps"] == 29


# --- properties ---------------------------------------------------------------------------------

_cell_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30).filter(
    lambda text: text.strip() != ""
)


@hypothesis_settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(prompts=st.lists(_cell_text, min_size=1, max_size=8))
def test_read_batch_file_csv_round_trips_any_prompt_with_its_line(
    tmp_path: Path, settings: Settings, prompts: list[str]
) -> None:
    records = []
    for prompt in prompts:
        buffer = io.StringIO()
        csv.writer(buffer).writerow([prompt])
        records.append(buffer.getvalue())
    path = tmp_path / "round.csv"
    path.write_text("prompt\r\n" + "".join(records), encoding="utf-8", newline="")
    expected_lines, line = [], 2
    for record in records:
        expected_lines.append(line)
        line += len(re.findall(r"\r\n|\r|\n", record))

    rows = read(path, settings)

    assert [row.params["prompt"] for row in rows] == [prompt.strip() for prompt in prompts]
    assert [row.line for row in rows] == expected_lines


def test_read_batch_file_lists_every_bad_field_of_a_row(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "multi.jsonl"
    path.write_text('{"prompt": "a", "steps": 0, "seed": -5}\n{"prompt": "b", "width": 4, "steps": 900, "cfg": 200}\n')
    with pytest.raises(BatchFileError) as info:
        read_batch_file(path, settings, defaults={}, batch_id="b", now=0.0)
    found = {(problem.line, problem.field) for problem in info.value.problems}
    assert found == {(1, "seed"), (1, "steps"), (2, "steps"), (2, "cfg"), (2, "width")}


def test_read_batch_file_rows_set_the_jpeg_webp_quality(tmp_path: Path, settings: Settings) -> None:
    # Given rows with and without a quality, and one out of range
    path = write(
        tmp_path,
        "q.jsonl",
        jsonl({"prompt": "a", "format": "webp", "quality": 50}, {"prompt": "b", "format": "jpeg"}),
    )
    rows = read(path, settings, defaults={"quality": 70})
    # Then the row's own wins over the flag's, which wins over OUTPUT_QUALITY
    assert [row.specs[0].output_quality for row in rows] == [50, 70]
    assert rows[0].params["quality"] == 50
    bad = write(tmp_path, "bad.jsonl", jsonl({"prompt": "a", "quality": 0}, {"prompt": "b", "quality": "high"}))
    assert problems_of(bad, settings) == [(1, "quality"), (2, "quality")]


def test_read_batch_file_upscale_keys_upscale_the_row_jobs(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path,
        "up.jsonl",
        jsonl({"prompt": "a fox", "seed": 3, "upscale": 2, "upscale_denoise": 0.2}, {"prompt": "a wolf"}),
    )

    fox, wolf = read(path, settings, {"upscaler": "R-ESRGAN 4x+"})

    upscale = fox.specs[0].upscale
    assert upscale is not None
    assert (upscale.scale, upscale.denoise, upscale.upscaler, upscale.seed) == (2.0, 0.2, "R-ESRGAN 4x+", 3)
    assert fox.params["upscale"] == 2.0
    assert wolf.specs[0].upscale is not None  # the default's upscaler asks for an upscale with the default scale
    plain = read(write(tmp_path, "plain.jsonl", jsonl({"prompt": "a fox", "seed": 3})), settings)[0]
    assert plain.specs[0].upscale is None
    assert plain.specs[0].fingerprint != fox.specs[0].fingerprint


def test_read_batch_file_bad_upscale_is_a_row_problem(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path, "up.jsonl", jsonl({"prompt": "a fox", "upscale": 20}, {"prompt": "ok", "upscale_denoise": 2})
    )

    assert problems_of(path, settings) == [(1, "upscale"), (2, "upscale_denoise")]


def test_read_batch_file_every_upscale_setting_is_a_row_key(tmp_path: Path, settings: Settings) -> None:
    row = {"prompt": "a fox", "upscale": 3, "upscale_tile": 256, "upscale_overlap": 32, "upscale_seam_fix": "band"}
    path = write(tmp_path, "up.jsonl", jsonl(row, {"prompt": "a wolf", "upscale_tile": 384}))

    fox, wolf = read(path, settings, {"upscale_denoise": 0.25, "upscaler": "R-ESRGAN 4x+"})

    up = fox.specs[0].upscale
    assert up is not None
    assert (up.scale, up.tile_px, up.overlap_px, up.seam_fix, up.denoise, up.upscaler) == (
        3.0, 256, 32, "band", 0.25, "R-ESRGAN 4x+"
    )  # fmt: skip
    assert {key: fox.params[key] for key in ("upscale_tile", "upscale_overlap", "upscale_seam_fix")} == {
        "upscale_tile": 256, "upscale_overlap": 32, "upscale_seam_fix": "band"
    }  # fmt: skip
    assert wolf.specs[0].upscale is not None and wolf.specs[0].upscale.tile_px == 384
    assert (wolf.specs[0].upscale.scale, wolf.specs[0].upscale.seam_fix) == (2.0, "none")


def test_read_batch_file_bad_upscale_setting_names_its_row_key(tmp_path: Path, settings: Settings) -> None:
    path = write(
        tmp_path,
        "up.jsonl",
        jsonl(
            {"prompt": "a", "upscale_tile": 100},
            {"prompt": "b", "upscale_overlap": 400, "upscale_tile": 512},
            {"prompt": "c", "upscale_seam_fix": "wide"},
        ),
    )

    assert problems_of(path, settings) == [(1, "upscale_tile"), (2, "upscale_overlap"), (3, "upscale_seam_fix")]


def test_read_batch_file_upscale_vary_seed_is_a_row_key(tmp_path: Path, settings: Settings) -> None:
    path = write(tmp_path, "up.csv", "prompt,upscale,upscale_vary_seed\na fox,2,true\na wolf,2,\n")

    fox, wolf = read(path, settings)

    assert fox.specs[0].upscale is not None and fox.specs[0].upscale.vary_seed is True
    assert wolf.specs[0].upscale is not None and wolf.specs[0].upscale.vary_seed is False
    assert fox.params["upscale_vary_seed"] is True
