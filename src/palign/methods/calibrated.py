"""``pas+calibrated`` and ``vanilla+calibrated``: a per-person calibrated readout.

The logits readout gives, per item, the model's distribution over the options A..E. The
plain methods answer with its argmax. A *calibrated* method also fits, per person, a linear
map from the expected answer ``E = probs @ [5, 4, 3, 2, 1]`` (5 = option A) to the answer,

    answer = clip(rint(a + b * E), 1, 5),

on the person's **shown** items (their answers, and the option distributions the final
aligned state gives on those same items). The harness then answers every test item with the
map (:func:`palign.eval.runs.predict_aligned`; the argmax answers are kept as
``raw_answers``). Test answers are never read: the map comes from the shown items only.

``pas+calibrated`` aligns exactly as ``pas`` does (alpha chosen by k-fold over the shown
items on the *uncalibrated* held-out errors), then calibrates with the final steering;
``vanilla+calibrated`` uses the neutral system prompt and no steering (the calibration is
then the only per-person part). Both need the logits readout.

The fit (:func:`fit_calibration`) is least squares of the answer on ``[1, E]`` with a small
ridge penalty towards the identity map ``(a, b) = (0, 1)``:

    minimise  sum_i (y_i - a - b E_i)^2 + ridge * (a^2 + (b - 1)^2)

over the answered shown items ``i`` (answers 1..5; 0 or NaN = missing). Closed form: with
``X = [1, E]`` and ``t0 = (0, 1)``, ``(a, b) = t0 + (X'X + ridge I)^-1 X'(y - X t0)``. The
penalty keeps the map finite when ``E`` hardly varies (a model that always answers C): then
``a + b E`` is close to the person's mean shown answer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from palign.data.types import Dataset, Person
from palign.errors import PalignError
from palign.methods.base import Aligned, Method, MethodConfig, register
from palign.methods.pas import PAS
from palign.models.loading import LoadedModel
from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT
from palign.models.readout import ANSWER_VALUES

DEFAULT_RIDGE = 1.0
NEED_LOGITS = "calibrated methods need the logits readout (--readout logits)"


def expected_answer(probs: np.ndarray) -> np.ndarray:
    """The expected answer ``probs @ ANSWER_VALUES`` (1..5 scale, 5 = option A) per row.

    Raises :class:`PalignError` for rows with NaN (the generate readout has no distribution).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(ANSWER_VALUES):
        raise PalignError(f"option probabilities must have shape (n, 5), got {p.shape}")
    if np.isnan(p).any():
        raise PalignError(NEED_LOGITS)
    return p @ ANSWER_VALUES


