"""``sdpipe batch`` with rows naming checkpoints (issue 15), on one in-process mock server that loads
checkpoints like A1111: rows go grouped by checkpoint, so the server loads each once; with
``--keep-order`` in file order, one load per change of checkpoint. Manifests keep file order."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from pipeline.sd.mock.http import get_mock_server
from tests.test_cli.conftest import Invoke

MODELS = ["a", "b", "c"]
ROWS = 30


def _batch(sdpipe: Invoke, tmp_path: Path, *flags: str, loaded_first: str) -> tuple[int, dict[str, object]]:
    url = f"mock://batch-{uuid.uuid4().hex[:8]}?models={loaded_first};a;b;c&model_load_ms=1"
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"prompt": f"row {i}", "seed": i, "model": MODELS[i % 3], "width": 64, "height": 64}) + "\n"
            for i in range(ROWS)
        )
    )
    result = sdpipe("batch", str(rows), "--sd-url", url, "--json", *flags, env={"WORKER_THREADS": "1"})
    assert result.exit_code == 0, result.output
    return int(get_mock_server(url).stats()["model_loads"]), json.loads(result.stdout)


def _rendered(manifest: dict[str, object]) -> list[tuple[int, str]]:
    """(line, checkpoint of its image) per row, in manifest order, from each sidecar."""
    out = []
    for row in manifest["rows"]:  # type: ignore[attr-defined]
        (job,) = row["jobs"]
        sidecar = json.loads(Path(job["output"]).with_suffix(".json").read_text())
        out.append((row["line"], sidecar["model_name"]))
    return out


@pytest.mark.parametrize(("loaded_first", "loads"), [("a", 2), ("x", 3)])
def test_batch_rows_naming_three_interleaved_checkpoints_load_each_once(
    sdpipe: Invoke, tmp_path: Path, loaded_first: str, loads: int
) -> None:
    count, manifest = _batch(sdpipe, tmp_path, loaded_first=loaded_first)
    assert count == loads
    # the manifest keeps file order, and every image is of the checkpoint its row named
    assert _rendered(manifest) == [(i + 1, MODELS[i % 3]) for i in range(ROWS)]


def test_batch_keep_order_loads_once_per_change_of_checkpoint(sdpipe: Invoke, tmp_path: Path) -> None:
    # a, b, c, a, b, c, ...: 29 changes after the first row, whose a is loaded already
    count, manifest = _batch(sdpipe, tmp_path, "--keep-order", loaded_first="a")
    assert count == ROWS - 1
    assert _rendered(manifest) == [(i + 1, MODELS[i % 3]) for i in range(ROWS)]
