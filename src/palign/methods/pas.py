"""``pas`` and ``pas+few-shot``: per-person activation steering of the best K heads.

Per run (:meth:`PAS.setup`): the contrastive activations of the shown items (each statement
prompted with the assistant's answer prefilled to "A" and, separately, to "E"; the input of
every layer's ``o_proj`` at the letter, split into heads) are captured once under the neutral
system prompt and cached on disk, keyed by model, chat template, inventory and items.

Per person (:meth:`PAS.fit`): probes, head ranking, directions and ``u_l`` come from
:mod:`palign.steering.pas`. Alpha is chosen from the grid by k-fold cross-validation over the
person's *shown* items (probes refitted without the held-out fold; for ``pas+few-shot`` the
held-out items are also removed from the few-shot system prompt), scored with the logits
readout; then the final vectors are fitted on all shown items. ``alpha_selection="fixed"``
uses ``alpha``; ``"oracle"`` chooses on the test items, as the original code did, and says so
in every output.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch

from palign.data.types import Dataset, Person
from palign.errors import PalignError
from palign.methods.base import Aligned, Method, MethodConfig, register
from palign.methods.few_shot import few_shot_prompt
from palign.methods.pas_capture import (  # re-exported: palign.methods.pas.<name> stays valid
    cached_contrastive_capture as cached_contrastive_capture,
)
from palign.methods.pas_capture import contrastive_prompts as contrastive_prompts
from palign.methods.pas_capture import shown_activations as shown_activations
from palign.models.loading import LoadedModel
from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT
from palign.steering.pas import (
    DEFAULT_ALPHAS,
    DEFAULT_FOLDS,
    DEFAULT_HEAD_RANK,
    DEFAULT_K,
    DEFAULT_PROBE_SPLIT,
    PASResult,
    check_fold_heads,
    check_head_rank,
    check_probe_split,
    fit_pas,
    oracle_alpha,
)

SELECTIONS = ("tuned", "heldout", "fixed", "oracle")
#: default alpha selection: the held-out search over the person's shown items. ``tuned`` (a
#: rule tuned on development persons, :mod:`palign.methods.alpha_rules`) becomes the default
#: once a rule is confirmed on the reported persons; none is yet (docs/results/alpha-selection.md)
DEFAULT_SELECTION = "heldout"


@register
class PAS(Method):
    """PAS with the neutral system prompt.

    Options (``MethodConfig.options``): ``k`` (heads, default 24), ``alpha_grid`` (default
    0,1,2,4,6,8), ``alpha_selection`` (heldout | tuned | fixed | oracle: heldout, the default, is
    the k-fold search over the shown items; tuned is the model's rule tuned on development
    persons, falling back to heldout where there is none), ``alpha`` (for fixed), ``allow_dev_persons`` (evaluate the development persons a
    tuned rule was tuned on, labelled as such),
    ``folds`` (default 3), ``head_rank`` (mean | val: heads ranked by the mean of validation
    and training probe accuracy, the original's and the default, or by validation accuracy),
    ``probe_split`` (items | samples: the probes' 60/40 split over items, palign's default,
    or over samples, the original code's), ``fold_heads`` (refit | final: in the held-out
    search each fold refits the heads, the default, or keeps the heads of the fit on all
    shown items and refits only their directions; a candidate of the alpha study),
    ``o_proj_path`` (module path template for
    unknown architectures),
    ``batch_size`` (readout rows per forward during selection, default 32),
    ``steer_position`` (all | last: the shift at every position of every forward, the
    paper's o_proj bias and the default, or only at the last position, the fast variant),
    ``selection_readout`` (logits | generate: the readout that scores alphas on held-out
    items; the harness sets it to the run's readout), ``alpha_early_stop`` (default True:
    the batched held-out search stops reading an alpha that already ranks behind a complete
    one, see :meth:`select_alpha_many`; the chosen alpha is unchanged),
    ``share_lower_layers`` (default True: in the all-position readout, rows that differ only by
    steering run the layers below the lowest steered layer once),
    ``alphas_from`` (``PATH[:ENTRY]``: each person's alpha as the held-out search of a finished
    evaluation chose it, a papi_table result or a ``palign eval`` run; the fit is the fixed-alpha
    fit with that alpha, no search; the source's settings must match, see
    :mod:`palign.methods.alpha_source`; recorded as ``{path, entry, kind, sha256}``).
    """

    name = "pas"
    description = (
        "per-person activation steering, neutral system prompt, alpha on held-out shown items"
    )
    few_shot = False

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        o = self.config.options
        self.k = int(o.get("k", DEFAULT_K))
        self.grid = [float(a) for a in o.get("alpha_grid", DEFAULT_ALPHAS)]
        self.selection = str(o.get("alpha_selection", DEFAULT_SELECTION))
        self.allow_dev_persons = bool(o.get("allow_dev_persons", False))
        self.rule: Any = None  # the tuned AlphaRule in use (bind_model), None = none
        self._bound: tuple[str, str] | None = None
        self._stabilities: dict[str, float] = {}  # person -> fold stability (stable rules)
        self.alpha = o.get("alpha")
        self.folds = int(o.get("folds", DEFAULT_FOLDS))
        self.batch_size = int(o.get("batch_size", 32))
        # the held-out search's early stop (exact; select_alpha_many); not part of a run's
        # identity unless given, as it changes no chosen alpha
        self.early_stop = bool(o.get("alpha_early_stop", True))
        self.alpha_cuts: dict[str, dict[str, dict[str, Any]]] = {}  # person -> cut alphas
        # rows that differ only by steering share the layers below the lowest steered layer
        # (the all-position readout; palign.steering.share); not part of a run's identity
        self.share_lower = bool(o.get("share_lower_layers", True))
        self.head_rank = check_head_rank(str(o.get("head_rank", DEFAULT_HEAD_RANK)))
        self.probe_split = check_probe_split(str(o.get("probe_split", DEFAULT_PROBE_SPLIT)))
        self.fold_heads = check_fold_heads(str(o.get("fold_heads", "refit")))
        from palign.models.readout import check_position

        self.position = check_position(str(o.get("steer_position", "all")))
        # always part of the recorded options (and so of a run's identity): results say which
        # position produced them, and folders of the other position are never resumed
        o.setdefault("steer_position", self.position)
        self.selection_readout = str(o.get("selection_readout", "logits"))
        if self.selection_readout not in ("logits", "generate"):
            raise PalignError(
                f"unknown selection readout {self.selection_readout!r}; use logits or generate"
            )
        if self.selection not in SELECTIONS:
            raise PalignError(
                f"unknown alpha selection {self.selection!r}; use one of: {', '.join(SELECTIONS)}"
            )
        if self.selection == "fixed" and self.alpha is None:
            raise PalignError("alpha selection 'fixed' needs an alpha (--alpha VALUE)")
        # alphas_from: each person's alpha as a finished held-out search chose it (no search);
        # the option becomes the source's record (file, entry, sha256: part of the identity)
        from palign.methods.alpha_source import source_from_options

        self.source = source_from_options(o, self.name, self.selection, self.config)
        if self.k < 1:
            raise PalignError(f"--k must be at least 1, got {self.k}")
        if not self.grid:
            raise PalignError("the alpha grid is empty; give at least one alpha")
        self.acts: torch.Tensor | None = None
        self.arch: Any = None
        from palign.models.readout import KVStore

        # prompt caches up to the last token, shared by all folds, alphas and persons
        self.kv_store = KVStore(int(o.get("kv_store_bytes", 8 << 30)))
        # unsteered (alpha 0) option probabilities per (system prompt, statement) of one model
        self._plain: dict[tuple[str | None, str], np.ndarray] = {}
        self._plain_owner: weakref.ref | None = None

    def bind_model(self, model_spec: str, inventory: str) -> None:
        """Resolve the tuned alpha rule of ``model_spec`` (``alpha_selection="tuned"``).

        Records it in the options (``alpha_rule``: its id, or ``"none"`` when palign has no
        rule for this model, variant, position and semantics and the held-out search runs),
        so a run folder is never resumed under another rule. Called by the run planner
        before any check of the run folder, and by :meth:`setup`. With ``alphas_from``:
        refuses a source of another model or inventory.
        """
        if self.source is not None:
            self.source.check_model(model_spec, inventory)
        if self.selection != "tuned" or self._bound == (model_spec, inventory):
            return
        from palign.methods.alpha_rules import find_rule

        self.rule = find_rule(
            model_spec, self.name, self.position, self.config.semantics, inventory
        )
        self._bound = (model_spec, inventory)
        resolved = self.rule.rule_id if self.rule else "none"
        planned = self.config.options.get("alpha_rule")
        if planned is not None and planned != resolved:  # e.g. a Ray worker with other rules
            raise PalignError(
                f"this run was planned with alpha rule {planned!r} but this process resolves "
                f"{resolved!r} (another palign version or ${'PALIGN_ALPHA_RULES'}); use the same "
                "palign and rules file everywhere"
            )
        self.config.options["alpha_rule"] = resolved

    def _tuned_rule(self, person: Person) -> Any:
        """The rule in use for ``person`` (None: held-out search); refuses development persons
        the rule was tuned on unless ``allow_dev_persons``."""
        if self.selection != "tuned" or self.rule is None:
            return None
        from palign.data.protocol import check_reportable

        check_reportable([person.id], self.rule.dev_persons, allow=self.allow_dev_persons)
        return self.rule

    def setup(self, lm: LoadedModel, dataset: Dataset) -> None:
        """Resolve the architecture and load/capture the contrastive activations."""
        from palign.steering.arch import resolve_arch

        self.bind_model(lm.spec, dataset.inventory.name)
        if self.source is not None:
            self.source.check_model(lm.spec, dataset.inventory.name, lm.model_id)
        self.arch = resolve_arch(lm.model, self.config.options.get("o_proj_path"))
        if self.k > self.arch.n_layers * self.arch.n_heads:
            raise PalignError(
                f"--k {self.k} exceeds the model's {self.arch.n_layers * self.arch.n_heads} heads"
            )
        # probes and directions run where the model runs (the activations are small)
        self.acts = shown_activations(lm, dataset, self.arch).to(lm.device)

    def check_persons(self, person_ids: list[str]) -> None:
        """Refuse, before any work, persons ``alphas_from`` holds no alpha for."""
        if self.source is not None:
            self.source.check_persons(person_ids)

    def _fit_kw(self) -> dict[str, Any]:
        """Keyword arguments of every PAS fit and refit (seed, K, head ranking, probe split)."""
        return {
            "seed": self.config.seed,
            "K": self.k,
            "head_rank": self.head_rank,
            "probe_split": self.probe_split,
        }

    def system_prompt(self, dataset: Dataset, person: Person, hide: set[str] | None = None) -> str:
        """System prompt of this variant (few-shot prompt without the ``hide`` items)."""
        if not self.few_shot:
            return NEUTRAL_SYSTEM_PROMPT
        if not hide:
            return few_shot_prompt(dataset.inventory, person, self.config.semantics)
        masked = Person(person.id, {k: (0 if k in hide else v) for k, v in person.stored.items()})
        return few_shot_prompt(dataset.inventory, masked, self.config.semantics)

    def _score_fn(
        self,
        lm: LoadedModel,
        dataset: Dataset,
        person: Person,
        item_ids: list[str],
        hide_held: bool,
    ):
        from palign.models.readout import ReadRequest

        inv = dataset.inventory

        def score(u: torch.Tensor, held: list[int]) -> np.ndarray:
            ids = [item_ids[i] for i in held]
            sys_prompt = self.system_prompt(dataset, person, set(ids) if hide_held else None)
            statements = [inv.statement(inv.item(i)) for i in ids]
            reqs = [ReadRequest(sys_prompt, s, a) for a in range(u.shape[0]) for s in statements]
            out = self._read(lm, reqs, u)
            return out.answers.reshape(u.shape[0], len(ids))

        return score

    def fit_result(self, lm: LoadedModel, dataset: Dataset, person: Person) -> PASResult:
        """The PAS fit for one person (alpha selected as configured)."""
        if self.acts is None:
            self.setup(lm, dataset)
        inv = dataset.inventory
        answers = self._check_answers(dataset, person)
        if self.selection == "fixed" or self.source is not None:
            # alphas_from: the fixed-alpha fit with the alpha the source's search chose
            res = fit_pas(
                self.acts,
                answers,
                self.arch,
                alpha=self.source.alpha(person.id) if self.source else float(self.alpha),
                **self._fit_kw(),
            )
            if self.source is not None:
                from palign.methods.alpha_source import REUSED

                res.alpha_selection = REUSED
            return res
        rule = self._tuned_rule(person)
        if rule is not None:
            errors = (
                self.select_alpha_many(lm, dataset, [person], early_stop=False)[0][1]
                if rule.needs_heldout
                else {}
            )
            res = fit_pas(
                self.acts,
                answers,
                self.arch,
                alpha=rule.choose(
                    self.grid, errors, self._stability(dataset, answers, rule, person)
                ),
                **self._fit_kw(),
            )
            res.alpha_selection, res.validation_errors = "tuned", errors
            return res
        if self.selection in ("heldout", "tuned") and self.selection_readout == "generate":
            # the same rule as select_alpha (unparsed = error 4), all folds in one readout each
            ((alpha, errors),) = self.select_alpha_many(lm, dataset, [person], early_stop=False)
            res = fit_pas(
                self.acts,
                answers,
                self.arch,
                alpha=alpha,
                **self._fit_kw(),
            )
            res.alpha_selection, res.validation_errors = "heldout-kfold", errors
            return res
        if self.selection in ("heldout", "tuned"):
            score = self._score_fn(lm, dataset, person, inv.shown_ids, hide_held=True)
            return fit_pas(
                self.acts,
                answers,
                self.arch,
                score_fn=score,
                grid=self.grid,
                k_folds=self.folds,
                item_ids=inv.shown_ids,
                fold_heads=self.fold_heads,
                **self._fit_kw(),
            )
        # oracle: fit on all shown items, then pick alpha on the TEST items
        res = fit_pas(
            self.acts,
            answers,
            self.arch,
            alpha=1.0,
            **self._fit_kw(),
        )
        test = np.nan_to_num(person.answer_vector(inv, inv.test_ids, self.config.semantics))
        score = self._score_fn(lm, dataset, person, inv.test_ids, hide_held=False)
        alpha, errors = oracle_alpha(res.fit, self.arch, score, test, grid=self.grid)
        res.alpha, res.validation_errors, res.alpha_selection = alpha, errors, "oracle"
        res.u = alpha * res.u_unit
        return res

    def _argmin_rule(self) -> bool:
        """Whether the alpha is the plain argmin of the held-out errors over the whole grid
        (``heldout``, or ``tuned`` with no rule for this model): the early stop is exact then."""
        return self.selection == "heldout" or (self.selection == "tuned" and self.rule is None)

    def select_alpha_many(
        self,
        lm: LoadedModel,
        dataset: Dataset,
        persons: list[Person],
        early_stop: bool | None = None,
    ) -> list[tuple[float, dict[float, float]]]:
        """Held-out alpha selection for several persons at once.

        The same computation as :func:`palign.steering.pas.select_alpha` per person (same
        folds, refits and errors), but fold ``f`` of every person is scored in one readout
        call, so persons share forward passes.

        ``early_stop`` (default: the ``alpha_early_stop`` option, on, where the alpha is the
        argmin over the whole grid): the anchor alpha (0 where the grid has it, else the
        grid's first) is read on every fold first; then fold by fold the other alphas, and
        an alpha whose running sum of held-out errors already ranks behind a complete alpha's
        total (``(error, alpha)`` compared as the choice does: larger error, or equal error
        and larger alpha; errors only grow) is not read on the remaining folds. The chosen
        alpha is the one without the stop; a cut alpha's error is NaN (``None`` in results)
        and :attr:`alpha_cuts` records what was read of it per person.
        """
        from palign.models.readout import ReadRequest
        from palign.steering.pas import (
            _answers_tensor,
            _errors,
            fit_person,
            fold_assignment,
            layer_vectors_grid,
            ranks_behind,
            refit_directions,
        )

        inv = dataset.inventory
        shown = inv.shown_ids
        n_a = len(self.grid)
        if early_stop is None:
            early_stop = self.early_stop and self._argmin_rule()
        early_stop = bool(early_stop) and n_a > 1
        state = []
        for p in persons:
            a = _answers_tensor(np.nan_to_num(p.answer_vector(inv, shown, self.config.semantics)))
            answered = torch.nonzero(a > 0).flatten()
            ids = [shown[i] for i in answered.tolist()]
            folds = fold_assignment(answered.numel(), self.folds, self.config.seed, ids)
            state.append(
                {
                    "final": (
                        fit_person(self.acts, a, **self._fit_kw())
                        if self.fold_heads == "final"
                        else None
                    ),
                    "person": p,
                    "a": a,
                    "answered": answered,
                    "folds": folds,
                    "fits": {},
                    "total": torch.zeros(n_a, dtype=torch.float64),
                    "count": [0] * n_a,
                    "folds_read": [0] * n_a,
                    "live": [True] * n_a,
                }
            )

        def read(units: list[tuple[int, int, list[int]]]) -> None:
            """Read (person, fold, alpha indices) units in one readout call; add the errors."""
            rows: list[torch.Tensor] = []
            reqs: list[ReadRequest] = []
            spans = []
            for pi, f, alphas in units:
                s = state[pi]
                held = s["answered"][torch.tensor(s["folds"][f], dtype=torch.long)]
                if f not in s["fits"]:
                    train = s["a"].clone()
                    train[held] = 0.0
                    if s["final"] is not None:  # fold_heads="final": the final fit's heads
                        s["fits"][f] = refit_directions(s["final"], self.acts, train)
                    else:
                        s["fits"][f] = fit_person(self.acts, train, **self._fit_kw())
                u = layer_vectors_grid(s["fits"][f], [self.grid[i] for i in alphas], self.arch)
                hidden_ids = {shown[i] for i in held.tolist()}
                sys_prompt = self.system_prompt(dataset, s["person"], hidden_ids)
                base, start = len(rows), len(reqs)
                rows += list(u)
                statements = [inv.statement(inv.item(shown[i])) for i in held.tolist()]
                reqs += [
                    ReadRequest(sys_prompt, st, base + k)
                    for k in range(len(alphas))
                    for st in statements
                ]
                spans.append((s, alphas, s["a"][held], start, len(statements)))
            if not reqs:
                return
            out = self._read(lm, reqs, torch.stack(rows))
            for s, alphas, truth, start, n in spans:
                pred = out.answers[start : start + len(alphas) * n].reshape(len(alphas), n)
                # as in select_alpha: an unparsed answer (generate readout) counts as the
                # maximal error 4, so an alpha cannot win on the few items it still parses
                err = _errors(pred, truth.double(), len(alphas)).sum(dim=1)
                for j, i in enumerate(alphas):
                    s["total"][i] += err[j]
                    s["count"][i] += n
                    s["folds_read"][i] += 1

        def mean(s: dict[str, Any], i: int) -> float:
            n = s["answered"].numel()
            return float(s["total"][i] / n) if n > 0 else float("inf")

        n_folds = max(len(s["folds"]) for s in state)
        if not early_stop:
            for f in range(n_folds):
                read(
                    [(pi, f, list(range(n_a))) for pi, s in enumerate(state) if f < len(s["folds"])]
                )
        else:
            anchor = self.grid.index(0.0) if 0.0 in self.grid else 0
            read([(pi, f, [anchor]) for pi, s in enumerate(state) for f in range(len(s["folds"]))])
            for f in range(n_folds):
                for s in state:  # cut what already ranks behind a complete alpha
                    nf = len(s["folds"])
                    done = [s["folds_read"][i] == nf for i in range(n_a)]
                    means = [mean(s, i) for i in range(n_a)]
                    for i in ranks_behind(self.grid, means, done, s["live"]):
                        s["live"][i] = False
                units = []
                for pi, s in enumerate(state):
                    todo = [i for i in range(n_a) if s["live"][i] and s["folds_read"][i] == f]
                    if f < len(s["folds"]) and todo:
                        units.append((pi, f, todo))
                read(units)
        result = []
        for s in state:
            errors = {
                al: (mean(s, i) if s["live"][i] else float("nan")) for i, al in enumerate(self.grid)
            }
            cuts = {
                format(al, "g"): {
                    "folds_read": s["folds_read"][i],
                    "items_read": s["count"][i],
                    "partial_error": (
                        round(float(s["total"][i] / s["count"][i]), 4) if s["count"][i] else None
                    ),
                }
                for i, al in enumerate(self.grid)
                if not s["live"][i]
            }
            if cuts:
                self.alpha_cuts[s["person"].id] = cuts
            else:
                self.alpha_cuts.pop(s["person"].id, None)
            live = [al for i, al in enumerate(self.grid) if s["live"][i]]
            result.append((min(live, key=lambda al: (errors[al], al)), errors))
        return result

    def _read(self, lm: LoadedModel, reqs: list[Any], table: torch.Tensor) -> Any:
        """Read held-out (or oracle) requests with the selection readout and position."""
        from palign.models.readout import (
            ReadRequest,
            generate_answers,
            option_probs,
            readout_from_probs,
        )

        if self.selection_readout == "generate":
            return generate_answers(
                lm, reqs, batch_size=self.batch_size, steering=table, position=self.position
            )
        # a zero steering row (alpha 0) is no steering: its requests are read unsteered, once
        # per (system prompt, statement) for the lifetime of this object, so persons and folds
        # with the same prompt (the neutral one) share them; the values are those of the zero
        # row (adding 0 changes nothing), at the cost of one forward instead of one per call
        if self._plain_owner is None or self._plain_owner() is not lm.model:
            self._plain.clear()
            self._plain_owner = weakref.ref(lm.model)
        zero = (table.flatten(1) == 0).all(dim=1).tolist()
        probs = np.zeros((len(reqs), 5))
        steered: list[int] = []
        plain: dict[tuple[str | None, str], list[int]] = {}
        for i, r in enumerate(reqs):
            key = (r.system_prompt, r.statement)
            if r.steer is not None and not zero[r.steer]:
                steered.append(i)
            elif key in self._plain:
                probs[i] = self._plain[key]
            else:
                plain.setdefault(key, []).append(i)
        ask = [reqs[i] for i in steered] + [ReadRequest(k[0], k[1], None) for k in plain]
        if ask:
            out = option_probs(
                lm,
                ask,
                batch_size=self.batch_size,
                steering=table,
                kv_store=self.kv_store,
                position=self.position,
                share_lower=self.share_lower,
            )
            probs[steered] = out.probs[: len(steered)]
            for row, (key, idx) in zip(out.probs[len(steered) :], plain.items()):
                self._plain[key] = row.copy()
                probs[idx] = row
        return readout_from_probs(probs)

    def fit_many(self, lm: LoadedModel, dataset: Dataset, persons: list[Person]) -> list[Aligned]:
        """:meth:`fit` for several persons, their alpha searches sharing forward passes."""
        if self.acts is None:
            self.setup(lm, dataset)
        rule = self.rule if self.selection == "tuned" else None
        searched = (self.selection == "heldout" and self.source is None) or (
            self.selection == "tuned" and (rule is None or rule.needs_heldout)
        )
        if not searched or len(persons) < 2:
            return [self.fit(lm, dataset, p) for p in persons]
        for p in persons:
            self._check_answers(dataset, p)
            self._tuned_rule(p)
        chosen = self.select_alpha_many(lm, dataset, persons)
        if rule is not None:
            chosen = [
                (
                    rule.choose(
                        self.grid, e, self._stability(dataset, self._answers(dataset, p), rule, p)
                    ),
                    e,
                )
                for p, (_, e) in zip(persons, chosen)
            ]
        out = []
        inv = dataset.inventory
        for p, (alpha, errors) in zip(persons, chosen):
            answers = np.nan_to_num(p.answer_vector(inv, inv.shown_ids, self.config.semantics))
            res = fit_pas(
                self.acts,
                answers,
                self.arch,
                alpha=alpha,
                **self._fit_kw(),
            )
            res.alpha_selection = "tuned" if rule is not None else "heldout-kfold"
            res.validation_errors = errors
            out.append(self._aligned(dataset, p, res))
        return out

    def _answers(self, dataset: Dataset, person: Person) -> np.ndarray:
        inv = dataset.inventory
        return np.nan_to_num(person.answer_vector(inv, inv.shown_ids, self.config.semantics))

    def _stability(
        self, dataset: Dataset, answers: np.ndarray, rule: Any, person: Person
    ) -> float | None:
        """The person's fold stability where the rule reads it (else None); kept for the
        person's record."""
        if not rule.needs_stability:
            return None
        from palign.steering.pas import fold_stability

        value = fold_stability(
            self.acts,
            answers,
            self.arch,
            k_folds=self.folds,
            item_ids=dataset.inventory.shown_ids,
            **self._fit_kw(),
        )
        self._stabilities[person.id] = value
        return value

    def _check_answers(self, dataset: Dataset, person: Person) -> np.ndarray:
        inv = dataset.inventory
        answers = np.nan_to_num(person.answer_vector(inv, inv.shown_ids, self.config.semantics))
        if not ((answers > 3) | ((answers > 0) & (answers < 3))).any():
            raise PalignError(
                f"person {person.id} has no non-neutral shown answer; PAS needs answers other than 3"
            )
        return answers

    def fit(self, lm: LoadedModel, dataset: Dataset, person: Person) -> Aligned:
        """Fit, then return the system prompt and the person's steering vectors."""
        return self._aligned(dataset, person, self.fit_result(lm, dataset, person))

    def _aligned(self, dataset: Dataset, person: Person, res: PASResult) -> Aligned:
        info: dict[str, Any] = {
            "alpha": res.alpha,
            "alpha_selection": res.alpha_selection,
            "validation_errors": {
                str(k): (round(v, 4) if np.isfinite(v) else None)
                for k, v in res.validation_errors.items()
            },
            "heads": [list(h) for h in res.fit.heads],
        }
        if self.source is not None:
            info["alphas_from"] = {**self.source.record(), "alpha": res.alpha}
        if res.alpha_selection == "oracle":
            info["warning"] = "ORACLE: alpha chosen on the test items (not an honest evaluation)"
        if res.alpha_selection == "tuned":
            info["alpha_rule"] = self.rule.record()
            if person.id in self._stabilities:
                info["fold_stability"] = round(self._stabilities[person.id], 4)
            if person.id in self.rule.dev_persons:
                info["warning"] = (
                    "development person: the alpha rule was tuned on this person's test items"
                )
        elif self.selection == "tuned":
            info["alpha_rule"] = None  # no rule for this model: held-out search
        if person.id in self.alpha_cuts and res.alpha_selection == "heldout-kfold":
            # alphas the held-out search stopped reading (their validation_errors are None)
            info["alpha_cuts"] = self.alpha_cuts[person.id]
        info["steer_position"] = self.position
        return Aligned(
            person.id,
            self.system_prompt(dataset, person),
            res.u.float(),
            info,
            steer_position=self.position,
        )

    def record(self) -> dict[str, Any]:
        """Configuration for results files."""
        from palign.methods.alpha_source import REUSED

        return {
            "name": self.name,
            "seed": self.config.seed,
            "k": self.k,
            "alpha_grid": self.grid,
            "alpha_selection": self.selection if self.source is None else REUSED,
            "alphas_from": self.source.record() if self.source is not None else None,
            "alpha_rule": self.rule.record() if self.rule is not None else None,
            "alpha": self.alpha,
            "folds": self.folds,
            "head_rank": self.head_rank,
            "probe_split": self.probe_split,
            "fold_heads": self.fold_heads,
            "steer_position": self.position,
            "selection_readout": self.selection_readout,
            "alpha_early_stop": self.early_stop,
            "share_lower_layers": self.share_lower,
            "activation_system_prompt": NEUTRAL_SYSTEM_PROMPT,
        }


@register
class PASFewShot(PAS):
    """PAS with the person's few-shot system prompt (the paper's actual setup)."""

    name = "pas+few-shot"
    description = "PAS steering plus the few-shot system prompt (the paper's setup)"
    few_shot = True
