"""Silent fallbacks made explicit: the system-role merge of chat templates (only for templates
that reject or drop the system role, warned once with the reason) and the adapter's skipped
weight check (warned with the reason)."""

from __future__ import annotations

import copy
import uuid
import warnings

import numpy as np
import pytest
import torch
import transformers as tf

from palign.errors import PalignError
from palign.models.loading import LoadedModel
from palign.models.prompts import SystemRoleMergeWarning, chat_text

SYSTEM = "You are a careful person."
USER = "Given a statement of you: ..."

REJECTS = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{{ '<start_of_turn>' + m['role'] + '\\n' + m['content'] | trim"
    " + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
DROPS = (  # renders only user/assistant turns: a system message vanishes without an error
    "{% for m in messages %}{% if m['role'] != 'system' %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
SUPPORTS = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
BROKEN = "{{ raise_exception('this template is broken') }}"


def _tok(base: LoadedModel, template: str):  # type: ignore[no-untyped-def]
    """The SmolLM2 tokenizer with ``template`` (a unique comment: warn-once is per template)."""
    tok = copy.deepcopy(base.tokenizer)
    tok.chat_template = template + "{# " + uuid.uuid4().hex + " #}"
    return tok


def _merge_warnings(fn) -> tuple[object, list[str]]:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in rec if issubclass(w.category, SystemRoleMergeWarning)]


def test_template_rejecting_the_system_role_merges_and_warns_once(tiny_lm: LoadedModel) -> None:
    tok = _tok(tiny_lm, REJECTS)
    text, warned = _merge_warnings(lambda: chat_text(tok, SYSTEM, USER))
    assert f"<start_of_turn>user\n{SYSTEM}\n\n{USER}<end_of_turn>" in text
    assert len(warned) == 1 and "rejects the system role" in warned[0]
    assert "System role not supported" in warned[0]  # the template's own reason
    again, warned2 = _merge_warnings(lambda: chat_text(tok, "Another prompt.", USER))
    assert "Another prompt.\n\n" in again and warned2 == []  # once per template


def test_template_dropping_the_system_turn_merges_and_warns(tiny_lm: LoadedModel) -> None:
    tok = _tok(tiny_lm, DROPS)
    text, warned = _merge_warnings(lambda: chat_text(tok, SYSTEM, USER))
    assert text == f"<|user|>{SYSTEM}\n\n{USER}\n<|assistant|>"
    assert len(warned) == 1 and "drops it" in warned[0]


def test_template_with_a_system_role_is_used_as_is(tiny_lm: LoadedModel) -> None:
    for tok in (tiny_lm.tokenizer, _tok(tiny_lm, SUPPORTS)):  # the real SmolLM2 one too
        text, warned = _merge_warnings(lambda t=tok: chat_text(t, SYSTEM, USER))
        assert warned == []
        assert SYSTEM in text and f"{SYSTEM}\n\n{USER}" not in text
    assert chat_text(_tok(tiny_lm, SUPPORTS), SYSTEM, USER) == (
        f"<|system|>{SYSTEM}\n<|user|>{USER}\n<|assistant|>"
    )


def test_a_broken_template_is_an_error_not_a_merge(tiny_lm: LoadedModel) -> None:
    tok = _tok(tiny_lm, BROKEN)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SystemRoleMergeWarning)
        with pytest.raises(PalignError, match="this template is broken"):
            chat_text(tok, SYSTEM, USER)
        with pytest.raises(PalignError, match="this template is broken"):
            chat_text(tok, None, USER)


def test_adapter_weight_check_that_cannot_run_warns_with_the_reason(tmp_path) -> None:
    """A base model whose weights are not materialised (meta device, as with offloading):
    the check cannot compute W_o @ shift; it used to be skipped silently."""
    from palign.steering import fit_pas, load_adapter, resolve_arch, save_adapter
    from palign.steering.adapter import WeightCheckSkipped

    cfg = tf.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg).eval()
    arch = resolve_arch(model)
    acts = torch.randn(40, arch.n_layers, arch.n_heads, arch.head_dim)
    answers = np.random.default_rng(0).choice([1, 2, 4, 5], size=20).astype(float)
    res = fit_pas(acts, answers, arch, alpha=2.0, K=3)
    save_adapter(tmp_path, res, model_id="m", arch=arch, inventory="x", semantics="paper")
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightCheckSkipped)
        load_adapter(tmp_path, model, model_id="m")  # real weights: checked, no warning
    with torch.device("meta"):
        meta = tf.LlamaForCausalLM(cfg)
    with pytest.warns(WeightCheckSkipped, match="meta tensor.*used unchecked"):
        adapter = load_adapter(tmp_path, meta, model_id="m")
    assert torch.equal(adapter.u, res.u.float())
