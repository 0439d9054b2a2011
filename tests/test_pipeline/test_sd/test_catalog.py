"""ServerCatalog against respx routes: checkpoints, samplers, schedulers and field names resolved before enqueue."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from pipeline.errors import InputError
from pipeline.jobs.planning import GenerationRequest, build_step_params, plan_generate
from pipeline.models import GenerationParams
from pipeline.sd import catalog as catalog_module
from pipeline.sd.catalog import ServerCatalog
from pipeline.sd.client import SDClient
from pipeline.sd.response import checkpoint_matches
from pipeline.settings import Settings
from pipeline.upscale.params import UpscaleParams

BASE = "http://catalog.test:7860"
MODELS = [
    {
        "title": "v1-5-pruned-emaonly.safetensors [6ce0161689]",
        "model_name": "v1-5-pruned-emaonly",
        "hash": "6ce0161689",
        "sha256": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
        "filename": "/models/Stable-diffusion/v1-5-pruned-emaonly.safetensors",
    },
    {"title": "sdxl_base.safetensors [31e35c80fc]", "model_name": "sdxl_base", "hash": "31e35c80fc"},
]
SAMPLERS = [{"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"]}, {"name": "Euler a", "aliases": ["k_euler_a"]}]
UPSCALERS = [{"name": "None"}, {"name": "Lanczos"}, {"name": "R-ESRGAN 4x+"}, {"name": "ESRGAN_4x"}]
SCHEDULERS = [{"name": "automatic", "label": "Automatic", "aliases": None}, {"name": "karras", "label": "Karras"}]
OPENAPI = {
    "paths": {
        "/sdapi/v1/txt2img": {
            "post": {
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Txt2Img"}}}}
            }
        }
    },
    "components": {"schemas": {"Txt2Img": {"properties": {"prompt": {}, "enable_hr": {}, "hr_scale": {}}}}},
}


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    catalog_module._cache.clear()
    catalog_module._warned.clear()
    yield
    catalog_module._cache.clear()
    catalog_module._warned.clear()


@pytest.fixture
def sd_api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        router.get("/sdapi/v1/sd-models").respond(200, json=MODELS)
        router.get("/sdapi/v1/samplers").respond(200, json=SAMPLERS)
        router.get("/sdapi/v1/schedulers").respond(200, json=SCHEDULERS)
        router.get("/sdapi/v1/upscalers").respond(200, json=UPSCALERS)
        router.get("/openapi.json").respond(200, json=OPENAPI)
        yield router


@pytest.fixture
def catalog() -> Iterator[ServerCatalog]:
    with SDClient(Settings(_env_file=None, sd_api_url=BASE)) as client:  # type: ignore[call-arg]
        yield ServerCatalog(client)


def params(**overrides: Any) -> GenerationParams:
    fields: dict[str, Any] = {"prompt": "p", "steps": 20, "cfg_scale": 7.0, "width": 64, "height": 64}
    return GenerationParams(**(fields | {"sampler_name": "Euler a", "scheduler": "Automatic"} | overrides))


@pytest.mark.parametrize("name", ["sdxl_base", "SDXL_BASE", "31e35c80fc", "sdxl_base.safetensors [31e35c80fc]"])
def test_catalog_resolves_a_checkpoint_to_its_title(
    sd_api: respx.MockRouter, catalog: ServerCatalog, name: str
) -> None:
    checked = catalog.check(params(override_settings={"sd_model_checkpoint": name, "CLIP_stop_at_last_layers": 2}))

    assert checked.override_settings == {
        "sd_model_checkpoint": "sdxl_base.safetensors [31e35c80fc]",
        "CLIP_stop_at_last_layers": 2,
    }


def test_catalog_unknown_checkpoint_names_the_closest(sd_api: respx.MockRouter, catalog: ServerCatalog) -> None:
    with pytest.raises(InputError, match=r"no checkpoint 'sdxl_bse'; closest: sdxl_base.safetensors") as caught:
        catalog.check(params(override_settings={"sd_model_checkpoint": "sdxl_bse"}))
    assert caught.value.field == "sd_model_checkpoint"


def test_catalog_resolves_sampler_and_scheduler_case_insensitively(
    sd_api: respx.MockRouter, catalog: ServerCatalog
) -> None:
    checked = catalog.check(params(sampler_name="euler A", scheduler="karras"))

    assert (checked.sampler_name, checked.scheduler) == ("Euler a", "Karras")
    assert catalog.check(params(sampler_name="k_dpmpp_2m")).sampler_name == "DPM++ 2M"


def test_catalog_unknown_sampler_fails_with_the_servers_list(sd_api: respx.MockRouter, catalog: ServerCatalog) -> None:
    with pytest.raises(InputError, match=r"no sampler 'nonsense'; closest: ") as caught:
        catalog.check(params(sampler_name="nonsense"))
    assert caught.value.field == "sampler_name"
    assert caught.value.expected == "one of: DPM++ 2M, Euler a"


def test_catalog_lists_are_cached_per_server(sd_api: respx.MockRouter, catalog: ServerCatalog) -> None:
    for _ in range(3):
        catalog.check(params(override_settings={"sd_model_checkpoint": "sdxl_base"}))

    assert sd_api.routes[0].call_count == 1  # sd-models
    assert sd_api.routes[1].call_count == 1  # samplers


def test_catalog_known_fields_come_from_openapi(sd_api: respx.MockRouter, catalog: ServerCatalog) -> None:
    assert catalog.known_fields() == frozenset({"prompt", "enable_hr", "hr_scale"})


def test_plan_generate_refuses_an_unknown_field_with_the_closest(
    sd_api: respx.MockRouter, catalog: ServerCatalog, settings: Settings
) -> None:
    request = GenerationRequest(prompt="p", params={"enable_hrr": True})
    step_params = build_step_params(settings, grid=None, band_px=None, sigma=None)

    with pytest.raises(InputError, match=r"unknown field 'enable_hrr'; did you mean 'enable_hr'\?"):
        plan_generate(settings, request, step_params, checker=catalog, now=0.0)


def test_catalog_without_openapi_warns_once_and_sends_names_as_written(
    sd_api: respx.MockRouter, catalog: ServerCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    sd_api.get("/openapi.json").respond(404, json={"detail": "Not Found"})
    catalog_module._cache.clear()

    with caplog.at_level(logging.WARNING, logger="pipeline.sd.catalog"):
        assert catalog.known_fields() is None
        catalog_module._cache.clear()
        assert catalog.known_fields() is None

    assert len([r for r in caplog.records if "/openapi.json" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("asked", "name", "model_hash", "same"),
    [
        ("sdxl_base.safetensors [31e35c80fc]", "sdxl_base", "31e35c80fc", True),
        ("sdxl_base.safetensors [31e35c80fc]", "v1-5-pruned-emaonly", "6ce0161689", False),
        ("sdxl_base", "sdxl_base", None, True),
        ("sdxl_base.safetensors", "v1-5", None, False),
    ],
)
def test_checkpoint_matches_compares_hash_then_name(asked: str, name: str, model_hash: str | None, same: bool) -> None:
    assert checkpoint_matches(asked, name, model_hash) is same


def test_catalog_of_a_server_that_is_down_asks_once_and_checks_nothing(
    catalog: ServerCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        route = router.route().mock(side_effect=httpx.ConnectError("Connection refused"))
        with caplog.at_level(logging.WARNING, logger="pipeline.sd.catalog"):
            assert catalog.known_fields() is None
            asked = params(sampler_name="anything", override_settings={"sd_model_checkpoint": "any"})
            assert catalog.check(asked) == asked

    assert route.call_count == 1  # not once per list: a dead server would cost a timeout each
    assert "cannot reach the SD server" in caplog.text


def test_catalog_check_upscale_sends_the_servers_names(sd_api: respx.MockRouter, catalog: ServerCatalog) -> None:
    asked = UpscaleParams(upscaler="r-esrgan 4x+", sampler_name="k_euler_a", scheduler="karras")

    checked = catalog.check_upscale(asked)

    # A1111's extras look an upscaler up by its exact name: another case would be a 500 there.
    assert (checked.upscaler, checked.sampler_name, checked.scheduler) == ("R-ESRGAN 4x+", "Euler a", "Karras")


@pytest.mark.parametrize(
    ("field", "asked", "closest"),
    [("upscaler", {"upscaler": "R-ESRGAN 4x"}, "R-ESRGAN 4x+"), ("sampler_name", {"sampler_name": "nope"}, "")],
)
def test_catalog_check_upscale_refuses_an_unknown_name_with_the_closest(
    sd_api: respx.MockRouter, catalog: ServerCatalog, field: str, asked: dict[str, Any], closest: str
) -> None:
    with pytest.raises(InputError, match="closest: " + closest) as caught:
        catalog.check_upscale(UpscaleParams(**asked))

    assert caught.value.field == field


def test_catalog_check_upscale_never_asks_for_lanczos(sd_api: respx.MockRouter, catalog: ServerCatalog) -> None:
    listed = sd_api.get("/sdapi/v1/upscalers").respond(200, json=[{"name": "None"}])

    assert catalog.check_upscale(UpscaleParams(upscaler="lanczos")).upscaler == "lanczos"  # runs here
    assert not listed.called


def test_catalog_check_upscale_without_an_upscaler_list_sends_the_name_as_written(
    sd_api: respx.MockRouter, catalog: ServerCatalog
) -> None:
    sd_api.get("/sdapi/v1/upscalers").respond(404, json={"detail": "Not Found"})

    assert catalog.check_upscale(UpscaleParams(upscaler="My Upscaler")).upscaler == "My Upscaler"
