"""Vectorised per-head probes: planted signal, parity with scikit-learn, ranking, directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from palign.errors import PalignError
from palign.steering.probes import (
    fit_logistic_batched,
    fit_probes,
    fit_probes_full,
    mass_mean_directions,
    rank_heads,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def planted(
    n: int = 200, L: int = 4, H: int = 5, d: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, dict[tuple[int, int], float], torch.Tensor]:
    """Activations with a class signal of decreasing strength on a few heads."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, L, H, d, generator=g) * 0.5 + 0.3
    y = (torch.arange(n) % 2).long()
    strengths = {(2, 3): 4.0, (0, 1): 2.5, (3, 0): 1.5}
    dirs = torch.zeros(L, H, d)
    for (layer, head), s in strengths.items():
        v = torch.randn(d, generator=g)
        v = v / v.norm()
        dirs[layer, head] = v
        X[:, layer, head] += s * 0.5 * (2 * y.float() - 1).unsqueeze(1) * v
    return X, y, strengths, dirs


def test_planted_heads_recovered() -> None:
    X, y, strengths, _ = planted()
    tr, va = torch.arange(0, 120), torch.arange(120, 200)
    acc = fit_probes(X, y, tr, va)
    assert acc.shape == (4, 5)
    top = rank_heads(acc, 3)
    assert set(top) == set(strengths)
    assert top[0] == (2, 3)
    assert float(acc[2, 3]) > 0.95
    # deterministic
    assert torch.equal(acc, fit_probes(X, y, tr, va))


def test_parity_with_sklearn_per_head() -> None:
    X, y, strengths, _ = planted(n=160, seed=1)
    tr, va = torch.arange(0, 96), torch.arange(96, 160)
    res = fit_probes_full(X, y, tr, va)
    n, L, H, d = X.shape
    sk_acc = torch.zeros(L, H)
    for layer in range(L):
        for head in range(H):
            clf = LogisticRegression(max_iter=5000, tol=1e-10)  # honest_llama's probe (C=1)
            clf.fit(X[tr, layer, head].numpy(), y[tr].numpy())
            sk_acc[layer, head] = float(
                (clf.predict(X[va, layer, head].numpy()) == y[va].numpy()).mean()
            )
            np.testing.assert_allclose(
                res.weights[layer, head].numpy(), clf.coef_[0], rtol=2e-2, atol=2e-3
            )
    # same accuracies up to a sample or two at the boundary; same top heads
    assert (res.val_accuracy - sk_acc).abs().max() <= 2 / len(va) + 1e-6
    assert set(rank_heads(res.val_accuracy, 3)) == set(rank_heads(sk_acc, 3)) == set(strengths)


def test_batched_logistic_matches_sklearn_on_separable_data() -> None:
    g = torch.Generator().manual_seed(2)
    X = torch.randn(3, 40, 10, generator=g)
    y = (torch.arange(40) % 2).float()
    X[:, :, 0] += 3 * (2 * y - 1)  # separable: the L2 penalty keeps the optimum finite
    w, b = fit_logistic_batched(X, y, steps=30)
    for p in range(3):
        clf = LogisticRegression(max_iter=10000, tol=1e-12).fit(X[p].numpy(), y.numpy())
        np.testing.assert_allclose(w[p].numpy(), clf.coef_[0], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(float(b[p]), clf.intercept_[0], rtol=1e-3, atol=1e-4)


def test_rank_heads_ties_are_deterministic() -> None:
    acc = torch.tensor([[0.5, 0.9, 0.9], [0.9, 0.1, 0.7]])
    assert rank_heads(acc, 4) == [(0, 1), (0, 2), (1, 0), (1, 2)]
    loss = torch.tensor([[0.0, 0.6, 0.2], [0.4, 0.0, 0.0]])
    assert rank_heads(acc, 3, tiebreak=loss) == [(0, 2), (1, 0), (0, 1)]
    assert len(rank_heads(acc, 100)) == 6
    with pytest.raises(PalignError):
        rank_heads(acc, 0)


def test_mass_mean_directions_and_sigma() -> None:
    X, y, strengths, dirs = planted(n=400)
    heads = list(strengths)
    d, sigma = mass_mean_directions(X, y, heads)
    assert d.shape == (3, 8) and sigma.shape == (3,)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(3))
    for k, (layer, head) in enumerate(heads):
        assert float(d[k] @ dirs[layer, head]) > 0.9  # points from label 0 to label 1
        proj = X[:, layer, head] @ d[k]
        assert abs(float(sigma[k]) - float(proj.std(unbiased=False))) < 1e-4
    # degenerate head: identical class means -> zero direction, no NaN
    Xc = torch.ones(4, 1, 1, 3)
    dz, sz = mass_mean_directions(Xc, torch.tensor([0, 1, 0, 1]), [(0, 0)])
    assert torch.equal(dz, torch.zeros(1, 3)) and float(sz[0]) == 0.0


def test_probe_input_errors() -> None:
    X, y, _, _ = planted(n=20)
    with pytest.raises(PalignError):
        fit_probes(X[:, 0], y, [0, 1], [2, 3])
    with pytest.raises(PalignError):
        fit_probes(X, y[:-1], [0, 1], [2, 3])
    with pytest.raises(PalignError):
        fit_probes(X, y, [], [2, 3])
    with pytest.raises(PalignError):
        fit_probes(X, y, [0, 99], [2, 3])
    with pytest.raises(PalignError):
        mass_mean_directions(X, torch.zeros(20, dtype=torch.long), [(0, 0)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probes_on_cuda_match_cpu() -> None:
    X, y, strengths, _ = planted()
    tr, va = torch.arange(0, 120), torch.arange(120, 200)
    cpu = fit_probes_full(X, y, tr, va)
    gpu = fit_probes_full(X.cuda(), y, tr, va)
    assert gpu.val_accuracy.device.type == "cpu"
    assert (cpu.val_accuracy - gpu.val_accuracy).abs().max() <= 1 / 80 + 1e-6
    torch.testing.assert_close(cpu.weights, gpu.weights, rtol=1e-2, atol=1e-3)
    assert set(rank_heads(gpu.val_accuracy, 3)) == set(strengths)
    d_cpu, s_cpu = mass_mean_directions(X, y, list(strengths))
    d_gpu, s_gpu = mass_mean_directions(X.cuda(), y, list(strengths))
    torch.testing.assert_close(d_cpu, d_gpu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_cpu, s_gpu, rtol=1e-4, atol=1e-5)


def test_mass_mean_skips_unlabelled_samples() -> None:
    X, y, strengths, _ = planted(n=100)
    y2 = y.clone()
    y2[::7] = -1
    keep = y2 >= 0
    d1, s1 = mass_mean_directions(X, y2, list(strengths))
    d2, s2 = mass_mean_directions(X[keep], y[keep], list(strengths))
    torch.testing.assert_close(d1, d2)
    torch.testing.assert_close(s1, s2)
