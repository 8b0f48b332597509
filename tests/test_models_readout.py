"""Logits readout (shared-prefix KV) against a naive full forward, on tiny random models."""

from __future__ import annotations

import contextlib
import copy
import sys
import types

import numpy as np
import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from palign.errors import PalignError
from palign.models.loading import LoadedModel
from palign.models.prompts import build_prompt, encode_prompt
from palign.models.readout import (
    ReadRequest,
    generate_answers,
    naive_option_probs,
    option_probs,
)
from tests.test_models_prompts import load_smollm2_tokenizer

SYSTEMS = ["You are calm and friendly.", "You are anxious and shy; you avoid parties at all costs."]
STATEMENTS = [
    "You worry about things.",
    "You make friends easily.",
    "You have a vivid imagination.",
    "You trust others.",
    "You complete tasks successfully and never give up when things get really hard.",
    "You love large parties.",
    "You get angry easily.",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return load_smollm2_tokenizer()


def _tiny_llama(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.5,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def _tiny_gemma2(vocab: int, sliding_window: int) -> Gemma2ForCausalLM:
    torch.manual_seed(1)
    cfg = Gemma2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        sliding_window=sliding_window,
        initializer_range=0.5,
        final_logit_softcapping=5.0,
    )
    return Gemma2ForCausalLM(cfg).eval()


def _lm(model, tokenizer) -> LoadedModel:
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec="tiny",
        model_id="tiny",
        revision=None,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


@pytest.fixture(scope="module")
def llama(tok):
    return _lm(_tiny_llama(len(tok)), tok)


def _mixed_requests() -> list[ReadRequest]:
    """Two system prompts plus None, interleaved, statements of different lengths."""
    reqs = []
    for k, s in enumerate(STATEMENTS):
        reqs.append(ReadRequest(SYSTEMS[k % 2], s))
    reqs.append(ReadRequest(None, STATEMENTS[0]))
    reqs.append(ReadRequest(SYSTEMS[0], STATEMENTS[4]))
    return reqs


def test_option_probs_matches_naive(llama):
    reqs = _mixed_requests()
    out = option_probs(llama, reqs, batch_size=3)
    ref = naive_option_probs(llama, reqs)
    assert out.probs.shape == (len(reqs), 5)
    np.testing.assert_allclose(out.probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out.probs, ref, atol=1e-5, rtol=0)
    # a meaningful check: the random model's distributions are far from uniform and differ
    assert out.probs.std() > 0.05
    assert np.abs(out.probs[0] - out.probs[1]).max() > 1e-3
    np.testing.assert_array_equal(out.answers, 5 - ref.argmax(axis=1))
    np.testing.assert_allclose(out.expected, ref @ np.array([5, 4, 3, 2, 1.0]), atol=1e-5)
    assert out.texts is None


def test_batch_size_and_order_do_not_matter(llama):
    reqs = _mixed_requests()
    a = option_probs(llama, reqs, batch_size=1)
    b = option_probs(llama, reqs, batch_size=64)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5, rtol=0)
    perm = np.random.default_rng(0).permutation(len(reqs))
    c = option_probs(llama, [reqs[i] for i in perm], batch_size=4)
    np.testing.assert_allclose(c.probs, a.probs[perm], atol=1e-5, rtol=0)
    # the stored prefix is never mutated: a repeat gives the same numbers
    d = option_probs(llama, reqs, batch_size=4)
    np.testing.assert_allclose(d.probs, option_probs(llama, reqs, batch_size=4).probs, atol=0)


