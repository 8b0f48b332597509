"""Head ranking: ``mean`` (the original's: mean of validation and training probe accuracy) vs
``val`` (validation accuracy alone), against independent re-statements."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from palign.errors import PalignError
from palign.steering.pas import _split_items, fit_pas, fit_person, labels_for
from palign.steering.probes import fit_probes_full

pytestmark = pytest.mark.usefixtures("one_thread")

L, H, D, N = 2, 3, 4, 50
SEED = 0


def constructed() -> tuple[torch.Tensor, np.ndarray, list[int], list[int]]:
    """Head (0, 0) separates the training items perfectly but only 60% of the validation
    items (train 1.0, val 0.6: mean 0.8); head (1, 1) separates 70% of all items (train and
    val 0.7: mean 0.7). Validation ranks (1, 1) first, the mean ranks (0, 0) first."""
    g = torch.Generator().manual_seed(1)
    answers = np.where(np.arange(N) % 2 == 0, 5.0, 1.0)
    tr, va = _split_items(N, SEED, 0.4)  # every item is usable: the split is over 0..N-1
    tr, va = tr.tolist(), va.tolist()
    y = labels_for(answers)
    sign = torch.where(y == 1, 1.0, -1.0)  # (2N,)
    acts = 0.01 * torch.randn(2 * N, L, H, D, generator=g)
    flip00 = torch.ones(N)
    flip00[va[: round(0.4 * len(va))]] = -1.0  # 40% of the validation items flipped
    flip11 = torch.ones(N)
    flip11[tr[: round(0.3 * len(tr))]] = -1.0  # 30% of the training items
    flip11[va[: round(0.3 * len(va))]] = -1.0  # and 30% of the validation items flipped
    per_sample = lambda f: f.repeat_interleave(2)  # noqa: E731  item -> its two samples
    acts[:, 0, 0, 0] += 3.0 * sign * per_sample(flip00)
    acts[:, 1, 1, 1] += 3.0 * sign * per_sample(flip11)
    return acts, answers, tr, va


def _samples(items: list[int]) -> np.ndarray:
    return np.array([[2 * i, 2 * i + 1] for i in items]).reshape(-1)


def test_mean_and_val_rankings_differ_on_a_constructed_case() -> None:
    acts, answers, _, _ = constructed()
    by_val = fit_person(acts, answers, K=1, seed=SEED, head_rank="val")
    by_mean = fit_person(acts, answers, K=1, seed=SEED, head_rank="mean")
    assert by_val.heads == [(1, 1)]
    assert by_mean.heads == [(0, 0)]
    assert by_mean.head_rank == "mean" and by_val.head_rank == "val"
    assert fit_person(acts, answers, K=1, seed=SEED).heads == [(0, 0)]  # default: the original's
    # the recorded accuracies of the kept heads are the constructed ones
    assert float(by_mean.train_accuracy[0]) == pytest.approx(1.0)
    assert float(by_mean.val_accuracy[0]) == pytest.approx(0.6)
    assert float(by_val.train_accuracy[0]) == pytest.approx(0.7, abs=0.02)
    assert float(by_val.val_accuracy[0]) == pytest.approx(0.7, abs=0.02)


def test_ranking_equals_a_scikit_learn_restatement() -> None:
    """The original's procedure, written out with scikit-learn: one LogisticRegression per
    head (C = 1), accuracy on the training and the validation samples, heads sorted by
    (val + train) / 2, or by val alone."""
    from sklearn.linear_model import LogisticRegression

    acts, answers, tr_items, va_items = constructed()
    y = labels_for(answers).numpy()
    tr, va = _samples(tr_items), _samples(va_items)
    X = acts.numpy().astype(np.float64)
    acc_tr = np.zeros((L, H))
    acc_va = np.zeros((L, H))
    for layer in range(L):
        for head in range(H):
            clf = LogisticRegression(C=1.0, max_iter=1000).fit(X[tr, layer, head], y[tr])
            acc_tr[layer, head] = (clf.predict(X[tr, layer, head]) == y[tr]).mean()
            acc_va[layer, head] = (clf.predict(X[va, layer, head]) == y[va]).mean()
    for rank, score in (("val", acc_va), ("mean", (acc_va + acc_tr) / 2)):
        best = np.unravel_index(int(np.argmax(score)), score.shape)
        assert np.sum(score == score.max()) == 1  # the constructed case has no tie at the top
        fit = fit_person(acts, answers, K=1, seed=SEED, head_rank=rank)
        assert fit.heads == [(int(best[0]), int(best[1]))]
        lh = fit.heads[0]
        assert float(fit.train_accuracy[0]) == pytest.approx(acc_tr[lh], abs=1 / len(tr) + 1e-9)
        assert float(fit.val_accuracy[0]) == pytest.approx(acc_va[lh], abs=1 / len(va) + 1e-9)


def test_full_ranking_equals_a_plain_restatement_on_random_data() -> None:
    """On unstructured data: the complete order of all heads equals a plain numpy sort of the
    probes' own accuracies (train accuracy recomputed from the probe weights), both rankings."""
    g = torch.Generator().manual_seed(3)
    n = 40
    acts = torch.randn(2 * n, L, H, D, generator=g)
    answers = np.random.default_rng(3).choice([1.0, 2.0, 4.0, 5.0], size=n)
    y = labels_for(answers)
    tr_i, va_i = _split_items(n, SEED, 0.4)
    tr, va = _samples(tr_i.tolist()), _samples(va_i.tolist())
    probe = fit_probes_full(acts, y, torch.tensor(tr), torch.tensor(va))
    w, b = probe.weights.numpy(), probe.bias.numpy()
    Xtr = acts.numpy()[tr]
    z = np.einsum("nlhd,lhd->lhn", Xtr, w) + b[..., None]
    acc_tr = ((z > 0) == (y.numpy()[tr] == 1)).mean(axis=-1)
    acc_va = probe.val_accuracy.numpy()
    loss = probe.val_loss.numpy()
    orders = {}
    for rank, score in (("val", acc_va), ("mean", (acc_va + acc_tr) / 2)):
        flat = np.lexsort((np.arange(L * H), loss.reshape(-1), -score.reshape(-1)))
        want = [(int(i) // H, int(i) % H) for i in flat]
        got = fit_person(acts, answers, K=L * H, seed=SEED, head_rank=rank).heads
        assert got == want
        orders[rank] = got
    assert orders["val"] != orders["mean"]


def test_head_rank_is_checked_and_plumbed_through_fit_pas() -> None:
    acts, answers, _, _ = constructed()
    with pytest.raises(PalignError, match="head ranking"):
        fit_person(acts, answers, K=1, head_rank="train")
    w_o = [torch.eye(H * D) for _ in range(L)]
    res = fit_pas(acts, answers, w_o, alpha=1.0, K=1, head_rank="val")
    assert res.fit.heads == [(1, 1)] and res.fit.head_rank == "val"
    seen = []

    def score(u: torch.Tensor, held: list[int]) -> np.ndarray:
        seen.append(1)
        return np.full((u.shape[0], len(held)), 3.0)

    res = fit_pas(acts, answers, w_o, score_fn=score, grid=(0, 1), K=1, head_rank="val")
    assert seen and res.fit.heads == [(1, 1)]


def test_adapter_records_head_rank_and_old_adapters_read_as_val(tmp_path) -> None:
    from palign.steering.adapter import ADAPTER_CONFIG, load_adapter, save_adapter

    acts, answers, _, _ = constructed()
    w_o = [torch.randn(8, H * D, generator=torch.Generator().manual_seed(k)) for k in range(L)]
    res = fit_pas(acts, answers, w_o, alpha=2.0, K=2)
    save_adapter(
        tmp_path / "a", res, model_id="m", model_type="llama", inventory="tiny", semantics="paper"
    )
    cfg = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())
    assert cfg["head_rank"] == "mean"
    assert load_adapter(tmp_path / "a").fit.head_rank == "mean"
    del cfg["head_rank"]  # an adapter written before the field existed: fitted by validation
    (tmp_path / "a" / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    assert load_adapter(tmp_path / "a").fit.head_rank == "val"
    cfg["head_rank"] = "bogus"
    (tmp_path / "a" / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(PalignError, match="head_rank"):
        load_adapter(tmp_path / "a")


def test_pas_method_reads_records_and_cli_passes_head_rank() -> None:
    import argparse

    from palign.cli.common import add_pas_args, pas_options
    from palign.methods import MethodConfig, get_method

    assert get_method("pas").record()["head_rank"] == "mean"
    m = get_method("pas", MethodConfig(options={"head_rank": "val"}))
    assert m.head_rank == "val" and m.record()["head_rank"] == "val"
    with pytest.raises(PalignError, match="head ranking"):
        get_method("pas", MethodConfig(options={"head_rank": "x"}))
    p = argparse.ArgumentParser()
    add_pas_args(p)
    assert pas_options(p.parse_args(["--head-rank", "val"]))["head_rank"] == "val"
    assert "head_rank" not in pas_options(p.parse_args([]))
