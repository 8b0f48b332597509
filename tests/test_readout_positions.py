"""All-position steering (the paper's o_proj bias) in the readout, and the KVStore keys.

The independent re-statement is a stock model whose ``o_proj`` gets ``u_l`` as its bias (as
the original code did), run on each full prompt alone with no cache and no hooks.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import transformers as tf

from palign.models.loading import LoadedModel, option_token_ids
from palign.models.prompts import build_generate_prompt, build_prompt, encode_prompt
from palign.models.readout import KVStore, ReadRequest, generate_answers, option_probs
from palign.steering.arch import resolve_arch

pytestmark = pytest.mark.usefixtures("one_thread")

STATEMENTS = ["You worry about things.", "You make friends easily.", "You love large parties."]


def with_bias(model: torch.nn.Module, u: torch.Tensor) -> torch.nn.Module:
    """A copy of ``model`` with ``u[l]`` added to layer l's o_proj bias (created if absent)."""
    m = copy.deepcopy(model)
    arch = resolve_arch(m)
    for layer, mod in enumerate(arch.modules):
        if mod.bias is None:
            mod.bias = torch.nn.Parameter(u[layer].to(mod.weight.dtype).clone())
        else:
            mod.bias.data += u[layer].to(mod.bias.dtype)
    return m


def bias_logp(lm: LoadedModel, u: torch.Tensor | None, sys: str | None, st: str) -> np.ndarray:
    """Log-probabilities of A..E from a stock model with ``u`` as o_proj bias, prompt alone."""
    model = lm.model if u is None else with_bias(lm.model, u)
    tok = lm.tokenizer
    ids = torch.tensor([encode_prompt(tok, build_prompt(tok, sys, st))])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, -1]
    return torch.log_softmax(logits[option_token_ids(tok)].double(), -1).numpy()


def _lm(tok, kind: str) -> LoadedModel:
    common = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "qwen2":
            model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
        elif kind == "gemma3_text":  # sliding window shorter than the prompts: no sharing
            model = tf.Gemma3ForCausalLM(
                tf.Gemma3TextConfig(**common, head_dim=8, sliding_window=16)
            )
        else:
            model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    return LoadedModel(model.eval(), tok, kind, kind, None, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3_text"])
def fam(request, tiny_lm: LoadedModel) -> LoadedModel:
    if request.param == "llama":
        return tiny_lm
    return _lm(tiny_lm.tokenizer, request.param)


def test_all_positions_equal_o_proj_bias(fam: LoadedModel) -> None:
    cfg = fam.model.config
    n_layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    torch.manual_seed(2)
    table = torch.randn(3, n_layers, hidden) * 8
    reqs = [ReadRequest("sys A", st, r) for r in (0, 1, None, 2) for st in STATEMENTS]
    reqs += [ReadRequest("sys B", STATEMENTS[0], 1), ReadRequest(None, STATEMENTS[2], 2)]
    out = option_probs(fam, reqs, batch_size=3, steering=table)  # default: all positions
    rows = [table[r.steer] if r.steer is not None else None for r in reqs]
    ref = np.stack([bias_logp(fam, u, r.system_prompt, r.statement) for u, r in zip(rows, reqs)])
    # log-probabilities: these tiny random models answer nearly uniformly, so differences in
    # probability are ~5x smaller than in log-probability
    np.testing.assert_allclose(np.log(out.probs), ref, atol=2e-6, rtol=0)
    last = option_probs(fam, reqs, batch_size=3, steering=table, position="last")
    # the two positions are different methods, far apart next to the tolerance above
    # (measured: parity 1e-7; all vs last 1.8e-4..4.5e-4 on the three families)
    assert np.abs(np.log(last.probs) - np.log(out.probs)).max() > 50 * 2e-6
    np.testing.assert_allclose(np.log(last.probs[6:9]), ref[6:9], atol=2e-6)  # unsteered rows


def test_all_positions_small_memory_budget_same_result(tiny_lm: LoadedModel) -> None:
    """Rows processed in groups (prefix caches beyond the budget) give the same numbers."""
    cfg = tiny_lm.model.config
    torch.manual_seed(3)
    table = torch.randn(5, cfg.num_hidden_layers, cfg.hidden_size) * 2
    reqs = [ReadRequest("sys", st, r) for r in range(5) for st in STATEMENTS]
    ref = option_probs(tiny_lm, reqs, batch_size=16, steering=table)
    import palign.models.readout as ro

    orig = ro._ReadContext.rows_for
    ro._ReadContext.rows_for = lambda self, length, cap, budget=None: 1  # type: ignore[method-assign]
    try:
        small = option_probs(tiny_lm, reqs, batch_size=16, steering=table)
    finally:
        ro._ReadContext.rows_for = orig  # type: ignore[method-assign]
    np.testing.assert_allclose(np.log(small.probs), np.log(ref.probs), atol=2e-6, rtol=0)


def test_generate_all_positions_equals_bias_model(tiny_lm: LoadedModel) -> None:
    cfg = tiny_lm.model.config
    torch.manual_seed(4)
    table = torch.randn(2, cfg.num_hidden_layers, cfg.hidden_size) * 4
    reqs = [ReadRequest("sys", STATEMENTS[0], 0), ReadRequest("sys", STATEMENTS[1], 1)]
    out = generate_answers(tiny_lm, reqs, max_new_tokens=4, batch_size=2, steering=table)
    tok = tiny_lm.tokenizer
    for i, r in enumerate(reqs):
        model = with_bias(tiny_lm.model, table[r.steer])
        ids = torch.tensor([encode_prompt(tok, build_generate_prompt(tok, "sys", r.statement))])
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
            )
        assert out.texts[i] == tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)


