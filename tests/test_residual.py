"""Residual-stream directions (CAA, trait directions) against independent re-statements."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from palign.data.types import Dataset
from palign.errors import PalignError
from palign.methods.pas_capture import residual_activations
from palign.models.loading import LoadedModel
from palign.steering.arch import resolve_arch
from palign.steering.residual import (
    caa_direction,
    residual_table,
    trait_directions,
    trait_weights,
)


def test_capture_is_residual_after_attention(
    tiny: Dataset, tiny_lm: LoadedModel, tmp_path: Path, monkeypatch, one_thread
) -> None:
    """Captured = hidden state entering layer l + that layer's o_proj output (Llama), at the
    last token, from a plain forward with output_hidden_states and an o_proj forward hook."""
    from palign.methods.pas import contrastive_prompts
    from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT, encode_prompt

    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path))
    arch = resolve_arch(tiny_lm.model)
    got = residual_activations(tiny_lm, tiny, arch, progress=False)
    assert got.shape == (2 * len(tiny.inventory.shown_ids), arch.n_layers, arch.hidden)
    prompts = contrastive_prompts(tiny_lm, tiny, NEUTRAL_SYSTEM_PROMPT)
    for k in (0, 3):
        ids = torch.tensor([encode_prompt(tiny_lm.tokenizer, prompts[k])])
        outs: dict[int, torch.Tensor] = {}
        hooks = [
            m.register_forward_hook(lambda mod, a, o, i=i, d=outs: d.__setitem__(i, o[0, -1]))
            for i, m in enumerate(arch.modules)
        ]
        try:
            with torch.no_grad():
                hs = tiny_lm.model(ids, output_hidden_states=True).hidden_states
        finally:
            for h in hooks:
                h.remove()
        for layer in range(arch.n_layers):
            want = hs[layer][0, -1] + outs[layer]
            torch.testing.assert_close(got[k, layer], want.float(), rtol=1e-4, atol=1e-5)
    # the disk cache returns the same tensor
    again = residual_activations(tiny_lm, tiny, arch, progress=False)
    torch.testing.assert_close(again, got)


def _numpy_direction(acts: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used = np.flatnonzero(sign)
    diffs = [sign[i] * (acts[2 * i] - acts[2 * i + 1]) for i in used]
    mean = np.mean(diffs, axis=0)  # (L, hidden)
    unit = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    samples = np.concatenate([acts[2 * used], acts[2 * used + 1]])
    proj = np.einsum("nlh,lh->nl", samples, unit)
    return unit, proj.std(axis=0)


def test_caa_direction_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(2 * 9, 3, 5))
    answers = np.array([5, 1, 3, 0, 4, 2, np.nan, 5, 1])
    d = caa_direction(torch.tensor(acts, dtype=torch.float32), answers)
    sign = np.where(answers > 3, 1.0, np.where((answers > 0) & (answers < 3), -1.0, 0.0))
    sign = np.nan_to_num(sign)
    unit, sigma = _numpy_direction(acts, sign)
    np.testing.assert_allclose(d.directions.numpy(), unit, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d.sigmas.numpy(), sigma, rtol=1e-4, atol=1e-5)
    assert d.n_items == 6
    with pytest.raises(PalignError, match="no usable item"):
        caa_direction(torch.tensor(acts, dtype=torch.float32), np.full(9, 3.0))
    with pytest.raises(PalignError, match="residual activations must be"):
        caa_direction(torch.zeros(4, 3, 5), answers)


def test_trait_directions_and_weights(tiny: Dataset) -> None:
    inv = tiny.inventory
    shown = inv.shown_ids
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(2 * len(shown), 2, 4))
    dirs = trait_directions(torch.tensor(acts, dtype=torch.float32), inv, shown)
    for t in inv.traits:
        sign = np.array([inv.item(i).key if inv.item(i).trait == t else 0 for i in shown], float)
        unit, sigma = _numpy_direction(acts, sign)
        np.testing.assert_allclose(dirs[t].directions.numpy(), unit, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dirs[t].sigmas.numpy(), sigma, rtol=1e-4, atol=1e-5)
    p = tiny.persons[0]
    a = p.answer_vector(inv, shown, "agreement")
    w = trait_weights(inv, shown, a)
    for t in inv.traits:
        vals = [
            inv.to_trait(inv.item(i), float(v), "agreement")
            for i, v in zip(shown, a)
            if inv.item(i).trait == t and v > 0
        ]
        assert w[t] == pytest.approx((np.mean(vals) - 3) / 2)
        assert -1 <= w[t] <= 1


def test_residual_table() -> None:
    v = torch.arange(4.0)
    u = residual_table({1: v}, 3, 4, [0.0, 2.0])
    assert u.shape == (2, 3, 4)
    assert not u[0].any() and not u[1, 0].any() and not u[1, 2].any()
    torch.testing.assert_close(u[1, 1], 2 * v)
    with pytest.raises(PalignError, match="outside"):
        residual_table({3: v}, 3, 4, [1.0])


def test_study_cross_fold_choice_and_score() -> None:
    """The study's alpha choice never uses the scored fold's own error."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import method_study as ms

    errs = np.array([[1.0, 0.0, 5.0], [0.5, 0.9, 0.1], [0.6, 0.8, 0.2]])
    # fold 0: others' means (0.55, 0.85, 0.15) -> index 2, although fold 0 itself prefers 1
    assert ms.cross_fold_choice(errs, [0.0, 1.0, 2.0]) == [2, 1, 1]
    # ties go to the smallest |alpha|, not to the most negative alpha
    assert ms.cross_fold_choice(np.zeros((3, 3)), [-2.0, 0.0, 2.0]) == [1, 1, 1]
    truth = np.array([5.0, 1.0, 3.0, 4.0])
    traits = ["X", "X", "Y", "Y"]
    pred = {0: 4.0, 1: 1.0, 2: 5.0, 3: 4.0}
    # X: mean(1, 0) = 0.5; Y: mean(2, 0) = 1.0
    assert ms._trait_sum(pred, truth, traits, ["X", "Y"]) == pytest.approx(1.5)
    assert list(ms._answers(np.eye(5))) == [5, 4, 3, 2, 1]
