"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package names its public surface in ``__all__`` but imports a submodule only when one of its names
is first used, so ``import pipeline.sd.backends`` does not pay for httpx, and ``sdpipe --help`` loads
no numpy: start-up time is a feature of the CLI. Type checkers see the names through the package's
``if TYPE_CHECKING:`` imports; at run time :func:`lazy_exports` resolves them::

    __getattr__, __dir__ = lazy_exports(__name__, {".client": ["SDClient"]})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, importing ``module`` the first time one of its names is read.

    ``exports`` maps a module (relative to ``package``, e.g. ``".client"``) to the names it provides.
    A resolved name is stored on the package, so later reads are plain attribute reads.
    """
    owner = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = owner.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(owner))

    return __getattr__, __dir__
