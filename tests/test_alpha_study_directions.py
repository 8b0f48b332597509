"""The alpha study's direction candidates (``benchmarks/alpha_study_directions.py``):
pooled heads, the variant fits against a numpy re-statement, the summary by hand."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from palign.data.types import Dataset
from palign.errors import PalignError
from palign.steering.pas import fit_person, head_score_map
from palign.steering.probes import rank_heads

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import alpha_study_directions as directions  # noqa: E402

L, H, D = 3, 4, 8


def _fake_pas(papi: Dataset, k: int = 4) -> SimpleNamespace:
    n = len(papi.inventory.shown_ids)
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(2 * n, L, H, D, generator=g)
    # a signal on two heads so the rankings are not all noise
    acts[0::2, 1, 2] += 0.8
    acts[1::2, 2, 0] -= 0.5
    kw = {"seed": 0, "K": k, "head_rank": "mean", "probe_split": "items"}
    return SimpleNamespace(
        acts=acts,
        _fit_kw=lambda: dict(kw),
        config=SimpleNamespace(seed=0, semantics="agreement"),
        folds=3,
        k=k,
        arch=[torch.randn(16, H * D, generator=g) for _ in range(L)],
    )


def _answers(papi: Dataset, person) -> np.ndarray:
    inv = papi.inventory
    return np.nan_to_num(person.answer_vector(inv, inv.shown_ids, "agreement"))


def test_parse_fit_variant() -> None:
    assert directions.parse_fit_variant("k=8") == {"k": 8}
    assert directions.parse_fit_variant("heads=pooled") == {"heads": "pooled", "pool": 30}
    assert directions.fit_variant_name("pool=5,heads=pooled,k=48") == "heads=pooled,k=48,pool=5"
    for bad in ("k=0", "heads=mine", "pool=5", "heads=pooled,pool=1", "x=1", ""):
        with pytest.raises(PalignError):
            directions.parse_fit_variant(bad)


def test_pool_is_disjoint_from_the_tuning_persons(papi: Dataset) -> None:
    from palign.data.protocol import development_persons

    pool = {p.id for p in directions.pool_persons(papi, 30)}
    assert len(pool) == 30
    assert not pool & {p.id for p in development_persons(papi, 50)}
    assert not pool & {p.id for p in papi.persons[:199]}  # never a reported person


def test_pooled_heads_average_the_pool_scores(papi: Dataset) -> None:
    pas = _fake_pas(papi)
    pool = directions.pool_persons(papi, 3)
    got = directions.pooled_heads(pas, papi, 3, 4)
    kw = {"seed": 0, "head_rank": "mean", "probe_split": "items"}
    maps = [head_score_map(pas.acts, _answers(papi, p), **kw) for p in pool]
    # a plain re-statement: the mean of the three (L, H) scores, best first
    mean = sum(m.score.double() for m in maps) / 3
    loss = sum(m.val_loss.double() for m in maps) / 3
    order = sorted(
        ((lh // H, lh % H) for lh in range(L * H)),
        key=lambda lh: (-float(mean[lh]), float(loss[lh]), lh),
    )
    assert got == order[:4]
    # a pool of one person gives that person's own heads
    own = fit_person(pas.acts, _answers(papi, pool[0]), K=4).heads
    assert directions.pooled_heads(pas, papi, 1, 4) == own
    assert rank_heads(maps[0].score, 4, tiebreak=maps[0].val_loss) == own


def test_pooled_fit_keeps_the_heads_and_refits_the_person_directions(papi: Dataset) -> None:
    pas = _fake_pas(papi)
    heads = [(0, 1), (2, 3), (1, 2)]
    a = _answers(papi, papi.persons[0])
    fit = directions.variant_fit(pas, a, {"heads": "pooled", "pool": 3, "k": 3}, heads)
    assert fit.heads == heads and fit.K == 3
    # numpy re-statement of the mass-mean direction and the projection std
    x = pas.acts.double().numpy()
    lab = np.stack([np.where(a > 3, 1, np.where((a > 0) & (a < 3), 0, -1))] * 2, 1)
    lab[:, 1] = np.where(lab[:, 0] == -1, -1, 1 - lab[:, 0])
    lab = lab.reshape(-1)
    for j, (layer, head) in enumerate(heads):
        xs = x[:, layer, head]
        d = xs[lab == 1].mean(0) - xs[lab == 0].mean(0)
        d /= np.linalg.norm(d)
        np.testing.assert_allclose(fit.directions[j].numpy(), d, atol=1e-5)
        sig = (xs[lab >= 0] @ d).std()
        assert float(fit.sigmas[j]) == pytest.approx(sig, rel=1e-4)
    with pytest.raises(PalignError):
        directions.variant_fit(pas, a, {"heads": "pooled", "pool": 3}, None)
    # k alone: PAS's own ranking with another K
    assert (
        directions.variant_fit(pas, a, {"k": 2}, None).heads == fit_person(pas.acts, a, K=2).heads
    )


def test_pooled_heads_are_perfectly_stable_in_head_choice(papi: Dataset) -> None:
    """Folds keep the pooled heads, so only the directions move: the stability is the mean
    cosine of the fold refits with the final vector, recomputed here by hand."""
    from palign.steering.pas import fold_assignment, refit_directions, unit_layer_vectors

    pas = _fake_pas(papi)
    heads = [(1, 2), (2, 0)]
    a = _answers(papi, papi.persons[1])
    settings = {"heads": "pooled", "pool": 3, "k": 2}
    final = directions.variant_fit(pas, a, settings, heads)
    fu = unit_layer_vectors(final, pas.arch).double()
    got = directions.variant_stability(pas, a, settings, heads, fu, papi.inventory.shown_ids)
    answered = [i for i in range(len(a)) if a[i] > 0]
    ids = papi.inventory.shown_ids
    cos = []
    for fold in fold_assignment(len(answered), 3, 0, [ids[i] for i in answered]):
        tr = a.copy()
        tr[[answered[j] for j in fold]] = 0
        u = unit_layer_vectors(refit_directions(final, pas.acts, tr), pas.arch).double()
        cos.append(float(torch.nn.functional.cosine_similarity(u.flatten(), fu.flatten(), 0)))
    assert got == pytest.approx(np.mean(cos), abs=1e-9)
    assert -1 <= got <= 1


def test_summarise_by_hand() -> None:
    curves = {
        "p1": {
            "test_sum": {"0": 5.0, "1": 4.0},
            "stability": 0.5,
            "fit_variants": {"k=8": {"test_sum": {"0": 5.0, "1": 6.0}, "stability": 0.9}},
        },
        "p2": {
            "test_sum": {"0": 3.0, "1": 4.0},
            "stability": 0.1,
            "fit_variants": {"k=8": {"test_sum": {"0": 3.0, "1": 2.0}, "stability": 0.7}},
        },
        "p3": {"test_sum": {"0": 2.0, "1": 2.0}, "stability": 0.3},  # no variant: left out
    }
    s = directions.summarise(curves)
    assert s["default"]["n"] == 3 and s["k=8"]["n"] == 2
    assert s["default"]["oracle"] == pytest.approx((4 + 3 + 2) / 3)
    assert s["default"]["oracle_better"] == 1
    assert s["default"]["fixed"]["1"] == {"mean": pytest.approx(10 / 3), "better": 1, "worse": 1}
    assert s["k=8"]["zero"] == 4.0 and s["k=8"]["oracle"] == 3.5
    assert s["k=8"]["fixed"]["1"] == {"mean": 4.0, "better": 1, "worse": 1}
    assert s["k=8"]["stability"] == pytest.approx(0.8)
    lines = directions.markdown_lines(s, "development")
    assert any(
        line.startswith("| k=8 | 2 | 0.80 | 4.000 | 3.500 (1) | 4.000 (1/1) |") for line in lines
    )


def test_level_and_content_split_the_pas_direction(papi: Dataset) -> None:
    """``level`` + ``content`` add up to PAS's mass-mean difference; numpy re-statement."""
    pas = _fake_pas(papi)
    a = _answers(papi, papi.persons[2])
    base = fit_person(pas.acts, a, K=4)
    lev = directions.variant_fit(pas, a, {"dir": "level"}, None)
    con = directions.variant_fit(pas, a, {"dir": "content"}, None)
    assert lev.heads == con.heads == base.heads
    x = pas.acts.double().numpy()
    s = np.where(a > 3, 1.0, np.where((a > 0) & (a < 3), -1.0, 0.0))
    n = (s != 0).sum()
    for j, (layer, head) in enumerate(base.heads):
        delta = x[0::2, layer, head] - x[1::2, layer, head]  # A_i - E_i, every shown item
        v = (s[:, None] * delta).sum(0) / n
        m = delta.mean(0) / np.linalg.norm(delta.mean(0))
        level = (v @ m) * m
        content = v - level
        np.testing.assert_allclose(
            lev.directions[j].numpy(), level / np.linalg.norm(level), atol=1e-5
        )
        np.testing.assert_allclose(
            con.directions[j].numpy(), content / np.linalg.norm(content), atol=1e-5
        )
        np.testing.assert_allclose(base.directions[j].numpy(), v / np.linalg.norm(v), atol=1e-5)
        assert abs(float(con.directions[j] @ torch.tensor(m, dtype=torch.float32))) < 1e-5
    assert directions.parse_fit_variant("dir=level") == {"dir": "level"}
    with pytest.raises(PalignError):
        directions.parse_fit_variant("dir=other")
