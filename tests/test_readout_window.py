"""Sliding-window models (Gemma-3): the readout against plain forwards of each full prompt.

The window is counted in cache columns by the model's mask, so the readout must neither crop
the shared prefix's cache nor put padding between a prefix and a suffix whose prompt reaches
past the window. Compared in log-probabilities with a stock model run on each prompt alone
(no cache; ``u`` as ``o_proj``'s bias for the steered rows).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import transformers as tf

from palign.models.loading import LoadedModel, option_token_ids
from palign.models.prompts import build_prompt, encode_prompt, split_prompts
from palign.models.readout import ReadRequest, option_probs
from tests.test_readout_positions import with_bias

pytestmark = pytest.mark.usefixtures("one_thread")

SYSTEM = "You are a careful, honest person who answers questionnaires."
# suffix lengths differ by several tokens, so a batch of them is left-padded
STATEMENTS = [
    "You worry.",
    "You make friends easily and keep them for many years.",
    "You love large parties.",
    "You often feel blue, tired and alone in the evenings, even with friends around.",
]


def _gemma3(tok, window: int) -> LoadedModel:
    torch.manual_seed(2)
    cfg = tf.Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        initializer_range=0.5,
        sliding_window=window,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=8,
        pad_token_id=tok.pad_token_id,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tf.Gemma3ForCausalLM(cfg).eval()
    return LoadedModel(model, tok, "g3", "g3", None, torch.device("cpu"), torch.float32)


def _plain_logp(
    lm: LoadedModel, r: ReadRequest, table: torch.Tensor | None, position: str = "all"
) -> np.ndarray:
    """A plain forward of the full prompt: ``u`` as o_proj bias (``all``) or added at the
    last position by ``steer`` (``last``)."""
    from palign.steering import steer

    model = lm.model
    if r.steer is not None and position == "all":
        model = with_bias(lm.model, table[r.steer])
    tok = lm.tokenizer
    ids = torch.tensor([encode_prompt(tok, build_prompt(tok, r.system_prompt, r.statement))])
    with torch.no_grad():
        if r.steer is not None and position == "last":
            with steer(model, table[r.steer][None], position="last"):
                logits = model(input_ids=ids, use_cache=False).logits[0, -1]
        else:
            logits = model(input_ids=ids, use_cache=False).logits[0, -1]
    return torch.log_softmax(logits[option_token_ids(tok)].double(), -1).numpy()


def _lengths(tok) -> tuple[int, list[int]]:
    prompts = [build_prompt(tok, SYSTEM, st) for st in STATEMENTS]
    split = split_prompts(tok, prompts)
    return len(split.prefix_ids), [len(s) for s in split.suffix_ids]


def _check(lm: LoadedModel, position: str = "all") -> None:
    cfg = lm.model.config
    torch.manual_seed(7)
    table = torch.randn(2, cfg.num_hidden_layers, cfg.hidden_size) * 0.5
    reqs = [ReadRequest(SYSTEM, st, r) for r in (None, 0, 1) for st in STATEMENTS]
    out = option_probs(lm, reqs, batch_size=8, steering=table, position=position)
    ref = np.stack([_plain_logp(lm, r, table, position) for r in reqs])
    assert np.exp(ref).std() > 0.02  # far from uniform: the comparison has teeth
    np.testing.assert_allclose(np.log(out.probs), ref, atol=2e-5, rtol=0)


def test_window_longer_than_prefix_shorter_than_prompt(tiny_lm: LoadedModel) -> None:
    """The prefix fits the window, the longest prompts do not: padded suffixes must not push
    prefix tokens out of a row's window."""
    tok = tiny_lm.tokenizer
    plen, slens = _lengths(tok)
    window = plen + min(slens) + 2
    assert plen < window - 1 < plen + max(slens)
    lm = _gemma3(tok, window)
    _check(lm, "all")
    _check(lm, "last")
    reqs = [ReadRequest(SYSTEM, st) for st in STATEMENTS]  # unsteered: the shared-prefix path
    out = option_probs(lm, reqs, batch_size=8)
    ref = np.stack([_plain_logp(lm, r, None) for r in reqs])
    np.testing.assert_allclose(np.log(out.probs), ref, atol=2e-5, rtol=0)


def test_prefix_longer_than_window_keeps_sharing(tiny_lm: LoadedModel) -> None:
    """A prefix longer than the window is still computed once (an uncropped cache), with a
    warning that says why suffixes are batched by length; results equal plain forwards."""
    tok = tiny_lm.tokenizer
    plen, slens = _lengths(tok)
    lm = _gemma3(tok, window=16)
    assert plen > 16
    widths: list[int] = []
    hook = lm.model.register_forward_pre_hook(
        lambda mod, args, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    reqs = [ReadRequest(SYSTEM, st) for st in STATEMENTS]
    try:
        with pytest.warns(UserWarning, match="sliding window .* shorter than the shared prompt"):
            out = option_probs(lm, reqs, batch_size=8)
    finally:
        hook.remove()
    # the prefix once, then only the suffixes (before: each full prompt alone)
    assert widths == [plen] + sorted(slens, reverse=True)
    ref = np.stack([_plain_logp(lm, r, None) for r in reqs])
    np.testing.assert_allclose(np.log(out.probs), ref, atol=2e-5, rtol=0)
    for position in ("all", "last"):
        with pytest.warns(UserWarning, match="sliding window"):
            _check(lm, position)