@pytest.mark.parametrize("family", ["qwen2_tokenizer", "gemma3_tokenizer", "no template"])
def test_other_template_families(tok, family, request):
    # the real Qwen2 and Gemma-3 tokenizers and templates (tests/test_real_tokenizers.py runs
    # them on models of their own architectures), and a tokenizer without a chat template
    if family == "no template":
        t = copy.deepcopy(tok)
        t.chat_template = None
    else:
        t = request.getfixturevalue(family)
    lm = _lm(_tiny_llama(len(t)), t)
    reqs = _mixed_requests()[:5]
    np.testing.assert_allclose(
        option_probs(lm, reqs, batch_size=2).probs, naive_option_probs(lm, reqs), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("window", [4096, 16])
def test_gemma2_sliding_window_and_softcap(tok, window):
    # 4096: prefix shared through sliding-window cache layers; 16: prefix longer than the
    # window -> no sharing, rows read one by one. Softcapping is applied by the model itself.
    lm = _lm(_tiny_gemma2(len(tok), window), tok)
    reqs = _mixed_requests()[:4]
    out = option_probs(lm, reqs, batch_size=3)
    np.testing.assert_allclose(out.probs, naive_option_probs(lm, reqs), atol=1e-5, rtol=0)


def test_empty_and_invalid(llama):
    out = option_probs(llama, [])
    assert out.probs.shape == (0, 5) and out.answers.shape == (0,)
    with pytest.raises(PalignError):
        option_probs(llama, [ReadRequest(None, STATEMENTS[0], steer=0)])
    with pytest.raises(PalignError):
        option_probs(
            llama, [ReadRequest(None, STATEMENTS[0], steer=3)], steering=torch.zeros(2, 2, 32)
        )
    with pytest.raises(PalignError):
        option_probs(llama, [ReadRequest(None, STATEMENTS[0])], batch_size=0)


# --- steering: a stand-in for palign.steering.steer (adds u at the last position) ----------
def _fake_steering_module(calls: list[torch.Tensor]) -> types.ModuleType:
    @contextlib.contextmanager
    def steer(model, u, position="last", arch=None):
        assert position == "last"
        calls.append(u.clone())
        handles = []
        for layer_idx, layer in enumerate(model.model.layers):

            def hook(_mod, _inp, output, layer_idx=layer_idx):
                output = output.clone()
                output[:, -1, :] += u[:, layer_idx, :]
                return output

            handles.append(layer.self_attn.o_proj.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    mod = types.ModuleType("palign.steering")
    mod.steer = steer
    return mod


def test_steering_rows_and_last_position(llama, monkeypatch):
    calls: list[torch.Tensor] = []
    fake = _fake_steering_module(calls)
    monkeypatch.setitem(sys.modules, "palign.steering", fake)
    torch.manual_seed(3)
    table = torch.randn(2, 2, 32) * 2.0
    reqs = [
        ReadRequest(SYSTEMS[0], STATEMENTS[0], steer=1),
        ReadRequest(SYSTEMS[0], STATEMENTS[4], steer=None),
        ReadRequest(SYSTEMS[0], STATEMENTS[1], steer=0),
        ReadRequest(SYSTEMS[1], STATEMENTS[2], steer=1),
    ]
    out = option_probs(llama, reqs, batch_size=3, steering=table, position="last")
    assert calls and all(c.shape[1:] == (2, 32) for c in calls)
    # reference: each full prompt alone, steered at its last position
    model, t = llama.model, llama.tokenizer
    opt = [49, 50, 51, 52, 53]
    for i, r in enumerate(reqs):
        ids = torch.tensor([encode_prompt(t, build_prompt(t, r.system_prompt, r.statement))])
        u = (table[r.steer] if r.steer is not None else torch.zeros(2, 32))[None]
        with torch.no_grad(), fake.steer(model, u):
            logits = model(input_ids=ids).logits[0, -1]
        ref = torch.softmax(logits[opt], -1).numpy()
        np.testing.assert_allclose(out.probs[i], ref, atol=1e-5, rtol=0)
    plain = [ReadRequest(r.system_prompt, r.statement) for r in reqs]
    unsteered = option_probs(llama, plain)
    assert np.abs(unsteered.probs[0] - out.probs[0]).max() > 1e-4  # steering did something
    np.testing.assert_allclose(
        option_probs(llama, reqs[1:2]).probs, out.probs[1:2], atol=1e-5, rtol=0
    )


def test_generate_answers_batched_equals_single(llama, monkeypatch):
    reqs = _mixed_requests()[:4]
    a = generate_answers(llama, reqs, max_new_tokens=4, batch_size=4)
    b = generate_answers(llama, reqs, max_new_tokens=4, batch_size=1)
    assert a.texts == b.texts and len(a.texts) == 4
    assert a.probs.shape == (4, 5) and np.isnan(a.expected).all()
    for k, ans in enumerate(a.answers):
        assert ans in range(6)
        if ans == 0:
            assert np.isnan(a.probs[k]).all()
        else:
            assert a.probs[k, 5 - ans] == 1.0
    # steering wraps the generation with one u row per request
    calls: list[torch.Tensor] = []
    monkeypatch.setitem(sys.modules, "palign.steering", _fake_steering_module(calls))
    reqs_s = [ReadRequest(r.system_prompt, r.statement, steer=0) for r in reqs]
    generate_answers(
        llama,
        reqs_s,
        max_new_tokens=2,
        batch_size=4,
        steering=torch.zeros(1, 2, 32),
        position="last",
    )
    assert len(calls) == 1 and calls[0].shape == (4, 2, 32)


def test_real_steer_integration(llama):
    steering = pytest.importorskip("palign.steering")
    torch.manual_seed(4)
    table = torch.randn(2, 2, 32)
    reqs = [
        ReadRequest(SYSTEMS[0], STATEMENTS[0], steer=1),
        ReadRequest(SYSTEMS[0], STATEMENTS[4], steer=None),
        ReadRequest(SYSTEMS[1], STATEMENTS[2], steer=0),
    ]
    out = option_probs(llama, reqs, batch_size=2, steering=table, position="last")
    model, t = llama.model, llama.tokenizer
    for i, r in enumerate(reqs):
        ids = torch.tensor([encode_prompt(t, build_prompt(t, r.system_prompt, r.statement))])
        u = (table[r.steer] if r.steer is not None else torch.zeros(2, 32))[None]
        with torch.no_grad(), steering.steer(model, u, position="last"):
            logits = model(input_ids=ids).logits[0, -1]
        ref = torch.softmax(logits[[49, 50, 51, 52, 53]], -1).numpy()
        np.testing.assert_allclose(out.probs[i], ref, atol=1e-5, rtol=0)