@dataclass
class Calibration:
    """A per-person map from the option distribution to an answer.

    Attributes:
        a: intercept.
        b: slope on the expected answer ``E``.
        n: number of answered shown items it was fitted on.
    """

    a: float
    b: float
    n: int

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Answers 1..5 (int): ``clip(rint(a + b * E), 1, 5)`` with ``E = probs @ [5..1]``.

        ``rint`` rounds halves to even. NaN rows (generate readout) raise :class:`PalignError`.
        """
        e = expected_answer(probs)
        return np.clip(np.rint(self.a + self.b * e), 1, 5).astype(int)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (full float precision: :meth:`from_dict` gives the same map)."""
        return {"a": float(self.a), "b": float(self.b), "n": int(self.n)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(float(d["a"]), float(d["b"]), int(d["n"]))
        except (KeyError, TypeError, ValueError):
            raise PalignError(f"not a calibration record: {d!r}; expected keys a, b, n") from None


def fit_calibration(
    probs: np.ndarray, answers: np.ndarray, ridge: float = DEFAULT_RIDGE
) -> Calibration:
    """Fit ``answer ~ a + b * E`` on the answered rows, ridge-penalised towards ``(0, 1)``.

    Minimises ``sum_i (y_i - a - b E_i)^2 + ridge * (a^2 + (b - 1)^2)`` over the rows with an
    answer (1..5; 0 or NaN = missing), ``E_i = probs_i @ [5, 4, 3, 2, 1]``.

    Args:
        probs: (n, 5) option probabilities A..E.
        answers: (n,) the person's answers on the same items.
        ridge: penalty weight (>= 0; > 0 keeps the map finite for a constant ``E``).

    Raises:
        PalignError: fewer than 2 answered items, NaN probabilities (generate readout),
            mismatched shapes or a negative ridge.
    """
    y = np.asarray(answers, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise PalignError(f"probs {p.shape} and answers {y.shape} must have one row per item")
    if ridge < 0:
        raise PalignError(f"the calibration ridge must be >= 0, got {ridge}")
    keep = np.isfinite(y) & (y > 0)
    if int(keep.sum()) < 2:
        raise PalignError(
            f"a calibration needs at least 2 answered shown items, got {int(keep.sum())}"
        )
    e = expected_answer(p[keep])
    y = y[keep]
    x = np.column_stack([np.ones_like(e), e])
    t0 = np.array([0.0, 1.0])
    gram = x.T @ x + ridge * np.eye(2)
    try:
        delta = np.linalg.solve(gram, x.T @ (y - x @ t0))
    except np.linalg.LinAlgError:
        raise PalignError(
            "the calibration is singular (constant expected answer and ridge 0); use ridge > 0"
        ) from None
    a, b = t0 + delta
    return Calibration(float(a), float(b), int(keep.sum()))


def _shown_answers(dataset: Dataset, person: Person, semantics: str) -> np.ndarray:
    inv = dataset.inventory
    return np.nan_to_num(person.answer_vector(inv, inv.shown_ids, semantics))  # type: ignore[arg-type]


def _attach(a: Aligned, cal: Calibration) -> Aligned:
    info = {**a.info, "calibration": cal.to_dict()}
    return replace(a, calibration=cal.to_dict(), info=info)


class _Calibrated:
    """Shared parts of the calibrated methods (a mixin before the aligning method)."""

    needs_logits_readout: ClassVar[bool] = True
    """The harness refuses another readout before any work (``plan_run``)."""

    config: MethodConfig

    def _ridge(self) -> float:
        return float(self.config.options.get("calibration_ridge", DEFAULT_RIDGE))

    def _read_shown(
        self, lm: LoadedModel, dataset: Dataset, aligned: list[Aligned], ids: list[list[str]]
    ) -> list[np.ndarray]:
        """Option probabilities of ``ids[k]`` under ``aligned[k]``, in one readout call."""
        import torch

        from palign.models.readout import ReadRequest, option_probs

        inv = dataset.inventory
        rows: list[torch.Tensor] = []
        reqs: list[ReadRequest] = []
        for a, item_ids in zip(aligned, ids):
            steer = None
            if a.steering is not None:
                steer = len(rows)
                rows.append(a.steering)
            reqs += [
                ReadRequest(a.system_prompt, inv.statement(inv.item(i)), steer) for i in item_ids
            ]
        positions = {a.steer_position for a in aligned if a.steering is not None}
        out = option_probs(
            lm,
            reqs,
            batch_size=int(self.config.options.get("batch_size", 32)),
            steering=torch.stack(rows) if rows else None,
            kv_store=getattr(self, "kv_store", None),
            position=positions.pop() if positions else "all",
        )
        res, start = [], 0
        for item_ids in ids:
            res.append(out.probs[start : start + len(item_ids)])
            start += len(item_ids)
        return res

    def calibrate(
        self, lm: LoadedModel, dataset: Dataset, persons: list[Person], aligned: list[Aligned]
    ) -> list[Aligned]:
        """Fit each person's map on their answered shown items read with their final state.

        States that already carry a calibration are returned as they are.
        """
        inv = dataset.inventory
        todo = [k for k, a in enumerate(aligned) if a.calibration is None]
        answers, ids = {}, {}
        for k in todo:
            y = _shown_answers(dataset, persons[k], self.config.semantics)
            keep = [i for i, v in zip(inv.shown_ids, y) if v > 0]
            if len(keep) < 2:
                raise PalignError(
                    f"person {persons[k].id} has {len(keep)} answered shown items; a calibrated "
                    "method needs at least 2"
                )
            answers[k] = y[y > 0]
            ids[k] = keep
        if not todo:
            return list(aligned)
        probs = self._read_shown(lm, dataset, [aligned[k] for k in todo], [ids[k] for k in todo])
        out = list(aligned)
        for k, p in zip(todo, probs):
            out[k] = _attach(aligned[k], fit_calibration(p, answers[k], self._ridge()))
        return out


@register
class PASCalibrated(_Calibrated, PAS):
    """``pas`` followed by a per-person calibrated readout fitted on the shown items.

    Alpha is chosen exactly as ``pas`` chooses it (k-fold over the shown items, scored on
    the *uncalibrated* held-out errors); the final steering is fitted on all shown items as
    in ``pas``. Then the option distributions of the person's answered shown items are read
    with that final state (same system prompt, steering and position) and the map
    ``answer = clip(rint(a + b E), 1, 5)`` is fitted on them (:func:`fit_calibration`). Test
    items are never read. Options: those of ``pas`` plus ``calibration_ridge`` (default 1).
    Needs the logits readout.
    """

    name = "pas+calibrated"
    description = (
        "pas, then a per-person linear map from the expected answer to the answer, fitted on "
        "the shown items (logits readout only)"
    )

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        if self.selection_readout != "logits":
            raise PalignError(NEED_LOGITS)

    def fit(self, lm: LoadedModel, dataset: Dataset, person: Person) -> Aligned:
        """:meth:`PAS.fit`, then the calibration."""
        return self.calibrate(lm, dataset, [person], [super().fit(lm, dataset, person)])[0]

    def fit_many(self, lm: LoadedModel, dataset: Dataset, persons: list[Person]) -> list[Aligned]:
        """:meth:`PAS.fit_many`, then the shown-item reads of all persons in one call."""
        return self.calibrate(lm, dataset, persons, super().fit_many(lm, dataset, persons))

    def record(self) -> dict[str, Any]:
        """``pas``'s configuration plus the calibration ridge."""
        return {**super().record(), "calibration_ridge": self._ridge()}


@register
class VanillaCalibrated(_Calibrated, Method):
    """The neutral system prompt, no steering, and a per-person calibrated readout.

    The option distributions of the shown items are the same for every person (read once
    per run); each person's map is fitted on their answered shown items. Test items are
    never read. Option: ``calibration_ridge`` (default 1). Needs the logits readout.
    """

    name = "vanilla+calibrated"
    description = (
        "neutral system prompt, per-person linear map from the expected answer to the answer, "
        "fitted on the shown items (logits readout only)"
    )

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self._shown: tuple[Any, np.ndarray] | None = None

    def fit(self, lm: LoadedModel, dataset: Dataset, person: Person) -> Aligned:
        """The neutral state with the person's calibration."""
        return self.fit_many(lm, dataset, [person])[0]

    def fit_many(self, lm: LoadedModel, dataset: Dataset, persons: list[Person]) -> list[Aligned]:
        """Read the shown items once (unsteered, neutral prompt), then fit each person's map."""
        inv = dataset.inventory
        key = (id(lm), inv.name, tuple(inv.shown_ids))
        if self._shown is None or self._shown[0] != key:
            neutral = Aligned("", NEUTRAL_SYSTEM_PROMPT)
            (probs,) = self._read_shown(lm, dataset, [neutral], [list(inv.shown_ids)])
            self._shown = (key, probs)
        probs = self._shown[1]
        out = []
        for p in persons:
            y = _shown_answers(dataset, p, self.config.semantics)
            if int((y > 0).sum()) < 2:
                raise PalignError(
                    f"person {p.id} has {int((y > 0).sum())} answered shown items; a calibrated "
                    "method needs at least 2"
                )
            cal = fit_calibration(probs, y, self._ridge())
            out.append(_attach(Aligned(p.id, NEUTRAL_SYSTEM_PROMPT), cal))
        return out

    def record(self) -> dict[str, Any]:
        """Name, seed, options and the calibration ridge."""
        return {**super().record(), "calibration_ridge": self._ridge()}
