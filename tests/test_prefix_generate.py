"""Generation with the shared prompt prefix computed once
(:mod:`palign.models.prefix_generate`, ``generate_texts(share_prefix=True)``).

Compared with the unshared call (``generate`` on the left-padded full prompts) in
log-probability at every generated step, on tiny Llama / Qwen2 / Gemma-3 models with real
tokenizers of two families and on SmolLM2 with a real person's few-shot prompt; a hook on the
first decoder layer shows the shared path forwarded fewer tokens.
"""

from __future__ import annotations

import pytest
import torch

from palign.chat import chat_ids
from palign.judge.generate import generate_texts
from palign.methods.few_shot import few_shot_prompt
from palign.models import prefix_generate
from palign.models.loading import LoadedModel
from palign.models.prefix_generate import generate_shared_prefix, shared_prefix_len
from tests.test_models_loading import smollm2  # noqa: F401  (the real model, or skip)
from tests.test_readout_positions import _lm

SYSTEM = "You are a person who answers questions about yourself. " * 12
QUESTIONS = [
    "How do you spend a free evening?",
    "Do you like parties?",
    "What do you think of rules, and do you follow them when nobody is watching?",
]


def _tokens_seen(model) -> tuple[list[int], object]:  # type: ignore[no-untyped-def]
    seen: list[int] = []
    layer0 = model.model.layers[0]
    handle = layer0.register_forward_pre_hook(
        lambda m, a: seen.append(int(a[0].shape[0] * a[0].shape[1]))
    )
    return seen, handle


def _both(lm: LoadedModel, u: torch.Tensor | None, n_new: int = 8, **kw):  # type: ignore[no-untyped-def]
    from palign.steering import steer

    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    seqs = [
        chat_ids(lm, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
        for q in QUESTIONS
    ]
    gkw = dict(
        max_new_tokens=n_new,
        pad_token_id=pad,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    out = {}
    for share in (False, True):
        seen, handle = _tokens_seen(lm.model)
        try:
            with steer(lm.model, u, position="all"):
                ids, logits = generate_shared_prefix(
                    lm.model,
                    seqs,
                    pad,
                    batch_size=2,
                    return_logits=True,
                    min_prefix=16 if share else None,
                    **gkw,
                    **kw,
                )
        finally:
            handle.remove()  # type: ignore[attr-defined]
        logp = [torch.log_softmax(x, dim=-1) for x in logits]
        out[share] = (ids, logp, sum(seen))
    return seqs, out


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3_text"])
def test_shared_prefix_equals_unshared(llama_tokenizer, qwen2_tokenizer, kind) -> None:
    tok = qwen2_tokenizer if kind == "qwen2" else llama_tokenizer
    lm = _lm(tok, kind)
    cfg = lm.model.config
    g = torch.Generator().manual_seed(1)
    u = torch.randn(cfg.num_hidden_layers, cfg.hidden_size, generator=g) * 4
    for steering in (None, u):
        seqs, out = _both(lm, steering)
        (ids0, lp0, seen0), (ids1, lp1, seen1) = out[False], out[True]
        assert shared_prefix_len(seqs) > 50
        assert ids1 == ids0
        for a, b in zip(lp0, lp1):
            assert a.shape == b.shape and a.shape[0] == 8
            assert (a - b).abs().max().item() < 1e-4
        if kind == "gemma3_text":  # window 16 < the prompts: the unshared path, same tokens
            assert seen1 == seen0
        else:
            assert seen1 < seen0  # the prefix was forwarded once, not once per row
    # the tolerance tells steering on from off (a prefix computed without the hook would show)
    _, off = _both(lm, None)
    _, on = _both(lm, u)
    assert max((a - b).abs().max().item() for a, b in zip(off[True][1], on[True][1])) > 1e-2


def test_last_position_steering_is_never_shared(llama_tokenizer, monkeypatch) -> None:
    lm = _lm(llama_tokenizer, "llama")
    cfg = lm.model.config
    u = torch.ones(cfg.num_hidden_layers, cfg.hidden_size)
    calls: list[int] = []
    real = prefix_generate.prefix_kv
    monkeypatch.setattr(
        prefix_generate, "prefix_kv", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    kw = dict(max_new_tokens=3, batch_size=2)
    last = generate_texts(lm, SYSTEM, QUESTIONS, steering=u, position="last", **kw)
    assert calls == []
    unshared = generate_texts(
        lm, SYSTEM, QUESTIONS, steering=u, position="last", share_prefix=False, **kw
    )
    assert last == unshared
    generate_texts(lm, SYSTEM, QUESTIONS, steering=u, position="all", **kw)
    assert calls == [1]  # all-position steering shares the prefix


def test_shared_prefix_len() -> None:
    assert shared_prefix_len([]) == 0
    assert shared_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3, 4]]) == 2  # every row keeps a token
    assert shared_prefix_len([[7], [7]]) == 0
    assert shared_prefix_len([[1, 2], [3, 2]]) == 0


@pytest.mark.slow
def test_smollm2_few_shot_prefix_shared(smollm2, papi) -> None:  # noqa: F811
    person = papi.persons[0]
    system = few_shot_prompt(papi.inventory, person, "agreement")
    qs = QUESTIONS[:2]
    kw = dict(max_new_tokens=10, temperature=0.0, batch_size=2)
    seen, handle = _tokens_seen(smollm2.model)
    try:
        plain = generate_texts(smollm2, system, qs, share_prefix=False, **kw)
        n_plain = sum(seen)
        seen.clear()
        shared = generate_texts(smollm2, system, qs, **kw)
        n_shared = sum(seen)
    finally:
        handle.remove()  # type: ignore[attr-defined]
    assert shared == plain
    assert all(plain)
    assert n_shared < 0.7 * n_plain
    # log-probabilities of every generated step, both paths
    tok = smollm2.tokenizer
    seqs = [
        chat_ids(smollm2, [{"role": "system", "content": system}, {"role": "user", "content": q}])
        for q in qs
    ]
    assert shared_prefix_len(seqs) > 1000
    gkw = dict(
        max_new_tokens=10,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    _, l0 = generate_shared_prefix(
        smollm2.model,
        seqs,
        tok.pad_token_id,
        batch_size=2,
        return_logits=True,
        min_prefix=None,
        **gkw,
    )
    _, l1 = generate_shared_prefix(
        smollm2.model, seqs, tok.pad_token_id, batch_size=2, return_logits=True, **gkw
    )
    for a, b in zip(l0, l1):
        diff = (torch.log_softmax(a, -1) - torch.log_softmax(b, -1)).abs().max().item()
        assert diff < 1e-3
