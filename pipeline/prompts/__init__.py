"""Prompt templates and parameter sweeps: what turns one batch row into many jobs.

- :mod:`~pipeline.prompts.templates`: ``{a|b}`` variants and ``__wildcards__`` (the ``dynamicprompts``
  library), checked before anything is enqueued; combinatorial or seeded random expansion.
- :mod:`~pipeline.prompts.sweeps`: ``--sweep KEY=V1,V2`` parsed, and the product of the sweeps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.prompts.sweeps import MAX_SWEEP_JOBS, parse_sweeps, sweep_combinations
    from pipeline.prompts.templates import Expansion, TemplateMode, check_template, expand_templates, is_template

__all__ = [
    "Expansion",
    "TemplateMode",
    "check_template",
    "expand_templates",
    "is_template",
    "MAX_SWEEP_JOBS",
    "parse_sweeps",
    "sweep_combinations",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".templates": ["Expansion", "TemplateMode", "check_template", "expand_templates", "is_template"],
        ".sweeps": ["MAX_SWEEP_JOBS", "parse_sweeps", "sweep_combinations"],
    },
)
