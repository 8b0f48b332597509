"""PAS per-person fit: labels, planted heads, shifts vs layer vectors, alpha selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import palign.steering.pas as pas
from palign.errors import PalignError
from palign.steering.pas import (
    fit_pas,
    fit_person,
    fold_assignment,
    labels_for,
    layer_vectors,
    layer_vectors_grid,
    oracle_alpha,
    select_alpha,
    shifts,
)

pytestmark = pytest.mark.usefixtures("one_thread")


L, H, D, HIDDEN = 5, 4, 6, 10
PLANTED = {(3, 1): 4.0, (1, 2): 3.0}


def person_data(
    n_items: int = 60, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray, dict[tuple[int, int], torch.Tensor]]:
    """Layout: sample 2i = item i with A, 2i+1 = with E; the planted heads carry 'matches'."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    answers = rng.choice([1, 2, 3, 4, 5], size=n_items).astype(float)
    answers[[3, n_items - 1]] = np.nan  # missing
    acts = torch.randn(2 * n_items, L, H, D, generator=g)
    y = labels_for(answers)
    dirs = {}
    for (layer, head), s in PLANTED.items():
        v = torch.randn(D, generator=g)
        v = v / v.norm()
        dirs[(layer, head)] = v
        sign = torch.where(y == 1, 1.0, torch.where(y == 0, -1.0, 0.0))
        acts[:, layer, head] += 0.5 * s * sign.unsqueeze(1) * v
    return acts, answers, dirs


def w_o_list(seed: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(HIDDEN, H * D, generator=g) for _ in range(L)]


def test_labels_for() -> None:
    y = labels_for([5, 4, 3, 2, 1, 0, float("nan")])
    assert y.tolist() == [1, 0, 1, 0, -1, -1, 0, 1, 0, 1, -1, -1, -1, -1]
    with pytest.raises(PalignError):
        labels_for([6])


def test_fit_person_recovers_planted_heads() -> None:
    acts, answers, dirs = person_data()
    fit = fit_person(acts, answers, K=2, seed=0)
    assert set(fit.heads) == set(PLANTED)
    assert fit.directions.shape == (2, D) and fit.sigmas.shape == (2,)
    assert fit.n_items == int(np.sum((answers > 0) & (answers != 3)))
    for k, lh in enumerate(fit.heads):
        assert float(fit.directions[k] @ dirs[lh]) > 0.9
        assert float(fit.val_accuracy[k]) > 0.8
    again = fit_person(acts, answers, K=2, seed=0)
    assert again.heads == fit.heads and torch.equal(again.directions, fit.directions)
    assert fit_person(acts, answers, K=7).heads[:2] == fit.heads  # default K keeps the best


def test_fit_person_errors() -> None:
    acts, answers, _ = person_data(n_items=6)
    with pytest.raises(PalignError, match="2 samples per item"):
        fit_person(acts[:-1], answers)
    with pytest.raises(PalignError, match="at least 2"):
        fit_person(acts, [3, 3, 3, 0, 5, 3])


def test_shifts_and_layer_vectors_agree() -> None:
    acts, answers, _ = person_data()
    fit = fit_person(acts, answers, K=3)
    W = w_o_list()
    delta = shifts(fit, 2.5)
    assert delta.shape == (L, H, D)
    nonzero = {(int(a), int(b)) for a, b in torch.nonzero(delta.abs().sum(-1)).tolist()}
    assert nonzero == set(fit.heads)
    u = layer_vectors(fit, 2.5, W)
    assert u.shape == (L, HIDDEN)
    for layer in range(L):
        torch.testing.assert_close(
            u[layer], W[layer] @ delta[layer].flatten(), rtol=1e-5, atol=1e-5
        )
    grid = layer_vectors_grid(fit, [0, 1, 2.5], W)
    torch.testing.assert_close(grid[2], u)
    assert torch.equal(grid[0], torch.zeros(L, HIDDEN))
    torch.testing.assert_close(layer_vectors(fit, 2.5, lambda i: W[i]), u)
    with pytest.raises(PalignError, match="W_o"):
        layer_vectors(fit, 1.0, [w[:, :5] for w in W])


def _score_fn_factory(shown_answers: np.ndarray, best: float, seen: list[list[int]]):
    """A readout stand-in: predictions get closer to the truth up to alpha=best, then worse."""

    def score_fn(u_by_alpha: torch.Tensor, held: list[int]) -> np.ndarray:
        seen.append(list(held))
        assert u_by_alpha.shape[1:] == (L, HIDDEN)
        alphas = u_by_alpha.flatten(1).norm(dim=1)
        unit = alphas[1] if float(alphas[1]) > 0 else torch.tensor(1.0)
        truth = np.nan_to_num(shown_answers[held], nan=3.0)
        out = []
        for a in (alphas / unit).tolist():
            off = abs(a - best)
            out.append(np.clip(truth + off * 0.3, 1, 5))
        return np.stack(out)

    return score_fn


