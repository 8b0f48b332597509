"""Probe split: ``items`` (palign's default: both samples of an item on one side) vs
``samples`` (the original code's 60/40 ``np.random.choice`` over samples), against
independent re-statements."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from palign.errors import PalignError
from palign.steering.pas import (
    _split_items,
    _split_samples,
    fit_pas,
    fit_person,
    labels_for,
    select_alpha,
)

pytestmark = pytest.mark.usefixtures("one_thread")

L, H, D = 2, 3, 4
SEED = 0


def random_case(n: int = 40, seed: int = 3) -> tuple[torch.Tensor, np.ndarray]:
    """Unstructured activations; answers with neutral (3) and missing (0) items mixed in."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(2 * n, L, H, D, generator=g)
    answers = np.random.default_rng(seed).choice([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], size=n)
    return acts, answers


def usable_samples(answers: np.ndarray) -> np.ndarray:
    items = np.nonzero((answers > 0) & (answers != 3))[0]
    return np.stack([2 * items, 2 * items + 1], axis=1).reshape(-1)


def test_sample_split_has_the_originals_sizes_and_straddles_items() -> None:
    for n in (10, 57, 240):
        tr, va = _split_samples(n, SEED, 0.4)
        # the original: train = np.random.choice(idx, size=int(len(idx) * (1 - 0.4))), val = rest
        assert len(tr) == int(n * (1 - 0.4)) and len(va) == n - len(tr)
        assert sorted(tr.tolist() + va.tolist()) == list(range(n))
    acts, answers = random_case()
    pool = usable_samples(answers)
    tr, va = _split_samples(len(pool), SEED, 0.4)
    tr_items = {int(pool[i]) // 2 for i in tr.tolist()}
    va_items = {int(pool[i]) // 2 for i in va.tolist()}
    assert tr_items & va_items  # some item has one sample on each side (the original allows it)
    ti, vi = _split_items(len(pool) // 2, SEED, 0.4)
    assert not set(ti.tolist()) & set(vi.tolist())  # never with the item split


@pytest.mark.parametrize("split", ["items", "samples"])
def test_ranking_equals_a_scikit_learn_restatement(split: str) -> None:
    """The original's train_probes written out with scikit-learn on the same split: one
    LogisticRegression per head (C = 1), heads sorted by (val + train) / 2."""
    from sklearn.linear_model import LogisticRegression

    acts, answers = random_case()
    y = labels_for(answers).numpy()
    pool = usable_samples(answers)
    if split == "samples":
        tr_i, va_i = _split_samples(len(pool), SEED, 0.4)
        tr, va = pool[tr_i.numpy()], pool[va_i.numpy()]
    else:
        tr_i, va_i = _split_items(len(pool) // 2, SEED, 0.4)
        items = pool[::2] // 2
        tr = np.stack([2 * items[tr_i.numpy()], 2 * items[tr_i.numpy()] + 1], 1).reshape(-1)
        va = np.stack([2 * items[va_i.numpy()], 2 * items[va_i.numpy()] + 1], 1).reshape(-1)
    assert set(y[tr]) == {0, 1} and set(y[va]) == {0, 1}
    X = acts.numpy().astype(np.float64)
    acc_tr = np.zeros((L, H))
    acc_va = np.zeros((L, H))
    for layer in range(L):
        for head in range(H):
            clf = LogisticRegression(C=1.0, max_iter=1000).fit(X[tr, layer, head], y[tr])
            acc_tr[layer, head] = (clf.predict(X[tr, layer, head]) == y[tr]).mean()
            acc_va[layer, head] = (clf.predict(X[va, layer, head]) == y[va]).mean()
    fit = fit_person(acts, answers, K=L * H, seed=SEED, probe_split=split)
    assert fit.probe_split == split
    got_tr = np.zeros((L, H))
    got_va = np.zeros((L, H))
    for k, lh in enumerate(fit.heads):
        got_tr[lh] = float(fit.train_accuracy[k])
        got_va[lh] = float(fit.val_accuracy[k])
    # the batched probe and scikit-learn agree up to one sample near the boundary
    np.testing.assert_allclose(got_tr, acc_tr, atol=1 / len(tr) + 1e-9)
    np.testing.assert_allclose(got_va, acc_va, atol=1 / len(va) + 1e-9)
    score = (got_va + got_tr) / 2
    assert [score[lh] for lh in fit.heads] == sorted(score.reshape(-1), reverse=True)


def test_the_two_splits_give_different_fits_on_random_data() -> None:
    acts, answers = random_case()
    by_items = fit_person(acts, answers, K=L * H, seed=SEED)
    by_samples = fit_person(acts, answers, K=L * H, seed=SEED, probe_split="samples")
    assert by_items.probe_split == "items"  # the default
    assert by_items.heads != by_samples.heads or not torch.equal(
        by_items.val_accuracy, by_samples.val_accuracy
    )
    # directions and sigmas use all labelled samples: the split changes only the ranking
    again = fit_person(acts, answers, K=L * H, seed=SEED, probe_split="samples")
    assert again.heads == by_samples.heads  # seeded: the same split every run


def test_probe_split_is_checked_and_plumbed_through_fit_pas_and_select_alpha() -> None:
    acts, answers = random_case()
    with pytest.raises(PalignError, match="probe split"):
        fit_person(acts, answers, K=1, probe_split="heads")
    w_o = [torch.eye(H * D) for _ in range(L)]
    res = fit_pas(acts, answers, w_o, alpha=1.0, K=2, probe_split="samples")
    assert res.fit.probe_split == "samples"
    want = fit_person(acts, answers, K=2, seed=0, probe_split="samples").heads
    assert res.fit.heads == want
    seen: list[list[tuple[int, int]]] = []

    def score(u: torch.Tensor, held: list[int]) -> np.ndarray:
        # which layers carry a vector tells which heads the refit kept
        seen.append(sorted({int(i) for i in torch.nonzero(u[1].abs().sum(-1)).flatten()}))
        return np.full((u.shape[0], len(held)), 3.0)

    select_alpha(acts, answers, score, w_o, grid=(0, 1), k_folds=2, K=1, probe_split="samples")
    refit_layers = []
    a = torch.as_tensor(np.nan_to_num(answers), dtype=torch.float64)
    from palign.steering.pas import fold_assignment

    answered = torch.nonzero(a > 0).flatten()
    for fold in fold_assignment(answered.numel(), 2, 0, None):
        train = a.clone()
        train[answered[torch.tensor(fold)]] = 0
        fit = fit_person(acts, train.numpy(), K=1, seed=0, probe_split="samples")
        refit_layers.append([fit.heads[0][0]])
    assert seen == refit_layers


def test_adapter_records_probe_split_and_old_adapters_read_as_items(tmp_path) -> None:
    from palign.steering.adapter import ADAPTER_CONFIG, load_adapter, save_adapter

    acts, answers = random_case()
    w_o = [torch.randn(8, H * D, generator=torch.Generator().manual_seed(k)) for k in range(L)]
    res = fit_pas(acts, answers, w_o, alpha=2.0, K=2, probe_split="samples")
    save_adapter(
        tmp_path / "a", res, model_id="m", model_type="llama", inventory="tiny", semantics="paper"
    )
    cfg = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())
    assert cfg["probe_split"] == "samples"
    assert load_adapter(tmp_path / "a").fit.probe_split == "samples"
    del cfg["probe_split"]  # written before the field existed: those adapters split over items
    (tmp_path / "a" / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    assert load_adapter(tmp_path / "a").fit.probe_split == "items"
    cfg["probe_split"] = "bogus"
    (tmp_path / "a" / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(PalignError, match="probe_split"):
        load_adapter(tmp_path / "a")


def test_pas_method_reads_records_and_cli_passes_probe_split() -> None:
    import argparse

    from palign.cli.common import add_pas_args, pas_options
    from palign.methods import MethodConfig, get_method

    assert get_method("pas").record()["probe_split"] == "items"
    m = get_method("pas+few-shot", MethodConfig(options={"probe_split": "samples"}))
    assert m.probe_split == "samples" and m.record()["probe_split"] == "samples"
    with pytest.raises(PalignError, match="probe split"):
        get_method("pas", MethodConfig(options={"probe_split": "x"}))
    p = argparse.ArgumentParser()
    add_pas_args(p)
    assert pas_options(p.parse_args(["--probe-split", "samples"]))["probe_split"] == "samples"
    assert "probe_split" not in pas_options(p.parse_args([]))
