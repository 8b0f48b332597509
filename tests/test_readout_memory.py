"""The all-position readout keeps its key/value caches within its memory budget.

Memory is measured, not estimated: :class:`tests.memory.PeakTensorBytes` adds up the bytes of
every tensor the readout allocates and still holds, and keeps the peak.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

import palign.models.readout as ro
from palign.models.loading import LoadedModel
from palign.models.readout import ReadRequest, option_probs
from tests.memory import PeakTensorBytes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_peak_tracker_counts_live_tensors_once() -> None:
    """The tracker itself: views share their base's bytes; freed tensors stop counting."""
    with PeakTensorBytes() as m:
        a = torch.zeros(1 << 20)  # 4 MiB
        b = a.view(-1, 2)
        del a
        c = torch.ones(1 << 19) * 2  # 2 MiB temporary + 2 MiB result
        assert m.current == 6 << 20 and m.peak == 8 << 20
        del b
        assert m.current == 2 << 20
        d = torch.cat([c, c])
        assert m.current == 6 << 20 and m.peak == 8 << 20
        del c, d
    assert m.current == 0


def test_all_positions_readout_peak_within_budget(tiny_lm: LoadedModel, monkeypatch) -> None:
    """A long shared prefix copied to many steering rows: the caches the readout holds at
    once (a group's prefix caches, a forward's own cache, the previous forward's output)
    stay within the budget. Before the fix: 39.2 MiB against 16 MiB (``parts`` kept beside
    their concatenation, the last suffix forward's cache beside the next one's)."""
    tok = tiny_lm.tokenizer
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=8,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
    )
    lm = LoadedModel(
        tf.LlamaForCausalLM(cfg).eval(), tok, "t", "t", None, torch.device("cpu"), torch.float32
    )
    system = " ".join(f"Example {i}: you like thing {i}; answer (A)." for i in range(25))
    statements = ["You worry about things.", "You love large parties and loud music."]
    table = torch.randn(12, cfg.num_hidden_layers, cfg.hidden_size)
    reqs = [ReadRequest(system, st, r) for r in range(12) for st in statements]
    ref = option_probs(lm, reqs, batch_size=2, steering=table)  # the default 1 GiB budget

    budget = 16 << 20  # ~8 prefix caches of ~460 tokens x 4 KiB
    init = ro._ReadContext.__init__

    def small_budget(self, *a, **kw):
        init(self, *a, **kw)
        self.budget = budget

    monkeypatch.setattr(ro._ReadContext, "__init__", small_budget)
    with torch.no_grad(), PeakTensorBytes() as m:
        out = option_probs(lm, reqs, batch_size=2, steering=table)
    # the budget covers caches; a forward's logits (rows x vocab, fp32) come on top
    logits = 2 * len(tok) * 4
    print(f"peak {m.peak / 2**20:.1f} MiB, budget {budget / 2**20:.0f} MiB")
    assert m.peak <= budget + logits, f"{m.peak / 2**20:.1f} MiB > {budget / 2**20:.0f} MiB"
    np.testing.assert_allclose(np.log(out.probs), np.log(ref.probs), atol=1e-5, rtol=0)
