"""One rule for unparsed answers in alpha selection: they count as the maximal error 4.

The readout is replaced by a scripted one (answers chosen per alpha and statement), so the
selection rule is tested alone: an alpha that breaks parsing on most held-out items but is
exact on the few it parses must lose to an alpha that is off by one everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from palign.data.types import Dataset
from palign.methods.base import MethodConfig
from palign.methods.pas import PAS
from palign.models.loading import LoadedModel
from palign.models.readout import Readout
from palign.steering.arch import resolve_arch

GRID = [0.0, 2.0, 8.0]


def _scripted_pas(
    tiny_lm: LoadedModel, tiny: Dataset, readout: str, fold_heads: str = "refit"
) -> PAS:
    pas = PAS(
        MethodConfig(
            options={
                "k": 4,
                "alpha_grid": GRID,
                "folds": 3,
                "selection_readout": readout,
                "fold_heads": fold_heads,
            }
        )
    )
    inv = tiny.inventory
    person = tiny.persons[0]
    truth = dict(
        zip(
            [inv.statement(inv.item(i)) for i in inv.shown_ids],
            person.answer_vector(inv, inv.shown_ids, pas.config.semantics),
        )
    )
    parsed_by_8 = inv.statement(inv.item(inv.shown_ids[0]))  # the only item alpha 8 parses

    def scripted(lm, reqs, table):
        answers = np.zeros(len(reqs), dtype=int)
        for j, r in enumerate(reqs):
            t, alpha = int(truth[r.statement]), GRID[r.steer % len(GRID)]
            if alpha == 0.0:
                answers[j] = t + 1 if t < 5 else t - 1  # off by one everywhere
            elif alpha == 2.0:
                answers[j] = t + 2 if t <= 3 else t - 2  # off by two everywhere
            elif r.statement == parsed_by_8:
                answers[j] = t  # exact where it parses ...
            # ... and unparsed (0) everywhere else
        probs = np.full((len(reqs), 5), np.nan)
        return Readout(probs, answers, np.full(len(reqs), np.nan), texts=[""] * len(reqs))

    pas._read = scripted  # type: ignore[method-assign]
    pas.arch = resolve_arch(tiny_lm.model)
    torch.manual_seed(0)
    n = len(inv.shown_ids)
    pas.acts = torch.randn(2 * n, pas.arch.n_layers, pas.arch.n_heads, pas.arch.head_dim)
    return pas


@pytest.mark.parametrize("readout", ["generate", "logits"])
def test_unparsed_answers_count_as_error_four(tiny_lm, tiny, readout) -> None:
    """``generate`` selects through ``select_alpha_many`` (all persons at once), ``logits``
    through ``steering.pas.select_alpha``: both count an unparsed answer as error 4."""
    pas = _scripted_pas(tiny_lm, tiny, readout)
    res = pas.fit_result(tiny_lm, tiny, tiny.persons[0])
    n = len(tiny.inventory.shown_ids)
    assert res.validation_errors[0.0] == pytest.approx(1.0)
    assert res.validation_errors[2.0] == pytest.approx(2.0)
    assert res.validation_errors[8.0] == pytest.approx(4.0 * (n - 1) / n)
    assert res.alpha == 0.0


@pytest.mark.parametrize("fold_heads", ["refit", "final"])
def test_select_alpha_many_equals_select_alpha(tiny_lm, tiny, fold_heads, monkeypatch) -> None:
    """The batched selection and the per-person one give the same errors for every person
    (also with the folds keeping the final fit's heads: both paths refit the same folds)."""
    import palign.steering.pas as steering_pas

    many = _scripted_pas(tiny_lm, tiny, "generate", fold_heads)
    one = _scripted_pas(tiny_lm, tiny, "logits", fold_heads)
    heads: list[list] = []
    real = steering_pas.layer_vectors_grid

    def spy(fit, alphas, w_o):  # type: ignore[no-untyped-def]
        heads.append(list(fit.heads))
        return real(fit, alphas, w_o)

    monkeypatch.setattr(steering_pas, "layer_vectors_grid", spy)
    person = tiny.persons[0]
    # without the early stop (tested in test_pas_early_stop.py): every alpha's full error
    ((alpha, errors),) = many.select_alpha_many(tiny_lm, tiny, [person], early_stop=False)
    res = one.fit_result(tiny_lm, tiny, person)
    assert errors == pytest.approx(res.validation_errors, abs=1e-12)
    assert alpha == res.alpha
    assert heads[:3] == heads[3:]  # the same fold fits in both paths
    if fold_heads == "final":
        assert all(h == list(res.fit.heads) for h in heads)
    assert one.record()["fold_heads"] == fold_heads


def test_fold_heads_option_is_checked_and_plumbed() -> None:
    import argparse

    from palign.cli.common import add_pas_args, pas_options
    from palign.errors import PalignError

    ap = argparse.ArgumentParser()
    add_pas_args(ap)
    assert pas_options(ap.parse_args(["--fold-heads", "final"])) == {"fold_heads": "final"}
    assert "fold_heads" not in pas_options(ap.parse_args([]))  # default: not in the identity
    assert PAS(MethodConfig(options={"fold_heads": "final"})).fold_heads == "final"
    with pytest.raises(PalignError, match="unknown fold heads 'x'"):
        PAS(MethodConfig(options={"fold_heads": "x"}))
