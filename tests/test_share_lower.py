"""Rows that differ only by steering share the layers below the lowest steered layer
(:mod:`palign.steering.share`, ``option_probs(share_lower=True)``), and the alpha-0 test rows
of PAS persons are read unsteered (``predict_aligned(share_zero=True)``).

Compared in log-probabilities with the unshared path and with a stock copy of the model with
``u`` as every ``o_proj``'s bias; a hook on the first decoder layer shows the forwards did
enter with fewer rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from palign.data.types import Dataset
from palign.methods.few_shot import few_shot_prompt
from palign.models.loading import LoadedModel
from palign.models.readout import ReadRequest, option_probs
from palign.steering.arch import resolve_arch
from palign.steering.share import can_share, lowest_steered_layer
from tests.test_models_loading import smollm2  # noqa: F401  (the real model, or skip)
from tests.test_readout_positions import _lm, bias_logp


def _rows_seen(model) -> tuple[list[int], object]:  # type: ignore[no-untyped-def]
    seen: list[int] = []
    layer0 = model.model.layers[0]
    handle = layer0.register_forward_pre_hook(lambda m, a: seen.append(int(a[0].shape[0])))
    return seen, handle


def _table(lm: LoadedModel, alphas: tuple[float, ...], low: int, seed: int = 0) -> torch.Tensor:
    cfg = lm.model.config
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(cfg.num_hidden_layers, cfg.hidden_size, generator=g)
    u = u / u.norm(dim=1, keepdim=True)
    u[:low] = 0.0  # nothing steered below `low`
    return torch.stack([a * u for a in alphas])


def _read_both(lm: LoadedModel, reqs: list[ReadRequest], table: torch.Tensor):  # type: ignore[no-untyped-def]
    out = {}
    for share in (False, True):
        seen, handle = _rows_seen(lm.model)
        try:
            probs = option_probs(lm, reqs, batch_size=8, steering=table, share_lower=share).probs
        finally:
            handle.remove()  # type: ignore[attr-defined]
        out[share] = (np.log(probs), sum(seen))
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_shared_lower_layers_equal_unshared_and_o_proj_bias(llama_tokenizer, kind) -> None:
    lm = _lm(llama_tokenizer, kind)
    assert can_share(lm.model, resolve_arch(lm.model))
    table = _table(lm, (2.0, 5.0), low=1)
    assert lowest_steered_layer(table) == 1
    statements = ["You worry about things.", "You make friends easily.", "You like art."]
    reqs = [ReadRequest("Answer honestly.", st, r) for r in range(2) for st in statements]
    out = _read_both(lm, reqs, table)
    (plain, rows_plain), (shared, rows_shared) = out[False], out[True]
    np.testing.assert_allclose(shared, plain, atol=1e-5, rtol=0)
    ref = np.stack([bias_logp(lm, table[r.steer], r.system_prompt, r.statement) for r in reqs])
    np.testing.assert_allclose(shared, ref, atol=1e-4, rtol=0)
    assert rows_shared < rows_plain  # the first layer saw fewer rows
    # the alphas differ visibly (a row read with another row's vector would be caught)
    assert np.abs(shared[:3] - shared[3:]).max() > 1e-3


def test_no_sharing_where_layer_zero_is_steered(llama_tokenizer) -> None:
    lm = _lm(llama_tokenizer, "llama")
    table = _table(lm, (2.0, 5.0), low=0)
    reqs = [ReadRequest("Answer honestly.", "You like art.", r) for r in range(2)]
    out = _read_both(lm, reqs, table)
    np.testing.assert_array_equal(out[True][0], out[False][0])
    assert out[True][1] == out[False][1]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_smollm2_shared_lower_layers_few_shot(smollm2, papi: Dataset) -> None:  # noqa: F811
    """SmolLM2, a person's few-shot prefix, alphas 4 and 8 steered from layer 10 up: log-probs
    equal to the unshared path within 1e-5."""
    import copy

    inv = copy.copy(papi.inventory)
    inv.shown_ids = inv.shown_ids[:20]
    sys_prompt = few_shot_prompt(inv, papi.persons[0], "agreement")
    statements = [inv.statement(inv.item(i)) for i in inv.test_ids[:3]]
    table = _table(smollm2, (4.0, 8.0), low=10)
    reqs = [ReadRequest(sys_prompt, st, r) for r in range(2) for st in statements]
    out = _read_both(smollm2, reqs, table)
    (plain, rows_plain), (shared, rows_shared) = out[False], out[True]
    np.testing.assert_allclose(shared, plain, atol=1e-5, rtol=0)
    assert rows_shared < rows_plain
    assert np.abs(shared[:3] - shared[3:]).max() > 1e-2


def test_zero_rows_read_unsteered_or_steered_agree(papi: Dataset, tiny_lm: LoadedModel) -> None:
    """``share_zero`` off reads alpha-0 persons as zero steering rows: the same answers."""
    from palign.eval.runs import predict_aligned
    from palign.methods.base import Aligned
    from tests.test_runs import small

    ds = small(papi, 4)
    items = ds.inventory.test_ids
    cfg = tiny_lm.model.config
    zero = torch.zeros(cfg.num_hidden_layers, cfg.hidden_size)
    u = torch.randn(
        cfg.num_hidden_layers, cfg.hidden_size, generator=torch.Generator().manual_seed(1)
    )
    persons = [Aligned(str(k), "S", v) for k, v in enumerate([zero, 50 * u, zero])]
    on = predict_aligned(tiny_lm, ds, persons, items, share_zero=True)
    off = predict_aligned(tiny_lm, ds, persons, items, share_zero=False)
    for a, b in zip(on, off):
        assert a["answers"] == b["answers"]
        for i in items:
            np.testing.assert_allclose(np.log(a["probs"][i]), np.log(b["probs"][i]), atol=1e-4)
