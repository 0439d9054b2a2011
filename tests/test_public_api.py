"""Each package names its public surface in ``__all__``, and every name there exists."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "pipeline",
    "pipeline.sd",
    "pipeline.sd.pool",
    "pipeline.sd.mock",
    "pipeline.images",
    "pipeline.jobs",
    "pipeline.batches",
    "pipeline.prompts",
    "pipeline.store",
    "pipeline.storage",
    "pipeline.events",
    "pipeline.webhooks",
    "actors",
    "cli",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_package_all_names_exist_and_are_unique(package: str) -> None:
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert len(names) == len(set(names))
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == []


def test_errors_all_lists_every_error_type() -> None:
    from pipeline import errors

    def walk(cls: type[errors.PipelineError]) -> list[type[errors.PipelineError]]:
        return [cls, *(sub for child in cls.__subclasses__() for sub in walk(child))]

    defined_here = {cls.__name__ for cls in walk(errors.PipelineError) if cls.__module__ == errors.__name__}
    assert defined_here <= set(errors.__all__)


def test_permanent_errors_cover_every_non_transient_error() -> None:
    from pipeline.errors import PERMANENT_ERRORS, PipelineError, SDError

    def walk(cls: type[PipelineError]) -> list[type[PipelineError]]:
        return [cls, *(sub for child in cls.__subclasses__() for sub in walk(child))]

    for cls in walk(PipelineError):
        if cls in (PipelineError, SDError):
            continue  # abstract roots: concrete errors are raised as their subclasses
        assert issubclass(cls, PERMANENT_ERRORS) != cls.transient, cls
