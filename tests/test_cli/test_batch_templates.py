"""``sdpipe batch`` with prompt templates (``template`` column, --combinatorial, --template-seed) and --sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.sd.mock.http import get_mock_server
from tests.test_cli.conftest import Invoke

SMALL = ["--width", "64", "--height", "64"]
TEMPLATE = "a {red|green} {car|boat} in __weather__"


@pytest.fixture
def wildcards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "weather.txt").write_text("rain\nfog\nsnow\n")
    monkeypatch.setenv("WILDCARDS_DIR", str(folder))
    return folder


def _csv(path: Path, prompt: str) -> Path:
    path.write_text(f'prompt,template\n"{prompt}",true\n')
    return path


def _sent_prompts(url: str) -> list[str]:
    return [r["body"]["prompt"] for r in get_mock_server(url).control.requests(route="/sdapi/v1/txt2img")]


def test_combinatorial_row_sends_each_of_twelve_prompts_as_expanded(
    sdpipe: Invoke, tmp_path: Path, out_dir: Path, wildcards: Path
) -> None:
    rows = _csv(tmp_path / "rows.csv", TEMPLATE)
    plan = sdpipe("batch", str(rows), "--combinatorial", "--dry-run", "--json")
    assert plan.exit_code == 0, plan.output
    planned = [row["prompt"] for row in json.loads(plan.stdout)["rows"]]
    assert len(planned) == 12 == len(set(planned))
    assert not out_dir.exists()

    url = "mock://templates"
    result = sdpipe("batch", str(rows), "--combinatorial", "--sd-url", url, *SMALL)
    assert result.exit_code == 0, result.output
    assert sorted(_sent_prompts(url)) == sorted(planned)
    batch_id = result.stdout.splitlines()[0].split()[1]
    manifest = json.loads((out_dir / "batches" / f"{batch_id}.json").read_text())
    assert {row["params"]["template"]["prompt"] for row in manifest["rows"]} == {TEMPLATE}
    sidecar = json.loads(Path(manifest["rows"][0]["jobs"][0]["sidecar"]).read_text())
    assert sidecar["template"]["prompt"] == TEMPLATE
    assert sidecar["template"]["choices"]["mode"] == "combinatorial"
    assert sidecar["prompt"] in planned and sidecar["prompt"] in sidecar["infotext"]


def test_random_templates_with_a_seed_repeat_and_without_differ(
    sdpipe: Invoke, tmp_path: Path, wildcards: Path
) -> None:
    rows = _csv(tmp_path / "rows.csv", TEMPLATE)

    def prompts(*flags: str) -> list[str]:
        result = sdpipe("batch", str(rows), "--count", "8", "--dry-run", "--json", *flags)
        assert result.exit_code == 0, result.output
        return [row["prompt"] for row in json.loads(result.stdout)["rows"]]

    assert prompts("--template-seed", "7") == prompts("--template-seed", "7")
    assert len({tuple(prompts()) for _ in range(4)}) > 1


@pytest.mark.parametrize(
    ("prompt", "flags", "words"),
    [
        ("a {red|green", [], "unbalanced '{'"),
        ("in __fog_banks__", [], "wildcard __fog_banks__ has no file"),
        (TEMPLATE, ["--combinatorial", "--max-prompts", "10"], "more than 10 prompts"),
    ],
)
def test_broken_template_is_one_line_exit_2_and_nothing_enqueued(
    sdpipe: Invoke, tmp_path: Path, out_dir: Path, wildcards: Path, prompt: str, flags: list[str], words: str
) -> None:
    url = "mock://broken"
    result = sdpipe("batch", str(_csv(tmp_path / "rows.csv", prompt)), "--sd-url", url, *flags)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and lines[0].startswith("error: line 2:")
    assert _sent_prompts(url) == []
    assert not out_dir.exists()


def test_three_by_two_sweep_makes_six_jobs_with_their_values(sdpipe: Invoke, tmp_path: Path, out_dir: Path) -> None:
    rows = tmp_path / "p.txt"
    rows.write_text("a lighthouse\n")
    url = "mock://sweep"
    result = sdpipe(
        "batch", str(rows), "--sd-url", url, "--seed", "1", *SMALL,
        "--sweep", "cfg_scale=5,7,9", "--sweep", "sampler_name=Euler a,DPM++ 2M",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sent = get_mock_server(url).control.requests(route="/sdapi/v1/txt2img")
    assert sorted((r["body"]["cfg_scale"], r["body"]["sampler_name"]) for r in sent) == [
        (5.0, "DPM++ 2M"), (5.0, "Euler a"), (7.0, "DPM++ 2M"), (7.0, "Euler a"), (9.0, "DPM++ 2M"), (9.0, "Euler a"),
    ]  # fmt: skip
    batch_id = result.stdout.splitlines()[0].split()[1]
    manifest = json.loads((out_dir / "batches" / f"{batch_id}.json").read_text())
    assert [row["params"]["sweep"] for row in manifest["rows"]][:2] == [
        {"cfg_scale": 5.0, "sampler_name": "Euler a"},
        {"cfg_scale": 5.0, "sampler_name": "DPM++ 2M"},
    ]


def test_contact_sheet_of_a_three_by_two_sweep_is_written_once_with_its_sidecar(
    sdpipe: Invoke, tmp_path: Path, out_dir: Path
) -> None:
    from PIL import Image

    from pipeline.images.contact_sheet import write_contact_sheet

    rows = tmp_path / "p.txt"
    rows.write_text("a lighthouse\n")
    result = sdpipe(
        "batch", str(rows), "--sd-url", "mock://sheet", *SMALL, "--contact-sheet",
        "--sweep", "cfg_scale=5,7,9", "--sweep", "sampler_name=Euler a,DPM++ 2M",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    batch_id = result.stdout.splitlines()[0].split()[1]
    sheet = out_dir / "batches" / f"{batch_id}-contact-sheet.png"
    sidecar = json.loads(sheet.with_suffix(".json").read_text())
    assert sidecar["x"] == {"field": "cfg_scale", "values": [5.0, 7.0, 9.0]}
    assert sidecar["y"] == {"field": "sampler_name", "values": ["Euler a", "DPM++ 2M"]}
    assert len(sidecar["cells"]) == 6
    with Image.open(sheet) as image:
        assert image.width > 3 * 64 and image.height > 2 * 64  # three columns, two rows of the 64 px images
    before = sheet.stat().st_mtime_ns
    manifest = json.loads((out_dir / "batches" / f"{batch_id}.json").read_text())
    assert write_contact_sheet(manifest, out_dir) == str(sheet)  # a second delivery keeps the first sheet
    assert sheet.stat().st_mtime_ns == before


def test_generate_sweep_writes_its_contact_sheet_and_manifest_rows_carry_the_sweep(
    sdpipe: Invoke, out_dir: Path
) -> None:
    # Given a generate with a 3 x 2 sweep and --contact-sheet
    result = sdpipe(
        "generate", "a lighthouse", "--sd-url", "mock://sheet", *SMALL, "--contact-sheet",
        "--sweep", "cfg_scale=5,7,9", "--sweep", "sampler_name=Euler a,DPM++ 2M",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # Then it prints the sheet's path, and the sheet has the six cells on the swept axes
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("contact sheet ")]
    sheet = Path(line.removeprefix("contact sheet "))
    sidecar = json.loads((out_dir / "batches" / sheet.name).with_suffix(".json").read_text())
    assert sidecar["x"] == {"field": "cfg_scale", "values": [5.0, 7.0, 9.0]}
    assert len(sidecar["cells"]) == 6


def test_contact_sheet_without_a_sweep_is_refused(sdpipe: Invoke, tmp_path: Path) -> None:
    rows = tmp_path / "p.txt"
    rows.write_text("a lighthouse\n")
    result = sdpipe("batch", str(rows), "--contact-sheet", "--dry-run")
    assert result.exit_code == 2
    assert "--contact-sheet needs a --sweep" in result.stderr


def test_generate_expands_a_template_and_sends_each_prompt(sdpipe: Invoke, out_dir: Path, wildcards: Path) -> None:
    url = "mock://generate-templates"
    result = sdpipe("generate", TEMPLATE, "--combinatorial", "--sd-url", url, *SMALL)
    assert result.exit_code == 0, result.output
    sent = _sent_prompts(url)
    assert len(sent) == 12 == len(set(sent))
    sidecars = [json.loads(p.read_text()) for p in out_dir.glob("*.json")]
    assert sorted(s["prompt"] for s in sidecars) == sorted(sent)
    assert {s["template"]["prompt"] for s in sidecars} == {TEMPLATE}


def test_schedule_runs_differ_without_a_template_seed_and_repeat_with_one(
    sdpipe: Invoke, tmp_path: Path, wildcards: Path
) -> None:
    from pipeline.batches.files import read_batch_file
    from pipeline.jobs.planning import new_id
    from pipeline.settings import Settings

    rows = _csv(tmp_path / "rows.csv", TEMPLATE)
    settings = Settings(_env_file=None, wildcards_dir=wildcards)  # type: ignore[call-arg]

    def run(defaults: dict[str, object]) -> list[str]:  # what a schedule's firing does: a new batch, its defaults
        planned = read_batch_file(rows, settings, defaults={**defaults, "count": 6}, batch_id=new_id(), now=0.0)
        return [row.params["prompt"] for row in planned]

    assert run({"template_seed": 11}) == run({"template_seed": 11})
    assert len({tuple(run({})) for _ in range(4)}) > 1
    added = sdpipe("schedule", "add", "nightly", str(rows), "--cron", "0 3 * * *", "--template-seed", "11")
    assert added.exit_code == 0, added.output
    shown = sdpipe("schedule", "show", "nightly")
    assert "template_seed" in shown.output


def test_resume_of_a_random_template_batch_picks_the_same_prompts(
    sdpipe: Invoke, tmp_path: Path, wildcards: Path
) -> None:
    rows = _csv(tmp_path / "rows.csv", TEMPLATE)
    url = "mock://resume-templates"
    first = sdpipe("batch", str(rows), "--count", "4", "--sd-url", url, *SMALL)
    assert first.exit_code == 0, first.output
    batch_id = first.stdout.splitlines()[0].split()[1]
    again = sdpipe("batch", str(rows), "--count", "4", "--sd-url", url, "--resume", batch_id[:8], *SMALL)
    assert again.exit_code == 0, again.output
    assert "0 new job(s), 0 retried, 4 already done" in again.stderr
