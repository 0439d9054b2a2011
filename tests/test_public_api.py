"""Each package names its public surface in ``__all__``, and every name there exists."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["pipeline", "pipeline.store", "actors", "cli"])
def test_package_all_names_exist_and_are_unique(package: str) -> None:
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert len(names) == len(set(names))
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == []


def test_pipeline_all_lists_every_error_type() -> None:
    import pipeline
    from pipeline import errors

    error_types = {name for name in errors.__all__ if name != "PERMANENT_ERRORS"}
    assert error_types <= set(pipeline.__all__)


def test_permanent_errors_cover_every_non_transient_error() -> None:
    from pipeline.errors import PERMANENT_ERRORS, PipelineError, SDError

    def walk(cls: type[PipelineError]) -> list[type[PipelineError]]:
        return [cls, *(sub for child in cls.__subclasses__() for sub in walk(child))]

    for cls in walk(PipelineError):
        if cls in (PipelineError, SDError):
            continue  # abstract roots: concrete errors are raised as their subclasses
        assert issubclass(cls, PERMANENT_ERRORS) != cls.transient, cls
