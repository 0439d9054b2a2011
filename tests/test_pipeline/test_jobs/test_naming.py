"""Output names: the naming template, Unicode slugs, and claiming a name no other file has."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.jobs.files import JobFiles, claim_output_name
from pipeline.jobs.naming import NameFields, check_name_template, expand_name, resolve_late_tokens, slugify

CREATED = 1_700_000_000.0
JOB = "3f2a9c1b" + "0" * 24


def fields(**overrides: object) -> NameFields:
    values: dict[str, object] = {"created_at": CREATED, "job_id": JOB, "prompt_label": "A red fox!", "batch_id": None}
    values.update(overrides)
    return NameFields(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("東京の夜景", "東京の夜景"),
        ("Москва ночью", "москва-ночью"),
        ("Café ünïcode", "cafe-unicode"),
        ("ジャズ, 夜", "ジャズ-夜"),
        ("नमस्ते दुनिया", "नमस्ते-दुनिया"),
        ("A lighthouse, at dusk!", "a-lighthouse-at-dusk"),
        ("!!!", "image"),
    ],
)
def test_slugify_keeps_letters_of_every_script(text: str, slug: str) -> None:
    assert slugify(text) == slug


def test_slugify_is_bounded() -> None:
    assert len(slugify("東" * 500)) == 48


def test_expand_name_fills_every_token() -> None:
    template = "{date:%Y-%m-%d}/{date}-{time}-{job}-{batch}-{seed}-{model}-{prompt}-{row}"
    name = expand_name(template, fields(batch_id="b" * 32, seed=7, row=3))
    day = time.strftime("%Y-%m-%d", time.localtime(CREATED))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(CREATED))
    assert name == f"{day}/{stamp}-3f2a9c1b-bbbbbbbb-7-{{model}}-a-red-fox-3"


def test_expand_name_leaves_a_random_seed_and_the_model_for_merge_time() -> None:
    name = expand_name("{prompt}-{seed}-{model}", fields(seed=-1))
    assert name == "a-red-fox-{seed}-{model}"
    assert resolve_late_tokens(name, seed=1234, model="sd_xl_base_1.0") == "a-red-fox-1234-sd-xl-base-1-0"
    assert resolve_late_tokens(name, seed=None, model=None) == "a-red-fox-none-none"


def test_expand_name_of_a_process_job_has_no_seed_or_model() -> None:
    assert expand_name("{prompt}-{seed}-{model}-{batch}", fields(no_generation=True)) == "a-red-fox-none-none-none"


def test_expand_name_of_a_non_latin_prompt_is_not_image() -> None:
    assert expand_name("{prompt}", fields(prompt_label="東京の夜景")) == "東京の夜景"


@pytest.mark.parametrize(
    "template",
    [
        "../{job}",
        "/tmp/{job}",
        "{date}/../../{job}",
        "a//{job}",
        ".sdpipe/{job}",
        "{date}/.hidden",
        "{unknown}",
        "{job!r}",
        "{job:>20}",
        "a\\b{job}",
        "{job",
        "x:y{job}",
        "   ",
    ],
)
def test_check_name_template_refuses_names_outside_output_dir_and_unknown_tokens(template: str) -> None:
    with pytest.raises(InputError) as info:
        check_name_template(template, field="--name-template")
    assert info.value.message.startswith(f"--name-template {template!r}: ")
    assert info.value.field == "--name-template"


def test_claim_output_name_takes_a_free_name(tmp_path: Path) -> None:
    files = JobFiles(tmp_path, JOB)
    assert claim_output_name(files, "2026-12-07/same", "png") == "2026-12-07/same"
    assert json.loads((tmp_path / "2026-12-07" / "same.json").read_text())["job_id"] == JOB


def test_claim_output_name_adds_a_counter_beside_other_files(tmp_path: Path) -> None:
    # Given same.png of another job and same-0001.png that sdpipe did not write
    (tmp_path / "same.json").write_text(json.dumps({"job_id": "a" * 32}))
    (tmp_path / "same.png").write_bytes(b"other job")
    (tmp_path / "same-0001.png").write_bytes(b"a user's file")
    # Then the job takes the next free number and leaves both alone
    assert claim_output_name(JobFiles(tmp_path, JOB), "same", "png") == "same-0002"
    assert (tmp_path / "same.png").read_bytes() == b"other job"
    assert (tmp_path / "same-0001.png").read_bytes() == b"a user's file"


def test_claim_output_name_is_fixed_once_per_job(tmp_path: Path) -> None:
    # Given a job that claimed same-0001 because same was taken
    (tmp_path / "same.png").write_bytes(b"taken")
    files = JobFiles(tmp_path, JOB)
    assert claim_output_name(files, "same", "png") == "same-0001"
    # When the earlier file is deleted and the job's merge runs again (a redelivery or a retry)
    (tmp_path / "same.png").unlink()
    # Then it keeps its name: a re-run never makes a second file
    assert claim_output_name(files, "same", "png") == "same-0001"


def test_claim_output_name_recorded_but_whose_claim_was_lost_never_takes_another_jobs_name(tmp_path: Path) -> None:
    # Given a job that claimed same-0001 and recorded it, and a crash that lost the claim's name (its
    # folder is not synced) but kept the record (synced)
    (tmp_path / "same.png").write_bytes(b"taken")
    files = JobFiles(tmp_path, JOB)
    assert claim_output_name(files, "same", "png") == "same-0001"
    (tmp_path / "same-0001.json").unlink()
    # When another job claims that name first, then this job's merge runs again
    other = "b" * 32
    assert claim_output_name(JobFiles(tmp_path, other), "same", "png") == "same-0001"
    # Then this job takes the next name, and keeps it; the other job's claim stays
    assert claim_output_name(files, "same", "png") == "same-0002"
    assert claim_output_name(files, "same", "png") == "same-0002"
    assert json.loads((tmp_path / "same-0001.json").read_text())["job_id"] == other


def test_claim_output_name_recorded_whose_claim_was_lost_claims_it_again(tmp_path: Path) -> None:
    # Given a job that claimed same-0001, wrote its image, and lost the claim's name to a crash
    (tmp_path / "same.png").write_bytes(b"taken")
    files = JobFiles(tmp_path, JOB)
    assert claim_output_name(files, "same", "png") == "same-0001"
    (tmp_path / "same-0001.json").unlink()
    (tmp_path / "same-0001.png").write_bytes(b"this job's image")
    # When its merge runs again, then it keeps its name and claims it again
    assert claim_output_name(files, "same", "png") == "same-0001"
    assert json.loads((tmp_path / "same-0001.json").read_text())["job_id"] == JOB


def test_claim_output_name_of_the_name_wanted_is_found_again_by_its_claim(tmp_path: Path) -> None:
    # Given a job that claimed the name it wanted: nothing else is written down (its claim says it)
    files = JobFiles(tmp_path, JOB)
    assert claim_output_name(files, "same", "png") == "same"
    assert not files.claimed_name.exists()
    # When its merge runs again, before or after its image was written
    assert claim_output_name(files, "same", "png") == "same"
    (tmp_path / "same.png").write_bytes(b"this job's image")
    # Then it finds its own claim, and another job still gets the next name
    assert claim_output_name(files, "same", "png") == "same"
    assert claim_output_name(JobFiles(tmp_path, "b" * 32), "same", "png") == "same-0001"


def test_claim_output_name_gives_two_jobs_two_names(tmp_path: Path) -> None:
    first = claim_output_name(JobFiles(tmp_path, "a" * 32), "same", "png")
    second = claim_output_name(JobFiles(tmp_path, "b" * 32), "same", "png")
    assert (first, second) == ("same", "same-0001")


def test_claim_output_name_with_overwrite_takes_the_name_as_is(tmp_path: Path) -> None:
    (tmp_path / "same.json").write_text(json.dumps({"job_id": "a" * 32}))
    assert claim_output_name(JobFiles(tmp_path, JOB), "same", "png", overwrite=True) == "same"


def test_claim_output_name_refuses_a_folder_that_leads_outside(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    (root / "escape").symlink_to(tmp_path)
    with pytest.raises(InputError, match="outside OUTPUT_DIR"):
        claim_output_name(JobFiles(root, JOB), "escape/same", "png")
