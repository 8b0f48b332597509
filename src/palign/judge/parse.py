"""Parsing judgements: the clean-parse rules and the probability-weighted score.

Two protocols (:data:`palign.judge.prompts.PROTOCOLS`):

- ``score-first``: after leading whitespace, quotes and markdown emphasis (``*``, `````),
  the judgement must start with one choice, not followed by another digit or a decimal part
  ("4", "4\\n...", "4 - because..." parse; "45", "4.5", "Score: 4" do not). The choice's
  position is that first character.
- ``reasoning`` (the paper's; the rubric asks for the choice on its own line, then repeated on
  the last line): the judgement's lines are stripped of surrounding whitespace and markdown
  emphasis and empty lines dropped; it parses iff the last line is exactly one choice, at
  least one earlier line is exactly a choice too (the repetition), and every line that is
  exactly a choice names the same one. Anything else (no final choice, a missing
  repetition, two different bare choices, "Score: 4", "4/6", "4.") is *unparsed* and
  counted as such. The choice's position is the *first* bare choice line: at the repetition
  the judge copies the digit it already wrote (a point mass), so the probabilities there say
  nothing.

The weighted score ``sum_k k p_k`` is read at the choice's position: the generated token that
covers that character offset (each candidate records its ``offset`` in the text).
"""

from __future__ import annotations

import math
import re
from typing import Any

_STRIP = " \t*`"


def _lines(text: str) -> list[str]:
    return [s for s in (line.strip(_STRIP) for line in text.splitlines()) if s]


def parse_choice(text: str | None, choices: str) -> str | None:
    """The judged choice of ``text`` under the reasoning clean-parse rule, or None."""
    if not text:
        return None
    lines = _lines(text)
    if not lines or lines[-1] not in choices or len(lines[-1]) != 1:
        return None
    bare = [s for s in lines if len(s) == 1 and s in choices]
    if len(bare) < 2 or any(b != lines[-1] for b in bare):
        return None
    return lines[-1]


def first_bare_offset(text: str, choice: str) -> int | None:
    """Character offset of ``choice`` on the first line that is exactly that choice."""
    pos = 0
    for line in text.splitlines(keepends=True):
        if line.strip(_STRIP + "\r\n") == choice:
            return pos + line.index(choice)
        pos += len(line)
    return None


def parse_first(text: str | None, choices: str) -> tuple[str, int] | None:
    """The score-first parse of ``text``: ``(choice, character offset)`` or None."""
    if not text:
        return None
    m = re.match(r"[\s*`\"']*([" + re.escape(choices) + r"])(?![0-9])(?![.,][0-9])", text)
    if m is None:
        return None
    return m.group(1), m.start(1)


def parse_judgement(
    text: str | None, choices: str, protocol: str = "score-first"
) -> tuple[str, int] | None:
    """``(choice, character offset of the position to read)`` under ``protocol``, or None."""
    if protocol == "score-first":
        return parse_first(text, choices)
    c = parse_choice(text, choices)
    if c is None or text is None:
        return None
    off = first_bare_offset(text, c)
    return None if off is None else (c, off)


def parse_score(text: str | None, protocol: str = "score-first") -> int | None:
    """Clean-parse a 1-6 rubric judgement (``protocol``: ``reasoning`` or ``score-first``)."""
    p = parse_judgement(text, "123456", protocol)
    return int(p[0]) if p is not None else None


def candidate_at(candidates: list[dict[str, Any]] | None, offset: int) -> dict[str, Any] | None:
    """The candidate whose token covers character ``offset`` of the text, or None."""
    for c in candidates or []:
        o = c.get("offset")
        if o is not None and o <= offset < o + len(c.get("token") or ""):
            return c
    return None


def choice_distribution(
    candidates: list[dict[str, Any]] | None, choices: str, offset: int | None
) -> tuple[dict[str, float], float] | None:
    """Probabilities of ``choices`` at the token covering character ``offset``.

    ``candidates`` holds, for each generated position whose token is (stripped) one of the
    choices, ``{"token": sampled token, "top": {token: logprob}, "offset": its first
    character's offset in the text}`` in order. Token variants (``"4"``, ``" 4"``) are summed
    per choice, then renormalised over the choices. Returns ``(probabilities, mass)`` where
    ``mass`` is the probability the top list gave the choices before renormalising, or None
    when unavailable (no log-probabilities, no offset, no token at ``offset``).
    """
    if offset is None:
        return None
    cand = candidate_at(candidates, offset)
    if cand is None:
        return None
    top = cand.get("top") or {}
    probs = dict.fromkeys(choices, 0.0)
    for tok, lp in top.items():
        key = tok.strip()
        if key in probs and lp is not None and math.isfinite(lp):
            probs[key] += math.exp(lp)
    mass = sum(probs.values())
    if mass <= 0:
        return None
    return {k: v / mass for k, v in probs.items()}, mass


def weighted_score(
    candidates: list[dict[str, Any]] | None, offset: int | None, choices: str = "123456"
) -> float | None:
    """Probability-weighted score ``sum_k k * p_k`` at the token covering ``offset``."""
    d = choice_distribution(candidates, choices, offset)
    if d is None:
        return None
    return sum(int(k) * p for k, p in d[0].items())
