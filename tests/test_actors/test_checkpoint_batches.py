"""A batch that mixes checkpoints, on one server, through the real actors (embedded): grouped by
checkpoint it pays one load per checkpoint; in file order, one per change of checkpoint."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from actors import Runtime, open_runtime
from pipeline.batches.files import PlannedRow
from pipeline.jobs.planning import GenerationRequest, build_step_params, new_id, plan_generate
from pipeline.models import JobRecord, JobSpec
from pipeline.sd.mock.http import get_mock_server
from pipeline.sd.pool.affinity import grouped_by_checkpoint
from pipeline.settings import Settings

Wait = Callable[[Runtime, list[str]], list[JobRecord]]
MODELS = ["a", "b", "c"]


def _rows(settings: Settings, batch_id: str, models: list[str | None]) -> list[PlannedRow]:
    params = build_step_params(settings, grid="2x2", band_px=8, sigma=2.0)
    rows = []
    for index, model in enumerate(models):
        override = {"sd_model_checkpoint": model} if model else None
        request = GenerationRequest(prompt=f"row {index}", seed=index, width=64, height=64, override_settings=override)
        specs = plan_generate(settings, request, params, batch_id=batch_id, now=time.time())
        rows.append(PlannedRow(line=index + 1, params={"prompt": request.prompt, "model": model}, specs=specs))
    return rows


def _run(settings: Settings, wait_terminal: Wait, *, loaded_first: str, keep_order: bool, threads: int = 1) -> int:
    url = f"mock://batch-{uuid.uuid4().hex[:8]}?models={loaded_first};a;b;c&model_load_ms=1"
    settings = settings.model_copy(update={"sd_api_url": url, "worker_threads": threads})
    models: list[str | None] = [MODELS[i % 3] for i in range(30)]
    with open_runtime(settings) as rt:
        batch_id = new_id()
        rows = _rows(settings, batch_id, models)
        rt.submit_rows(rows, batch_id=batch_id, source=None, now=time.time(), keep_order=keep_order)
        records = wait_terminal(rt, [spec.job_id for row in rows for spec in row.specs])
        assert all(r.state.value == "succeeded" for r in records), [r.error for r in records]
        # every image is of the checkpoint its row named, and the manifest keeps file order
        assert [r.sd_info.get("model_name") if r.sd_info else None for r in records] == models
        assert [row.line for row in rt.store.get_batch(batch_id).rows] == list(range(1, 31))
    return int(get_mock_server(url).stats()["model_loads"])


@pytest.mark.parametrize(("loaded_first", "loads"), [("a", 2), ("x", 3)])
def test_batch_of_three_interleaved_checkpoints_loads_each_once(
    settings: Settings, wait_terminal: Wait, loaded_first: str, loads: int
) -> None:
    assert _run(settings, wait_terminal, loaded_first=loaded_first, keep_order=False) == loads


def test_batch_keep_order_loads_once_per_change_of_checkpoint(settings: Settings, wait_terminal: Wait) -> None:
    # a, b, c, a, b, c, ...: 29 changes after the first row, whose a is loaded already
    assert _run(settings, wait_terminal, loaded_first="a", keep_order=True) == 29


def _spec(model: str | None) -> JobSpec:
    settings = Settings(_env_file=None, sd_api_url="mock://")  # type: ignore[call-arg]
    override = {"sd_model_checkpoint": model} if model else None
    request = GenerationRequest(prompt="p", width=64, height=64, override_settings=override)
    (spec,) = plan_generate(settings, request, build_step_params(settings, grid="2x2", band_px=8, sigma=2.0), now=1.0)
    return spec


def test_grouped_by_checkpoint_keeps_first_appearance_and_file_order_within_a_group() -> None:
    specs = [_spec(m) for m in ["b.safetensors", None, "a", "B", "a.safetensors [163f4dbbad]", None]]
    grouped = grouped_by_checkpoint(specs)
    assert [specs.index(s) for s in grouped] == [0, 3, 1, 5, 2, 4]
