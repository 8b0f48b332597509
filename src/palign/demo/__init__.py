"""The demo: align a model to one PAPI person with PAS and show what changed, in minutes.

Usable without the command line::

    from palign.demo import DemoConfig, run_demo, render_text
    res = run_demo(DemoConfig(model="smollm2", max_items=20))
    print(render_text(res))

The five parts of the result: the person's Big Five profile beside the population
(:mod:`palign.demo.profile`), the per-trait errors of vanilla, PAS and the reference
predictors (the ``palign compare`` payload of ordinary runs), three held-out statements where
vanilla and PAS disagree (:mod:`palign.demo.select`, a fixed rule), both models' answers to one
open question, and the commands to go on.
"""

from __future__ import annotations

from typing import Any

DEMO_MODEL = "qwen2.5-coder-1.5b"
"""The model of ``palign demo`` and ``./dev demo`` (an alias of ``palign models``): the smallest
alias on which PAS at all positions moved a person's answers toward the person
(docs/results/alpha-selection.md: on qwen2.5-coder-0.5b steering collapses every answer to one
letter)."""

DEMO_MAX_ITEMS = 60
"""Test items the command-line demo reads unless ``--max-items`` is given (12 per trait)."""

DEMO_ALPHA_GRID = (0.0, 1.0)
"""The held-out alpha search's grid of the command-line demo unless ``--alpha-grid`` or another
``--alpha-selection`` is given (the full evaluation searches 0,1,2,4,6,8)."""


def render_text(result: dict[str, Any]) -> str:
    """The demo's terminal report of a :func:`run_demo` result."""
    from palign.demo.render import render
    from palign.eval.compare import compare_table

    return render(result, compare_table(result["numbers"]))


def __getattr__(name: str) -> Any:  # lazy: importing DEMO_MODEL must not import torch
    if name in ("DemoConfig", "run_demo", "DEMO_QUESTION", "PERSON_RULE"):
        from palign.demo import run

        return getattr(run, name)
    raise AttributeError(name)


__all__ = [
    "DEMO_ALPHA_GRID",
    "DEMO_MAX_ITEMS",
    "DEMO_MODEL",
    "DEMO_QUESTION",
    "PERSON_RULE",
    "DemoConfig",
    "render_text",
    "run_demo",
]