def test_select_alpha_sees_only_shown_items_and_finds_best() -> None:
    acts, answers, _ = person_data(n_items=80)
    n_shown = 50  # items 50..79 are the test items: they never enter select_alpha
    shown_acts, shown = acts[: 2 * n_shown], answers[:n_shown]
    seen: list[list[int]] = []
    alpha, errors = select_alpha(
        shown_acts, shown, _score_fn_factory(shown, 4.0, seen), w_o_list(), k_folds=5, seed=3
    )
    assert alpha == 4.0
    assert list(errors) == [0.0, 1.0, 2.0, 4.0, 6.0, 8.0]
    assert errors[4.0] == min(errors.values())
    asked = [i for fold in seen for i in fold]
    answered = [i for i in range(n_shown) if not math.isnan(shown[i])]
    assert len(seen) == 5
    assert sorted(asked) == answered  # every answered shown item held out exactly once
    assert all(0 <= i < n_shown for i in asked)
    # same seed, same folds and result
    seen2: list[list[int]] = []
    assert select_alpha(
        shown_acts, shown, _score_fn_factory(shown, 4.0, seen2), w_o_list(), k_folds=5, seed=3
    ) == (alpha, errors)
    assert seen2 == seen


def test_default_folds_are_the_methods() -> None:
    """select_alpha/fit_pas default to the folds the pas methods use (3), as documented."""
    from palign.methods.pas import PAS

    acts, answers, _ = person_data(n_items=30)
    seen: list[list[int]] = []
    select_alpha(acts, answers, _score_fn_factory(answers, 2.0, seen), w_o_list(), K=2)
    assert len(seen) == 3 == PAS().folds
    seen.clear()
    fit_pas(acts, answers, w_o_list(), score_fn=_score_fn_factory(answers, 2.0, seen), K=2)
    assert len(seen) == 3


def test_select_alpha_refits_without_held_out(monkeypatch: pytest.MonkeyPatch) -> None:
    acts, answers, _ = person_data(n_items=30)
    fitted_with: list[np.ndarray] = []
    real = pas.fit_person

    def spy(a, ans, **kw):  # type: ignore[no-untyped-def]
        fitted_with.append(np.asarray(ans, dtype=float).copy())
        return real(a, ans, **kw)

    monkeypatch.setattr(pas, "fit_person", spy)
    seen: list[list[int]] = []
    select_alpha(acts, answers, _score_fn_factory(answers, 2.0, seen), w_o_list(), k_folds=3)
    assert len(fitted_with) == 3
    for train_answers, held in zip(fitted_with, seen):
        assert np.all(train_answers[held] == 0)  # masked: their samples are not used


def test_select_alpha_ties_unparsed_and_shape_errors() -> None:
    acts, answers, _ = person_data(n_items=20)
    const = lambda u, held: np.full((u.shape[0], len(held)), 3.0)  # noqa: E731
    alpha, errors = select_alpha(acts, answers, const, w_o_list(), grid=[2.0, 1.0], k_folds=2)
    assert alpha == 1.0 and errors[1.0] == errors[2.0]  # tie -> smaller alpha
    unparsed = lambda u, held: np.stack([np.full(len(held), 3.0), np.zeros(len(held))])  # noqa: E731
    alpha, errors = select_alpha(acts, answers, unparsed, w_o_list(), grid=[0.0, 1.0], k_folds=2)
    assert alpha == 0.0 and errors[1.0] == 4.0
    bad = lambda u, held: np.zeros((1, 1))  # noqa: E731
    with pytest.raises(PalignError, match="score_fn returned shape"):
        select_alpha(acts, answers, bad, w_o_list(), k_folds=2)
    with pytest.raises(PalignError, match="empty"):
        select_alpha(acts, answers, const, w_o_list(), grid=[])


def test_fold_assignment() -> None:
    folds = fold_assignment(10, 3, seed=1)
    assert sorted(i for f in folds for i in f) == list(range(10))
    assert folds == fold_assignment(10, 3, seed=1)
    assert folds != fold_assignment(10, 3, seed=2)
    ids = [f"i{k}" for k in range(10)]
    by_id = fold_assignment(10, 3, seed=1, item_ids=ids)
    rev = fold_assignment(10, 3, seed=1, item_ids=ids[::-1])
    # an item's fold depends on its id, not on its position
    group = {ids[i]: f for f, fold in enumerate(by_id) for i in fold}
    group_rev = {ids[::-1][i]: f for f, fold in enumerate(rev) for i in fold}
    assert group == group_rev
    assert len(fold_assignment(3, 10)) == 3  # clipped to leave-one-out
    with pytest.raises(PalignError):
        fold_assignment(1, 5)


