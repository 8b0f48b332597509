"""The held-out alpha search's early stop (``alpha_early_stop``, :meth:`PAS.select_alpha_many`).

An alpha stops being read once its running error sum already ranks behind a complete
alpha's total under the choice's own order ``(error, alpha)``. The chosen alpha and the
errors of the alphas that survive must be those of the full search, ties included.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import palign.steering.pas as steering_pas
from palign.data.types import Dataset
from palign.methods.base import MethodConfig
from palign.methods.pas import PAS
from palign.models.loading import LoadedModel
from palign.models.readout import Readout
from palign.steering.arch import resolve_arch
from palign.steering.pas import fold_assignment
from tests.test_models_loading import smollm2  # noqa: F401  (the real model, or skip)

GRID = [-1.0, 0.0, 2.0, 8.0]


@pytest.fixture
def cache(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _scripted(tiny_lm: LoadedModel, tiny: Dataset, monkeypatch) -> tuple[PAS, list[int]]:
    """A PAS whose readout answers by a script over (alpha, fold of the statement):

    - alpha 0 (the anchor): off by one on fold 0, exact elsewhere (total = |fold 0|);
    - alpha -1: off by one on fold 0, exact elsewhere: the same total as 0, so a tie that
      the smaller alpha -1 wins. After fold 0 its running sum *equals* 0's total: a ``>=``
      stop would cut it and choose 0;
    - alpha 2: the same errors: a tie it loses to 0 (and to -1), cut after fold 0;
    - alpha 8: unparsed everywhere (error 4), cut after fold 0.

    Returns the method and a list that collects the number of requests of each read.
    """
    pas = PAS(MethodConfig(options={"k": 4, "alpha_grid": GRID, "folds": 3}))
    inv = tiny.inventory
    person = tiny.persons[0]
    truth = person.answer_vector(inv, inv.shown_ids, pas.config.semantics)
    answered = [i for i, t in enumerate(np.nan_to_num(truth)) if t > 0]
    ids = [inv.shown_ids[i] for i in answered]
    folds = fold_assignment(len(answered), 3, pas.config.seed, ids)
    fold0 = {inv.statement(inv.item(ids[j])) for j in folds[0]}
    by_statement = {inv.statement(inv.item(i)): int(t) for i, t in zip(inv.shown_ids, truth)}

    # steering rows that carry their alpha (so the script can read it back)
    def grid_rows(fit, alphas, w_o):  # type: ignore[no-untyped-def]
        return torch.stack([torch.full((2, 3), float(a)) for a in alphas])

    monkeypatch.setattr(steering_pas, "layer_vectors_grid", grid_rows)
    sizes: list[int] = []

    def scripted(lm, reqs, table):  # type: ignore[no-untyped-def]
        sizes.append(len(reqs))
        answers = np.zeros(len(reqs), dtype=int)
        for j, r in enumerate(reqs):
            t, alpha = by_statement[r.statement], float(table[r.steer, 0, 0])
            off = t + 1 if t < 5 else t - 1
            if alpha in (-1.0, 0.0, 2.0):
                answers[j] = off if r.statement in fold0 else t
            # alpha 8: 0 = unparsed (error 4)
        probs = np.full((len(reqs), 5), np.nan)
        return Readout(probs, answers, np.full(len(reqs), np.nan))

    pas._read = scripted  # type: ignore[method-assign]
    pas.arch = resolve_arch(tiny_lm.model)
    torch.manual_seed(0)
    n = len(inv.shown_ids)
    pas.acts = torch.randn(2 * n, pas.arch.n_layers, pas.arch.n_heads, pas.arch.head_dim)
    return pas, sizes


def test_early_stop_keeps_the_choice_and_the_tie_rule(tiny_lm, tiny, monkeypatch) -> None:
    person = tiny.persons[0]
    full, full_sizes = _scripted(tiny_lm, tiny, monkeypatch)
    ((a_full, e_full),) = full.select_alpha_many(tiny_lm, tiny, [person], early_stop=False)
    fast, fast_sizes = _scripted(tiny_lm, tiny, monkeypatch)
    ((a_fast, e_fast),) = fast.select_alpha_many(tiny_lm, tiny, [person])
    # the full search: -1 and 0 tie with 2 (all off by one on fold 0 only), -1 wins the tie
    assert e_full[-1.0] == e_full[0.0] == e_full[2.0] > 0 and e_full[8.0] == 4.0
    assert a_full == -1.0
    assert a_fast == a_full
    # survivors keep their exact errors; 2 (a tie it would lose) and 8 are cut
    assert e_fast[-1.0] == e_full[-1.0] and e_fast[0.0] == e_full[0.0]
    assert math.isnan(e_fast[2.0]) and math.isnan(e_fast[8.0])
    cuts = fast.alpha_cuts[person.id]
    assert set(cuts) == {"2", "8"}
    assert cuts["8"]["folds_read"] == 1 and cuts["8"]["partial_error"] == 4.0
    assert cuts["2"]["folds_read"] == 1 and cuts["2"]["partial_error"] == 1.0
    assert person.id not in full.alpha_cuts
    # fewer requests read: 2 alphas x 2 folds of items saved
    assert sum(fast_sizes) < sum(full_sizes)


def test_early_stop_off_for_a_tuned_rule(tiny_lm, tiny, monkeypatch) -> None:
    """A tuned rule chooses over part of the grid (a floor): no stop by default there."""
    pas, _ = _scripted(tiny_lm, tiny, monkeypatch)
    pas.selection = "tuned"
    pas.rule = object()  # any rule: the choice is no longer the argmin over the grid
    ((_, errors),) = pas.select_alpha_many(tiny_lm, tiny, [tiny.persons[0]])
    assert all(not math.isnan(v) for v in errors.values())


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_early_stop_on_smollm2_equals_full_search(smollm2, papi: Dataset, cache) -> None:  # noqa: F811
    """SmolLM2, two persons, pas at all positions: the same alphas, the same errors for every
    alpha that was not cut, and at least one alpha cut (grid up to 64: a wrecked model)."""
    ds = copy.copy(papi)
    inv = copy.copy(papi.inventory)
    inv.shown_ids = inv.shown_ids[:24]
    inv.__post_init__()
    ds.inventory = inv
    persons = ds.persons[:2]
    opts = {"alpha_grid": [0.0, 2.0, 8.0, 64.0], "k": 24, "steer_position": "all"}
    got = {}
    for stop in (False, True):
        m = PAS(MethodConfig("agreement", 0, {**opts, "alpha_early_stop": stop}))
        got[stop] = (m.fit_many(smollm2, ds, persons), m)
    (full, _), (fast, m_fast) = got[False], got[True]
    n_cut = 0
    for a, b in zip(full, fast):
        assert a.info["alpha"] == b.info["alpha"]
        assert torch.equal(a.steering, b.steering)
        cut = set(b.info.get("alpha_cuts", {}))
        n_cut += len(cut)
        assert all(v is not None for v in a.info["validation_errors"].values())
        for k, v in b.info["validation_errors"].items():
            if format(float(k), "g") in cut:
                assert v is None
            else:
                assert v == a.info["validation_errors"][k]
    assert n_cut >= 1
    assert m_fast.record()["alpha_early_stop"] is True


def test_cli_flag_turns_the_stop_off() -> None:
    import argparse

    from palign.cli.common import add_pas_args, pas_options

    p = argparse.ArgumentParser()
    add_pas_args(p)
    assert "alpha_early_stop" not in pas_options(p.parse_args([]))  # default: not in identity
    opts = pas_options(p.parse_args(["--no-alpha-early-stop"]))
    assert opts["alpha_early_stop"] is False
    assert PAS(MethodConfig(options=opts)).early_stop is False
    assert PAS(MethodConfig()).early_stop is True


def test_ranks_behind_follows_the_choice_order() -> None:
    from palign.steering.pas import ranks_behind

    grid = [-1.0, 0.0, 2.0, 8.0]
    complete = [False, True, False, False]
    live = [True, True, True, True]
    # equal running error: the smaller alpha -1 stays (it can still win the tie), 2 goes
    assert ranks_behind(grid, [1.0, 1.0, 1.0, 0.5], complete, live) == [2]
    assert ranks_behind(grid, [1.5, 1.0, 0.9, 3.0], complete, live) == [0, 3]
    assert ranks_behind(grid, [1.0, 1.0, 1.0, 3.0], [False] * 4, live) == []  # none complete
    assert ranks_behind(grid, [1.0, 1.0, 1.0, 3.0], complete, [True, True, True, False]) == [2]