def test_unknown_position_is_one_line_error(tiny_lm: LoadedModel) -> None:
    from palign.errors import PalignError

    with pytest.raises(PalignError, match="steering position"):
        option_probs(tiny_lm, [ReadRequest(None, STATEMENTS[0])], position="first")


def test_kv_store_keys_identify_tokens(tiny_lm: LoadedModel) -> None:
    """Two statement sets whose shared prefixes have the same length but other tokens: the
    second read through the same store must equal fresh reads (the old key, the prefix length
    and system prompt, reused the first set's prefix)."""
    cfg = tiny_lm.model.config
    torch.manual_seed(5)
    table = torch.randn(2, cfg.num_hidden_layers, cfg.hidden_size) * 2
    set1 = ["You worry about things.", "You make friends easily."]
    set2 = ["They worry about things.", "They make friends easily."]
    tok = tiny_lm.tokenizer
    from palign.models.prompts import split_prompts

    s1 = split_prompts(tok, [build_prompt(tok, "sys", s) for s in set1]).prefix_ids
    s2 = split_prompts(tok, [build_prompt(tok, "sys", s) for s in set2]).prefix_ids
    assert len(s1) == len(s2) and s1 != s2  # the collision the old key could not see
    store = KVStore()
    r1 = [ReadRequest("sys", st, r) for r in (0, 1) for st in set1]
    r2 = [ReadRequest("sys", st, r) for r in (0, 1) for st in set2]
    option_probs(tiny_lm, r1, steering=table, kv_store=store, position="last")
    reused = option_probs(tiny_lm, r2, steering=table, kv_store=store, position="last")
    fresh = option_probs(tiny_lm, r2, steering=table, position="last")
    np.testing.assert_allclose(reused.probs, fresh.probs, atol=1e-6, rtol=0)


def test_chat_all_positions_equals_bias_model(tiny_lm: LoadedModel) -> None:
    """AlignedModel at all positions steers the prompt and every new token: its greedy text
    equals a stock copy of the model with u as the o_proj bias."""
    from palign.chat import AlignedModel, chat_ids

    cfg = tiny_lm.model.config
    torch.manual_seed(6)
    u = torch.randn(cfg.num_hidden_layers, cfg.hidden_size) * 4

    class Fixed:  # the adapter interface AlignedModel uses
        config = {"extra": {"steer_position": "all"}}

        def u_at(self, alpha: float | None = None) -> torch.Tensor:
            return u

    am = AlignedModel(tiny_lm, Fixed())  # type: ignore[arg-type]
    assert am.steer_position == "all"
    text = am.generate("Tell me about you.", max_new_tokens=6)
    tok = tiny_lm.tokenizer
    ids = torch.tensor([chat_ids(tiny_lm, am.messages("Tell me about you."))])
    with torch.no_grad():
        gen = with_bias(tiny_lm.model, u).generate(
            input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id
        )
    assert text == tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip()
    Fixed.config = {"extra": {}}  # adapters written before the position was recorded
    assert AlignedModel(tiny_lm, Fixed()).steer_position == "last"  # type: ignore[arg-type]


def test_pas_selection_uses_the_run_readout(tiny, tiny_lm: LoadedModel, monkeypatch) -> None:
    """selection_readout=generate scores alphas with the generate readout at the method's
    position; the record says so."""
    import palign.models.readout as ro
    from palign.methods import MethodConfig, get_method

    calls: list[str] = []
    real = ro.generate_answers

    def spy(*a, **kw):
        calls.append(kw.get("position"))
        return real(*a, **kw)

    monkeypatch.setattr(ro, "generate_answers", spy)
    opts = {"selection_readout": "generate", "k": 2, "alpha_grid": [0, 4], "folds": 2}
    m = get_method("pas", MethodConfig("agreement", 0, opts))
    m.setup(tiny_lm, tiny)
    a = m.fit(tiny_lm, tiny, tiny.persons[0])
    assert calls and set(calls) == {"all"}
    assert m.record()["selection_readout"] == "generate"
    assert m.record()["steer_position"] == "all" and a.steer_position == "all"
    assert set(a.info["validation_errors"]) == {"0.0", "4.0"}
