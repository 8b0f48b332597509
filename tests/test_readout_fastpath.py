"""The two-stage steered readout: many steering rows per statement share all but the last
position, and must equal each request run alone (steered at its last position)."""

from __future__ import annotations

import numpy as np
import torch

from palign.models.loading import LoadedModel, option_token_ids
from palign.models.prompts import build_prompt, encode_prompt
from palign.models.readout import ReadRequest, option_probs
from palign.steering import steer

STATEMENTS = ["You worry about things.", "You make friends easily.", "You love large parties."]


def test_rows_times_statements_equal_alone(tiny_lm: LoadedModel) -> None:
    model, tok = tiny_lm.model, tiny_lm.tokenizer
    n_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    torch.manual_seed(0)
    table = torch.randn(4, n_layers, hidden) * 3
    reqs = [ReadRequest("sys A", st, r) for r in (0, 1, None, 2, 3) for st in STATEMENTS]
    reqs += [ReadRequest("sys B", STATEMENTS[0], 1), ReadRequest("sys A", STATEMENTS[1], 1)]
    out = option_probs(tiny_lm, reqs, batch_size=2, steering=table, position="last")
    opt = option_token_ids(tok)
    for i, r in enumerate(reqs):
        ids = torch.tensor([encode_prompt(tok, build_prompt(tok, r.system_prompt, r.statement))])
        u = (table[r.steer] if r.steer is not None else torch.zeros(n_layers, hidden))[None]
        with torch.no_grad(), steer(model, u, position="last"):
            logits = model(input_ids=ids).logits[0, -1]
        ref = torch.softmax(logits[opt], -1).numpy()
        np.testing.assert_allclose(out.probs[i], ref, atol=1e-5, rtol=0)
    # duplicates are read once and agree; different rows differ
    np.testing.assert_array_equal(out.probs[-1], out.probs[4])  # ("sys A", statement 1, row 1)
    assert np.abs(out.probs[0] - out.probs[3]).max() > 1e-4


def test_kv_store_reuse_is_exact(tiny_lm: LoadedModel) -> None:
    from palign.models.readout import KVStore

    n_layers, hidden = tiny_lm.model.config.num_hidden_layers, tiny_lm.model.config.hidden_size
    torch.manual_seed(1)
    table = torch.randn(3, n_layers, hidden) * 3
    reqs = [ReadRequest("sys", st, r) for r in (0, 1, 2) for st in STATEMENTS]
    fresh = option_probs(tiny_lm, reqs, batch_size=2, steering=table, position="last")
    store = KVStore()
    first = option_probs(
        tiny_lm, reqs[:4], batch_size=2, steering=table, kv_store=store, position="last"
    )
    assert len(store) == 4  # the shared prefix + one entry per statement, whatever the rows
    again = option_probs(
        tiny_lm, reqs, batch_size=3, steering=table, kv_store=store, position="last"
    )
    np.testing.assert_allclose(first.probs, fresh.probs[:4], atol=1e-5, rtol=0)
    np.testing.assert_allclose(again.probs, fresh.probs, atol=1e-5, rtol=0)
    tiny = KVStore(max_bytes=1)
    option_probs(tiny_lm, reqs, steering=table, kv_store=tiny, position="last")
    assert len(tiny) == 1  # evicted down to the newest entry
