"""Parsing judgements: the clean-parse rule and the probability-weighted score.

Clean parse (the rubric asks for the choice on its own line, then repeated on the last line):
the judgement's lines are stripped of surrounding whitespace and markdown emphasis (``*``,
`````) and empty lines dropped; it parses iff the last line is exactly one choice, at least one
earlier line is exactly a choice too (the repetition), and every line that is exactly a
choice names the same one. Anything else (no final choice, a missing repetition, two
different bare choices, "Score: 4", "4/6", "4.") is *unparsed* and counted as such.
"""

from __future__ import annotations

import math
from typing import Any

_STRIP = " \t*`"


def _lines(text: str) -> list[str]:
    return [s for s in (line.strip(_STRIP) for line in text.splitlines()) if s]


def parse_choice(text: str | None, choices: str) -> str | None:
    """The judged choice of ``text`` under the clean-parse rule, or None (unparsed)."""
    if not text:
        return None
    lines = _lines(text)
    if not lines or lines[-1] not in choices or len(lines[-1]) != 1:
        return None
    bare = [s for s in lines if len(s) == 1 and s in choices]
    if len(bare) < 2 or any(b != lines[-1] for b in bare):
        return None
    return lines[-1]


def parse_score(text: str | None) -> int | None:
    """Clean-parse a 1-6 rubric judgement."""
    c = parse_choice(text, "123456")
    return int(c) if c is not None else None


def choice_distribution(
    candidates: list[dict[str, Any]] | None, choices: str
) -> tuple[dict[str, float], float] | None:
    """Probabilities of ``choices`` at the judgement's final choice token.

    ``candidates`` holds, for each generated position whose token is (stripped) one of the
    choices, ``{"token": sampled token, "top": {token: logprob}}`` in order; the last one is
    the final repeated choice. Token variants (``"4"``, ``" 4"``) are summed per choice, then
    renormalised over the choices. Returns ``(probabilities, mass)`` where ``mass`` is the
    probability the top list gave the choices before renormalising, or None when unavailable.
    """
    if not candidates:
        return None
    top = candidates[-1].get("top") or {}
    probs = dict.fromkeys(choices, 0.0)
    for tok, lp in top.items():
        key = tok.strip()
        if key in probs and lp is not None and math.isfinite(lp):
            probs[key] += math.exp(lp)
    mass = sum(probs.values())
    if mass <= 0:
        return None
    return {k: v / mass for k, v in probs.items()}, mass


def weighted_score(candidates: list[dict[str, Any]] | None) -> float | None:
    """Probability-weighted 1-6 score, ``sum_k k * p_k``, at the final choice token."""
    d = choice_distribution(candidates, "123456")
    if d is None:
        return None
    return sum(int(k) * p for k, p in d[0].items())
