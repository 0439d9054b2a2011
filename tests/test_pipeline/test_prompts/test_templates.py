"""Prompt templates (pipeline.prompts.templates) and sweeps (pipeline.prompts.sweeps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.prompts import TemplateMode, expand_templates, parse_sweeps, sweep_combinations

TEMPLATE = "a {red|green} {car|boat} in __weather__"


@pytest.fixture
def wildcards(tmp_path: Path) -> Path:
    folder = tmp_path / "wildcards"
    (folder / "styles").mkdir(parents=True)
    (folder / "weather.txt").write_text("rain\nfog\nsnow\n")
    (folder / "styles" / "cinematic.txt").write_text("noir\nteal and orange\n")
    return folder


def test_combinatorial_template_makes_every_distinct_prompt(wildcards: Path) -> None:
    expansions = expand_templates(TEMPLATE, "", wildcards_dir=wildcards, mode=TemplateMode(combinatorial=True), count=1)
    prompts = [e.prompt for e in expansions]
    assert len(prompts) == 12 == len(set(prompts))
    assert "a green boat in snow" in prompts
    assert [e.index for e in expansions] == list(range(12))
    for expansion in expansions:  # the picks recorded are the ones that make the prompt
        assert expansion.picks is not None
        assert expansion.prompt == "a {} {} in {}".format(*(pick["value"] for pick in expansion.picks))


def test_nested_folder_wildcards_and_counted_picks_expand(wildcards: Path) -> None:
    mode = TemplateMode(combinatorial=True)
    prompts = [
        e.prompt for e in expand_templates("__styles/cinematic__", "", wildcards_dir=wildcards, mode=mode, count=1)
    ]
    assert prompts == ["noir", "teal and orange"]
    picks = expand_templates("{2$$a|b|c}", "", wildcards_dir=wildcards, mode=mode, count=1)
    assert len(picks) == 6 and all("," in e.prompt for e in picks)
    nested = expand_templates("{x|{y|z}}", "", wildcards_dir=wildcards, mode=mode, count=1)
    assert sorted(e.prompt for e in nested) == ["x", "y", "z"]


def test_random_template_with_seed_repeats_and_records_it(wildcards: Path) -> None:
    mode = TemplateMode(seed=42)
    first = expand_templates(TEMPLATE, "", wildcards_dir=wildcards, mode=mode, count=5)
    again = expand_templates(TEMPLATE, "", wildcards_dir=wildcards, mode=mode, count=5)
    assert [e.prompt for e in first] == [e.prompt for e in again]
    record = first[0].record(prompt_template=TEMPLATE, negative_template="", combinatorial=False)
    choices = record["choices"]
    assert (record["prompt"], choices["mode"], choices["index"], choices["template_seed"]) == (
        TEMPLATE,
        "random",
        0,
        42,
    )
    picks = {pick["part"]: pick["value"] for pick in choices["picks"]}
    assert f"a {picks['{red|green}']} {picks['{car|boat}']} in {picks['__weather__']}" == first[0].prompt


def test_random_template_without_seed_varies_between_runs(wildcards: Path) -> None:
    runs = {
        tuple(e.prompt for e in expand_templates(TEMPLATE, "", wildcards_dir=wildcards, mode=TemplateMode(), count=8))
        for _ in range(5)
    }
    assert len(runs) > 1


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("a {red|green", "unbalanced '{' at character 3"),
        ("a red}", "unbalanced '}'"),
        ("in __nowhere__", "wildcard __nowhere__ has no file"),
    ],
)
def test_broken_template_is_refused_with_one_message(wildcards: Path, template: str, words: str) -> None:
    with pytest.raises(InputError) as caught:
        expand_templates(template, "", wildcards_dir=wildcards, mode=TemplateMode(), count=1)
    assert words in caught.value.message
    assert "\n" not in caught.value.message


def test_combinatorial_count_above_the_cap_is_refused(wildcards: Path) -> None:
    with pytest.raises(InputError) as caught:
        expand_templates(TEMPLATE, "", wildcards_dir=wildcards, mode=TemplateMode(True, max_prompts=11), count=1)
    assert "more than 11 prompts" in caught.value.message
    assert caught.value.limit == 11


def test_sweeps_multiply_in_order_the_last_fastest() -> None:
    sweeps = parse_sweeps(["cfg_scale=5,7,9", "sampler_name=Euler a,DPM++ 2M"])
    combos = sweep_combinations(sweeps)
    assert len(combos) == 6
    assert combos[:2] == [{"cfg_scale": "5", "sampler_name": "Euler a"}, {"cfg_scale": "5", "sampler_name": "DPM++ 2M"}]


def test_malformed_sweep_is_refused() -> None:
    with pytest.raises(InputError, match="not KEY=V1,V2"):
        parse_sweeps(["cfg_scale"])
