"""Unit tests of pipeline.images.infotext against A1111 v1.10's infotext layout and parser rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.images.infotext import build_infotext, format_value, insert_params, parse_infotext

A1111_EXAMPLE = (
    "masterpiece, best quality, 1girl, <lora:add_detail:0.5>\n"
    "Negative prompt: lowres, bad anatomy\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "add_detail: 7c6bad76eb54", '
    "Version: v1.10.1"
)
PARAMS = {"Steps": 20, "Sampler": "Euler", "CFG scale": 7.0, "Seed": 1234, "Size": "512x512"}


def test_parse_infotext_reads_the_a1111_example() -> None:
    assert parse_infotext(A1111_EXAMPLE) == {
        "Prompt": "masterpiece, best quality, 1girl, <lora:add_detail:0.5>",
        "Negative prompt": "lowres, bad anatomy",
        "Steps": "20",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7.0",
        "Seed": "1234",
        "Size-1": "512",
        "Size-2": "768",
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "Lora hashes": "add_detail: 7c6bad76eb54",
        "Version": "v1.10.1",
    }


def test_parse_infotext_reads_the_docstring_example_of_a1111() -> None:
    text = (
        "girl with an artist's beret, determined, blue eyes, desert scene\n"
        "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry]\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"
    )
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "girl with an artist's beret, determined, blue eyes, desert scene"
    assert parsed["Negative prompt"] == "ugly, fat, obese, chubby, (((deformed))), [blurry]"
    assert (parsed["Sampler"], parsed["CFG scale"], parsed["Model hash"]) == ("Euler a", "7", "45dee52b")


def test_parse_infotext_joins_multi_line_prompts() -> None:
    text = "line one\n  line two  \nNegative prompt: neg one\nneg two\nSteps: 20, Sampler: Euler, Seed: 1"
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "line one\nline two"
    assert parsed["Negative prompt"] == "neg one\nneg two"


def test_parse_infotext_treats_a_short_last_line_as_prompt() -> None:
    # Two pairs only: A1111 reads the last line as prompt text
    parsed = parse_infotext("a cat\nSteps: 20, Seed: 1")
    assert parsed == {"Prompt": "a cat\nSteps: 20, Seed: 1", "Negative prompt": ""}


def test_parse_infotext_handles_empty_prompt_and_negative() -> None:
    assert parse_infotext("Steps: 20, Sampler: Euler, Seed: 3") == {
        "Prompt": "",
        "Negative prompt": "",
        "Steps": "20",
        "Sampler": "Euler",
        "Seed": "3",
    }
    parsed = parse_infotext("Negative prompt: bad\nSteps: 20, Sampler: Euler, Seed: 3")
    assert (parsed["Prompt"], parsed["Negative prompt"]) == ("", "bad")


def test_parse_infotext_decodes_quoted_values_and_drops_empty_ones() -> None:
    line = 'Steps: 20, TI hashes: "a: 1, b: 2", Hires prompt: "x\\ny \\"z\\"", Empty: , Seed: 5'
    parsed = parse_infotext(line)
    assert parsed["TI hashes"] == "a: 1, b: 2"
    assert parsed["Hires prompt"] == 'x\ny "z"'
    assert "Empty" not in parsed and parsed["Seed"] == "5"


def test_format_value_quotes_only_when_needed() -> None:
    assert format_value(7.0) == "7.0"
    assert format_value(20) == "20"
    assert format_value(True) == "True"
    assert format_value("Euler a") == "Euler a"
    assert format_value("add_detail: 7c6bad76eb54") == '"add_detail: 7c6bad76eb54"'
    assert format_value("a, b") == '"a, b"'
    assert format_value("naïve\nline") == '"naïve\\nline"'


def test_build_infotext_follows_a1111_layout() -> None:
    text = build_infotext("a cat", "blurry", {**PARAMS, "Clip skip": None, "Tiling": "Tiling"})
    assert text == (
        "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, CFG scale: 7.0, Seed: 1234, Size: 512x512, Tiling"
    )


def test_build_infotext_omits_empty_negative_and_strips() -> None:
    assert build_infotext("a cat", "", PARAMS).split("\n")[0] == "a cat"
    assert build_infotext("", "", PARAMS).startswith("Steps: 20")
    assert build_infotext("", "bad", PARAMS).startswith("Negative prompt: bad\n")


@settings(max_examples=60)
@given(
    prompt=st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=40),
    negative=st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=40),
    note=st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=30),
    seed=st.integers(0, 2**32),
)
def test_build_infotext_round_trips_through_parse(prompt: str, negative: str, note: str, seed: int) -> None:
    # Given single-line prompts that A1111 itself could round-trip
    prompt, negative = prompt.strip(), negative.strip()
    note = note.strip() or "x"
    if prompt.startswith("Negative prompt:"):
        prompt = "p " + prompt
    params = {**PARAMS, "Seed": seed, "Note": note}
    parsed = parse_infotext(build_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt and parsed["Negative prompt"] == negative
    assert parsed["Seed"] == str(seed) and parsed["Note"] == note
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "512")


def test_insert_params_goes_before_version_and_replaces_in_place() -> None:
    text = insert_params(A1111_EXAMPLE, {"Seam blur": 8, "Grid": "2x2", "Seed": 99, "Skip": None})
    last = text.split("\n")[-1]
    assert last.endswith('Lora hashes: "add_detail: 7c6bad76eb54", Seam blur: 8, Grid: 2x2, Version: v1.10.1')
    assert "CFG scale: 7.0, Seed: 99, Size: 512x768" in last and "Skip" not in last
    assert text.split("\n")[:2] == A1111_EXAMPLE.split("\n")[:2]
    parsed = parse_infotext(text)
    assert (parsed["Seam blur"], parsed["Seed"]) == ("8", "99")
    assert (parsed["Grid-1"], parsed["Grid-2"]) == ("2", "2")  # A1111 splits every WxH value


def test_insert_params_appends_when_there_is_no_version() -> None:
    text = insert_params("a cat\nSteps: 20, Sampler: Euler, Seed: 1, ", {"Seam blur": "8, soft"})
    assert text == 'a cat\nSteps: 20, Sampler: Euler, Seed: 1, Seam blur: "8, soft"'


def test_insert_params_keeps_bare_flags() -> None:
    text = insert_params("Steps: 20, Tiling, Sampler: Euler, Seed: 1, Version: v1", {"Seam blur": 8})
    assert text == "Steps: 20, Tiling, Sampler: Euler, Seed: 1, Seam blur: 8, Version: v1"


def test_insert_params_without_params_line_writes_one() -> None:
    extra = {"Seam blur": 8, "Seam sigma": 4.0, "Grid": "2x2"}
    assert insert_params(None, extra) == "Seam blur: 8, Seam sigma: 4.0, Grid: 2x2"
    text = insert_params("just a prompt", extra)
    assert text == "just a prompt\nSeam blur: 8, Seam sigma: 4.0, Grid: 2x2"
    assert parse_infotext(text)["Prompt"] == "just a prompt"


@pytest.mark.parametrize("key", ["Bad:key", "x", " Lead", "Trail ", "Ünï", "a,b"])
def test_insert_params_rejects_keys_a1111_cannot_parse(key: str) -> None:
    with pytest.raises(ValueError, match="infotext key"):
        insert_params(A1111_EXAMPLE, {key: 1})


def test_insert_params_drops_the_pairs_asked_wherever_they_are() -> None:
    text = "a fox\nModel: foo, Steps: 20, Model hash: abc, Sampler: Euler, Version: v1"
    last = "a fox\nSteps: 20, Sampler: Euler, Model: foo"

    assert insert_params(text, {"Upscale": 2}, drop=("Model", "Model hash")) == (
        "a fox\nSteps: 20, Sampler: Euler, Upscale: 2, Version: v1"
    )
    assert insert_params(last, {"Upscale": 2}, drop=("Model",)) == "a fox\nSteps: 20, Sampler: Euler, Upscale: 2"
    assert insert_params(last, {"Model": "bar"}, drop=("Model",)) == "a fox\nSteps: 20, Sampler: Euler, Model: bar"
