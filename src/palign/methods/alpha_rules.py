"""PAS alpha rules tuned on development persons (``alpha_selection="tuned"``, the default).

A rule says how alpha is chosen for one model, PAS variant and steering position. It is tuned
with ``benchmarks/alpha_study.py`` on the **development persons** only (PAPI test-set
positions 200-299, :mod:`palign.data.protocol`), whose test items palign never reports, and
applied unchanged to everybody else. The rules ship in ``palign/configs/alpha_rules.json``
with the development persons, the command and the measured figures; a model, variant or
position without a rule falls back to the held-out search over the person's shown items
(``heldout``), and says so in every output.

Rule kinds:

* ``fixed``: one alpha for every person (``alpha``).
* ``heldout-floor``: the held-out search over the shown items, on the grid's alphas
  ``>= floor`` only.
* ``stable-fixed``: ``alpha`` for a person whose steering direction is stable across the
  folds of their shown items (:func:`palign.steering.pas.fold_stability` at least
  ``min_cosine``), else 0 (no steering). Reads no model beyond the fit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from palign.errors import PalignError

RULE_KINDS = ("fixed", "heldout-floor", "stable-fixed")


@dataclass(frozen=True)
class AlphaRule:
    """One tuned rule.

    Attributes:
        model: the model alias it was tuned on (``palign models``).
        method: ``pas`` or ``pas+few-shot``.
        steer_position: ``all`` or ``last``.
        semantics: answer semantics of the tuning.
        kind: one of :data:`RULE_KINDS`.
        params: the rule's parameters (``alpha`` / ``floor``).
        dev_persons: ids of the development persons it was tuned on.
        evidence: figures and command of the tuning (for records and docs).
    """

    model: str
    method: str
    steer_position: str
    semantics: str
    kind: str
    params: dict[str, float]
    dev_persons: tuple[str, ...]
    evidence: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def rule_id(self) -> str:
        """A short identity: part of a run's options, so a retuned rule never resumes a run."""
        p = ",".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))
        return f"{self.model}:{self.method}@{self.steer_position}:{self.kind}({p})"

    def record(self) -> dict[str, Any]:
        """JSON-ready form for results and adapters."""
        return {
            "id": self.rule_id,
            "kind": self.kind,
            **{k: float(v) for k, v in self.params.items()},
            "tuned_on": "development persons (PAPI test-set positions 200-299)",
            "dev_persons": list(self.dev_persons),
            **{k: v for k, v in self.evidence.items() if k in ("command", "figures")},
        }

    def choose(
        self,
        grid: list[float],
        heldout_errors: dict[float, float] | None = None,
        stability: float | None = None,
    ) -> float:
        """The alpha of this rule (``heldout_errors``: alpha -> held-out error, and
        ``stability``: the person's fold stability, where the kind needs them)."""
        if self.kind == "fixed":
            return float(self.params["alpha"])
        if self.kind == "stable-fixed":
            if stability is None:
                raise PalignError(f"alpha rule {self.rule_id} needs the fold stability")
            ok = stability >= float(self.params["min_cosine"])
            return float(self.params["alpha"]) if ok else 0.0
        if heldout_errors is None:
            raise PalignError(f"alpha rule {self.rule_id} needs the held-out errors")
        floor = float(self.params["floor"])
        cands = [a for a in grid if a >= floor and a in heldout_errors]
        if not cands:
            raise PalignError(
                f"alpha rule {self.rule_id}: no alpha >= {floor:g} in the grid "
                f"{', '.join(format(a, 'g') for a in grid)}; add one with --alpha-grid"
            )
        return min(cands, key=lambda a: (heldout_errors[a], a))

    @property
    def needs_heldout(self) -> bool:
        """Whether the rule reads the held-out search."""
        return self.kind == "heldout-floor"

    @property
    def needs_stability(self) -> bool:
        """Whether the rule reads the person's fold stability."""
        return self.kind == "stable-fixed"


def _load(text: str) -> list[AlphaRule]:
    data = json.loads(text)
    out = []
    for r in data.get("rules", []):
        if r["kind"] not in RULE_KINDS:
            raise PalignError(f"alpha rules file: unknown kind {r['kind']!r}")
        out.append(
            AlphaRule(
                model=r["model"],
                method=r["method"],
                steer_position=r["steer_position"],
                semantics=r.get("semantics", "agreement"),
                kind=r["kind"],
                params={k: float(v) for k, v in r["params"].items()},
                dev_persons=tuple(str(x) for x in r["dev_persons"]),
                evidence=r.get("evidence", {}),
            )
        )
    return out


RULES_ENV = "PALIGN_ALPHA_RULES"


def shipped_rules() -> list[AlphaRule]:
    """The rules in ``palign/configs/alpha_rules.json``, or in the file named by
    ``$PALIGN_ALPHA_RULES`` (same format; rules you tuned yourself with
    ``benchmarks/alpha_study.py``)."""
    path = os.environ.get(RULES_ENV)
    if path:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise PalignError(
                f"${RULES_ENV} names {path!r}, which cannot be read ({e.strerror}); "
                "fix the path or unset it"
            ) from None
    else:
        text = resources.files("palign").joinpath("configs/alpha_rules.json").read_text()
    try:
        return _load(text)
    except (KeyError, TypeError, ValueError) as e:
        where = path or "palign/configs/alpha_rules.json"
        raise PalignError(f"alpha rules file {where} is malformed ({e!r})") from None


def find_rule(
    model_spec: str, method: str, steer_position: str, semantics: str, inventory: str
) -> AlphaRule | None:
    """The tuned rule for this model alias, variant, position and semantics, or None."""
    if inventory != "ipip-neo":
        return None
    for r in shipped_rules():
        if (r.model, r.method, r.steer_position, r.semantics) == (
            model_spec,
            method,
            steer_position,
            semantics,
        ):
            return r
    return None
