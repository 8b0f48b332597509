"""The all-position readout on the real embedded model (SmolLM2-135M-Instruct, fp32).

Few-shot system prompts of two PAPI persons (a long shared prefix each), steering rows at
alphas 0, 4 and 8, against a stock copy of the model with ``u`` as every ``o_proj``'s bias,
each full prompt run alone with no cache; compared in log-probabilities.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from palign.data.types import Dataset
from palign.methods.few_shot import few_shot_prompt
from palign.models.readout import ReadRequest, option_probs
from tests.test_models_loading import smollm2  # noqa: F401  (the real model, or skip)
from tests.test_readout_positions import bias_logp

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ALPHAS = (0.0, 4.0, 8.0)


def test_smollm2_all_positions_few_shot_equals_o_proj_bias(smollm2, papi: Dataset) -> None:  # noqa: F811
    inv = copy.copy(papi.inventory)
    inv.shown_ids = inv.shown_ids[:20]  # a ~300-token few-shot prefix keeps the test short
    persons = papi.persons[:2]
    statements = [inv.statement(inv.item(i)) for i in inv.test_ids[:2]]
    cfg = smollm2.model.config
    g = torch.Generator().manual_seed(0)
    units = []
    for _ in persons:  # one direction per person and layer, 1 unit of norm per layer
        u = torch.randn(cfg.num_hidden_layers, cfg.hidden_size, generator=g)
        units.append(u / u.norm(dim=1, keepdim=True))
    table = torch.stack([a * u for u in units for a in ALPHAS])
    reqs = [
        ReadRequest(few_shot_prompt(inv, p, "agreement"), st, k * len(ALPHAS) + j)
        for k, p in enumerate(persons)
        for j in range(len(ALPHAS))
        for st in statements
    ]
    out = np.log(option_probs(smollm2, reqs, batch_size=4, steering=table).probs)
    ref = np.stack([bias_logp(smollm2, table[r.steer], r.system_prompt, r.statement) for r in reqs])
    # measured: 1.8e-5 apart; a row read with another row's prefix or vector would be off by
    # the gap between its alphas, asserted to be far larger
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    by_alpha = out.reshape(len(persons), len(ALPHAS), len(statements), 5)
    assert np.abs(by_alpha[:, 1] - by_alpha[:, 2]).min(axis=-1).max() > 1e-2
    assert np.abs(by_alpha[:, 0] - by_alpha[:, 1]).min(axis=-1).max() > 1e-2