def test_oracle_is_separate_and_uses_test_items() -> None:
    acts, answers, _ = person_data(n_items=80)
    shown_acts, shown, test = acts[:100], answers[:50], answers[50:]
    fit = fit_person(shown_acts, shown)
    seen: list[list[int]] = []
    alpha, errors = oracle_alpha(fit, w_o_list(), _score_fn_factory(test, 6.0, seen), test)
    assert alpha == 6.0
    assert seen == [[i for i in range(30) if not math.isnan(test[i])]]


def test_fit_pas_fixed_and_selected() -> None:
    acts, answers, _ = person_data(n_items=40)
    W = w_o_list()
    res = fit_pas(acts, answers, W, alpha=3.0, K=2)
    assert res.alpha_selection == "fixed" and res.validation_errors == {}
    torch.testing.assert_close(res.u, 3.0 * res.u_unit)
    torch.testing.assert_close(res.u, layer_vectors(res.fit, 3.0, W))
    seen: list[list[int]] = []
    res2 = fit_pas(acts, answers, W, score_fn=_score_fn_factory(answers, 2.0, seen), K=2)
    assert res2.alpha_selection == "heldout-kfold" and res2.alpha == 2.0
    assert set(res2.validation_errors) == {0.0, 1.0, 2.0, 4.0, 6.0, 8.0}
    with pytest.raises(PalignError, match="score_fn"):
        fit_pas(acts, answers, W)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_person_on_cuda() -> None:
    acts, answers, _ = person_data()
    cpu = fit_person(acts, answers, K=2)
    gpu = fit_person(acts.cuda(), answers, K=2)
    assert gpu.heads == cpu.heads
    torch.testing.assert_close(gpu.directions, cpu.directions, rtol=1e-4, atol=1e-5)
    assert gpu.directions.device.type == "cpu"


# --- fold_heads="final": folds keep the final fit's heads --------------------------------


def test_refit_directions_is_the_mass_mean_on_the_given_answers() -> None:
    """The same heads, directions and scales re-stated by hand (numpy) on a fold's answers."""
    acts, answers, _ = person_data()
    final = fit_person(acts, answers, K=3)
    same = pas.refit_directions(final, acts, answers)
    assert same.heads == final.heads
    torch.testing.assert_close(same.directions, final.directions)
    torch.testing.assert_close(same.sigmas, final.sigmas)
    fold = np.nan_to_num(answers).copy()
    fold[:20] = 0.0
    got = pas.refit_directions(final, acts, fold)
    assert got.heads == final.heads and got.n_items == int(((fold > 0) & (fold != 3)).sum())
    y = labels_for(fold).numpy()
    X = acts.double().numpy()
    for k, (layer, head) in enumerate(final.heads):
        xs = X[:, layer, head]
        d = xs[y == 1].mean(0) - xs[y == 0].mean(0)
        d = d / np.linalg.norm(d)
        np.testing.assert_allclose(got.directions[k].numpy(), d, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            float(got.sigmas[k]), np.std(xs[y >= 0] @ d), rtol=1e-5, atol=1e-6
        )
    assert not torch.allclose(got.directions, final.directions)
    with pytest.raises(PalignError, match="at least 2"):
        pas.refit_directions(final, acts, np.zeros_like(fold))
    with pytest.raises(PalignError, match="unknown fold heads"):
        select_alpha(acts, answers, lambda u, h: None, w_o_list(), fold_heads="x")


def test_select_alpha_fold_heads_final_keeps_the_final_heads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every fold scores the final fit's heads with directions refitted without the fold;
    the default (refit) refits heads per fold and so differs on this person."""
    acts, answers, _ = person_data(n_items=30)
    final = fit_person(acts, answers, K=4)
    used: list[pas.PASFit] = []
    real = pas.layer_vectors_grid

    def spy(fit, alphas, w_o):  # type: ignore[no-untyped-def]
        used.append(fit)
        return real(fit, alphas, w_o)

    monkeypatch.setattr(pas, "layer_vectors_grid", spy)
    seen: list[list[int]] = []
    score = _score_fn_factory(answers, 2.0, seen)
    select_alpha(acts, answers, score, w_o_list(), K=4, fold_heads="final")
    assert len(used) == 3
    for fit, held in zip(used, seen):
        assert fit.heads == final.heads
        train = np.nan_to_num(answers).copy()
        train[held] = 0.0
        torch.testing.assert_close(
            fit.directions, pas.refit_directions(final, acts, train).directions
        )
    used.clear()
    select_alpha(acts, answers, score, w_o_list(), K=4)
    assert any(f.heads != final.heads for f in used)  # refit: the heads move between folds
    # fit_pas passes it through
    used.clear()
    fit_pas(acts, answers, w_o_list(), score_fn=score, K=4, fold_heads="final")
    assert all(f.heads == final.heads for f in used)
