"""The API in Redis mode over real processes: ``sdpipe serve`` and ``sdpipe worker`` on a private redis-server."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import free_port, port_open, wait_until
from tests.test_api.conftest import assert_error, noise_image, png_bytes
from tests.test_api.test_files import far_from_cuts
from tests.test_e2e.conftest import Proc, start_worker

pytestmark = pytest.mark.e2e

TOKEN = "redis-mode-token"


def test_files_async_completes_through_redis_mode_workers(e2e_env: dict[str, str], spawn: Callable[..., Proc]) -> None:
    # Given 2 worker processes and `sdpipe serve`, both on the private Redis
    workers = start_worker(spawn, {**e2e_env, "SD_API_URL": "mock://"})
    port = free_port()
    env = {**e2e_env, "API_TOKEN": TOKEN, "SD_API_URL": "mock://"}
    server = spawn("serve", "--port", str(port), env=env, name="serve")
    assert wait_until(lambda: port_open(port) or server.popen.poll() is not None, timeout_s=30), server.output()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=60) as client:
        _upload_and_generate(client, workers, server)


def _upload_and_generate(client: httpx.Client, workers: Proc, server: Proc) -> None:
    assert client.get("/readyz").json()["status"] == "ready"

    # When an image is uploaded to the async endpoint
    source = noise_image(128, 96, seed=11)
    response = client.post(
        "/api/files/async", files={"file": ("photo.png", png_bytes(source), "image/png")}, data={"band_px": "8"}
    )
    # Then it is accepted at once, and the workers complete the job
    assert response.status_code == 202, response.text
    status_url = response.json()["status_url"]
    assert wait_until(lambda: client.get(status_url).json()["state"] == "succeeded", timeout_s=60), (
        client.get(status_url).text + workers.output() + server.output()
    )
    job = client.get(status_url).json()
    assert set(job["steps"]) == {"split", "seam_blur", "merge"}
    # and its image is the merged upload: equal away from the seams
    image = client.get(job["result_url"])
    assert image.status_code == 200
    with Image.open(io.BytesIO(image.content)) as im:
        merged = np.asarray(im.convert("RGB"))
    far = far_from_cuts(128, 96, 2, 2, 8)
    assert np.array_equal(merged[far], source[far])

    # And a blocking generation goes through the workers too
    done = client.post(
        "/api/generate", params={"wait": "true"}, json={"prompt": "a fox", "width": 64, "height": 64, "band_px": 4}
    )
    assert done.status_code == 200, done.text
    assert done.json()["jobs"][0]["state"] == "succeeded"


def test_wait_that_times_out_says_no_worker_is_alive(e2e_env: dict[str, str], spawn: Callable[..., Proc]) -> None:
    # Given `sdpipe serve` in Redis mode and no `sdpipe worker` running
    port = free_port()
    env = {**e2e_env, "API_TOKEN": TOKEN, "SD_API_URL": "mock://", "API_WAIT_TIMEOUT_S": "1"}
    server = spawn("serve", "--port", str(port), env=env, name="serve")
    assert wait_until(lambda: port_open(port) or server.popen.poll() is not None, timeout_s=30), server.output()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=60) as client:
        # When a blocking generation times out
        response = client.post(
            "/api/generate", params={"wait": "true"}, json={"prompt": "a fox", "width": 64, "height": 64}
        )
    # Then the 504 says why the job did not move, and what to do
    error = assert_error(response, 504, "timeout")
    assert "no sdpipe worker has been alive" in error["message"], error
    assert "start `sdpipe worker`" in error["hint"]
