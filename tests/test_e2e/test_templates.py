"""Prompt templates and sweeps end to end: redis-server, 2 worker processes, the mock SD server over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_until
from tests.test_e2e.conftest import Proc, run_sdpipe

pytestmark = pytest.mark.e2e


def _sent(mock_sd: str) -> list[dict[str, object]]:
    answer = httpx.get(f"{mock_sd}/mock/requests", params={"route": "/sdapi/v1/txt2img"}, timeout=5).json()
    return [entry["body"] for entry in answer["requests"]]


def test_combinatorial_row_sends_twelve_distinct_prompts_as_expanded(
    e2e_env: dict[str, str], mock_sd: str, workers: Proc, tmp_path: Path
) -> None:
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "weather.txt").write_text("rain\nfog\nsnow\n")
    rows = tmp_path / "rows.csv"
    rows.write_text('prompt,template\n"a {red|green} {car|boat} in __weather__",true\n')
    env = {**e2e_env, "WILDCARDS_DIR": str(tmp_path / "wildcards"), "WIDTH": "64", "HEIGHT": "64"}
    plan = run_sdpipe("batch", str(rows), "--combinatorial", "--dry-run", "--json", env=env)
    assert plan.returncode == 0, plan.stderr
    planned = [row["prompt"] for row in json.loads(plan.stdout)["rows"]]
    result = run_sdpipe("batch", str(rows), "--combinatorial", env=env)
    assert result.returncode == 0, result.stdout + result.stderr + workers.output()
    prompts = [str(body["prompt"]) for body in _sent(mock_sd)]
    assert len(prompts) == 12 == len(set(prompts))
    assert sorted(prompts) == sorted(planned)


def test_sweep_contact_sheet_is_written_by_the_workers_without_a_waiting_client(
    e2e_env: dict[str, str], mock_sd: str, workers: Proc, tmp_path: Path
) -> None:
    rows = tmp_path / "p.txt"
    rows.write_text("a lighthouse\n")
    env = {**e2e_env, "WIDTH": "64", "HEIGHT": "64"}
    result = run_sdpipe(
        "batch", str(rows), "--no-wait", "--contact-sheet",
        "--sweep", "cfg_scale=5,7,9", "--sweep", "sampler_name=Euler a,DPM++ 2M", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    batch_id = result.stdout.split()[1]
    sheet = Path(e2e_env["OUTPUT_DIR"]) / "batches" / f"{batch_id}-contact-sheet.png"
    assert wait_until(sheet.exists, timeout_s=120), workers.output()
    sidecar = json.loads(sheet.with_suffix(".json").read_text())
    assert len(sidecar["cells"]) == 6
    assert len(_sent(mock_sd)) == 6
    assert not list(sheet.parent.glob(".*.tmp"))
