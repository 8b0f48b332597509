"""PAS's selection readout reads zero steering rows (alpha 0) unsteered, once per prompt.

The re-statement is a plain :func:`option_probs` call with the same steering table (the zero
row applied as a steering vector of zeros), on a tiny random Llama with the real SmolLM2
tokenizer, at both steering positions.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import palign.models.readout as readout
from palign.methods.base import MethodConfig
from palign.methods.pas import PAS
from palign.models.loading import LoadedModel
from palign.models.readout import ReadRequest, option_probs

pytestmark = pytest.mark.usefixtures("one_thread")

SYS = "You are a helpful, honest and concise assistant."
STATEMENTS = ["You worry about things.", "You make friends easily.", "You love large parties."]


def _table(lm: LoadedModel) -> torch.Tensor:
    cfg = lm.model.config
    g = torch.Generator().manual_seed(1)
    u = torch.randn(cfg.num_hidden_layers, cfg.hidden_size, generator=g)
    # rows: alpha 0, alpha 1, alpha 2 (the layout of layer_vectors_grid)
    return torch.stack([0 * u, u, 2 * u])


def _requests() -> list[ReadRequest]:
    return [ReadRequest(SYS, st, row) for row in range(3) for st in STATEMENTS]


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[list[ReadRequest]]:
    seen: list[list[ReadRequest]] = []
    real = readout.option_probs

    def counted(lm, reqs, **kw):
        seen.append(list(reqs))
        return real(lm, reqs, **kw)

    monkeypatch.setattr(readout, "option_probs", counted)
    return seen


@pytest.mark.parametrize("position", ["all", "last"])
def test_zero_rows_equal_plain_readout_and_are_read_once(
    tiny_lm: LoadedModel, position: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table(tiny_lm)
    reqs = _requests()
    ref = option_probs(tiny_lm, reqs, steering=table, position=position)
    pas = PAS(MethodConfig(options={"steer_position": position}))
    seen = _counting(monkeypatch)

    first = pas._read(tiny_lm, reqs, table)
    np.testing.assert_allclose(first.probs, ref.probs, atol=1e-6)
    np.testing.assert_array_equal(first.answers, ref.answers)
    np.testing.assert_allclose(first.expected, ref.expected, atol=1e-6)
    # the zero row's three requests went to the model unsteered, the others steered
    assert [r.steer for r in seen[0]].count(None) == 3
    assert sum(r.steer is not None for r in seen[0]) == 6

    # a second call (another person or fold, same prompts): the zero row is not read again
    again = pas._read(tiny_lm, reqs, table)
    np.testing.assert_allclose(again.probs, ref.probs, atol=1e-6)
    assert len(seen) == 2 and all(r.steer is not None for r in seen[1])
    assert len(seen[1]) == 6

    # a table of zero rows only: nothing is read at all
    only_zero = pas._read(tiny_lm, reqs[:3], table)
    assert len(seen) == 2
    np.testing.assert_allclose(only_zero.probs, ref.probs[:3], atol=1e-6)


def test_another_model_does_not_reuse_the_stored_rows(tiny_lm: LoadedModel) -> None:
    table = _table(tiny_lm)
    reqs = _requests()[:3]  # zero row only
    pas = PAS(MethodConfig(options={"steer_position": "all"}))
    first = pas._read(tiny_lm, reqs, table)

    other_model = copy.deepcopy(tiny_lm.model)
    with torch.no_grad():
        for p in other_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other = LoadedModel(
        other_model,
        tiny_lm.tokenizer,
        "tiny2",
        "tiny-random-llama-2",
        None,
        torch.device("cpu"),
        torch.float32,
    )
    got = pas._read(other, reqs, table)
    want = option_probs(other, reqs, steering=table, position="all")
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)
    assert not np.allclose(got.probs, first.probs, atol=1e-4)
