"""The real tokenizers and chat templates of three families, on tiny random models.

Llama (SmolLM2-135M-Instruct, ChatML), Qwen2 (Qwen2.5-Coder-0.5B-Instruct, its own ChatML
template with a default system turn) and Gemma-3 (Gemma-3-270M with Gemma 3's template, which
merges the system prompt into the first user turn). Each tokenizer comes from the weights that
palign ships as aliases (``palign models``); the models are tiny random-weight models of the same
architecture (vocabulary of the real tokenizer), so the numbers are checked against independent
plain forwards in seconds:

- option letters: ``A``..``E`` are single tokens after the prefill, distinct, decoding to the
  letters; contrastive prompts end in exactly that token;
- prefill: the prompt ends with the family's assistant header plus ``"Option ("``, special
  tokens encode as single ids and BOS occurs once;
- prefix splitting: prefix + suffix equals the full prompt's tokenization;
- readout parity: ``option_probs`` (shared-prefix KV) equals a plain forward of each prompt;
- steering parity: ``position="all"`` equals a stock model whose ``o_proj`` gets ``u`` as its
  bias; ``position="last"`` equals a plain forward under ``steer(position="last")``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from palign.errors import PalignError
from palign.models.loading import LoadedModel, option_token_ids
from palign.models.prompts import (
    ANSWER_PREFILL,
    build_generate_prompt,
    build_prompt,
    encode_prompt,
    shared_prefix,
)
from palign.models.readout import ReadRequest, naive_option_probs, option_probs

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["llama", "qwen2", "gemma3"]
SYSTEMS = ["You are calm and friendly.", "You are anxious and shy; you avoid parties at all costs."]
STATEMENTS = [
    "You worry about things.",
    "You make friends easily.",
    "You have a vivid imagination.",
    "You complete tasks successfully and never give up when things get really hard.",
    "You love large parties.",
]


@pytest.fixture(scope="module")
def tokenizers(request: pytest.FixtureRequest) -> dict:
    """Lazily resolved family -> tokenizer (each skips on its own when not installed)."""

    class _Lazy(dict):
        def __missing__(self, family: str):
            tok = request.getfixturevalue(f"{family}_tokenizer")
            self[family] = tok
            return tok

    return _Lazy()


# --- templates and tokens -------------------------------------------------------------------
HEADERS = {
    # family: (start of a prompt with a system turn, end before the prefill)
    "llama": (
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nGiven a statement",
        "(E). Very Inaccurate<|im_end|>\n<|im_start|>assistant\n",
    ),
    "qwen2": (
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nGiven a statement",
        "(E). Very Inaccurate<|im_end|>\n<|im_start|>assistant\n",
    ),
    "gemma3": (
        "<bos><start_of_turn>user\n{system}\n\nGiven a statement",
        "(E). Very Inaccurate<end_of_turn>\n<start_of_turn>model\n",
    ),
}
SPECIALS = {
    "llama": ["<|im_start|>", "<|im_end|>"],
    "qwen2": ["<|im_start|>", "<|im_end|>"],
    "gemma3": ["<bos>", "<start_of_turn>", "<end_of_turn>"],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_and_template(family, tokenizers):
    tok = tokenizers[family]
    head, tail = HEADERS[family]
    p = build_prompt(tok, SYSTEMS[0], STATEMENTS[0])
    assert p.startswith(head.format(system=SYSTEMS[0]))
    assert p.endswith(tail + ANSWER_PREFILL)
    assert build_generate_prompt(tok, SYSTEMS[0], STATEMENTS[0]).endswith(tail + "Option")
    ids = encode_prompt(tok, p)
    for special in SPECIALS[family]:
        sid = tok.convert_tokens_to_ids(special)
        assert isinstance(sid, int) and sid != tok.unk_token_id
        assert tok.encode(special, add_special_tokens=False) == [sid]
        assert sid in ids
    first = tok.convert_tokens_to_ids(SPECIALS[family][0])
    assert ids[0] == first  # the template's first token, not doubled by the encoder
    if family == "gemma3":
        assert ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids) == p
    # no system prompt: the template's own default (Qwen2: its default system turn; Gemma 3
    # and SmolLM2 as their templates say)
    p0 = build_prompt(tok, None, STATEMENTS[0])
    assert SYSTEMS[0] not in p0 and p0.endswith(tail + ANSWER_PREFILL)
    if family == "qwen2":
        assert p0.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    if family == "gemma3":
        assert p0.startswith("<bos><start_of_turn>user\nGiven a statement")


@pytest.mark.parametrize("family", FAMILIES)
def test_option_letter_tokens(family, tokenizers):
    tok = tokenizers[family]
    ids = option_token_ids(tok)
    assert len(set(ids)) == 5
    assert [tok.decode([i]) for i in ids] == list("ABCDE")
    # in context, the letter after "Option (" is the vocabulary's plain letter token
    assert ids == [tok.convert_tokens_to_ids(c) for c in "ABCDE"]
    base = encode_prompt(tok, build_prompt(tok, SYSTEMS[1], STATEMENTS[2]))
    for letter, tid in zip("ABCDE", ids):
        full = encode_prompt(tok, build_prompt(tok, SYSTEMS[1], STATEMENTS[2], letter))
        assert full[:-1] == base and full[-1] == tid
    with pytest.raises(PalignError):
        build_prompt(tok, SYSTEMS[1], STATEMENTS[2], answer_letter="F")


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_is_exact(family, tokenizers):
    tok = tokenizers[family]
    for system in (SYSTEMS[1], None):
        split = shared_prefix(tok, system, STATEMENTS)
        assert len(split.prefix_ids) > 5
        for s, suffix in zip(STATEMENTS, split.suffix_ids):
            assert split.prefix_ids + suffix == encode_prompt(tok, build_prompt(tok, system, s))
            assert len(suffix) >= 1
        # the statements differ right after the shared text 'Given a statement of you: "You'
        assert split.prefix_text.endswith('Given a statement of you: "You')
    assert SYSTEMS[1] in shared_prefix(tok, SYSTEMS[1], STATEMENTS).prefix_text
    assert len(shared_prefix(tok, SYSTEMS[1], STATEMENTS[:1]).suffix_ids[0]) == 1


# --- tiny random models of each architecture --------------------------------------------------
def _tiny_model(family: str, vocab: int, window: int = 4096) -> nn.Module:
    torch.manual_seed({"llama": 0, "qwen2": 1, "gemma3": 2}[family])
    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.5,
    )
    if family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False)).eval()
    if family == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        return Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False)).eval()
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        **common,
        head_dim=8,
        sliding_window=window,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=8,
    )
    return Gemma3ForCausalLM(cfg).eval()


def _lm(model: nn.Module, tok) -> LoadedModel:
    return LoadedModel(model, tok, "tiny", "tiny", None, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def tiny(tokenizers):
    """Lazily built family -> tiny LoadedModel with the real tokenizer."""

    class _Lazy(dict):
        def __missing__(self, family: str):
            tok = tokenizers[family]
            lm = _lm(_tiny_model(family, len(tok)), tok)
            self[family] = lm
            return lm

    return _Lazy()


def _requests() -> list[ReadRequest]:
    reqs = [ReadRequest(SYSTEMS[k % 2], s) for k, s in enumerate(STATEMENTS)]
    reqs.append(ReadRequest(None, STATEMENTS[0]))
    return reqs


#: Readout against plain forwards, in log-probability: fp32, but these models' weights are
#: large (``initializer_range=0.5``), so cached/batched and plain forwards round apart by up
#: to ~4e-5 (measured); the variants the tests tell apart differ by > 1e-3
LOGP_ATOL = 1e-4


def _plain_probs(lm: LoadedModel, r: ReadRequest, model: nn.Module | None = None) -> np.ndarray:
    """Independent reference: one full prompt, a plain forward, softmax over A..E."""
    tok = lm.tokenizer
    ids = torch.tensor([encode_prompt(tok, build_prompt(tok, r.system_prompt, r.statement))])
    with torch.no_grad():
        logits = (model or lm.model)(input_ids=ids).logits[0, -1]
    letters = [tok.convert_tokens_to_ids(c) for c in "ABCDE"]  # the plain vocabulary entries
    return torch.softmax(logits[letters].double(), -1).numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_readout_parity(family, tiny):
    lm = tiny[family]
    reqs = _requests()
    out = option_probs(lm, reqs, batch_size=2)
    ref = np.stack([_plain_probs(lm, r) for r in reqs])
    np.testing.assert_allclose(np.log(out.probs), np.log(ref), atol=LOGP_ATOL, rtol=0)
    np.testing.assert_allclose(np.log(naive_option_probs(lm, reqs)), np.log(ref), atol=1e-6)
    assert out.probs.std() > 0.02  # random weights: far from uniform, so the check has teeth
    np.testing.assert_array_equal(out.answers, 5 - ref.argmax(axis=1))


def test_gemma3_sliding_window_shorter_than_prefix(tokenizers):
    tok = tokenizers["gemma3"]
    lm = _lm(_tiny_model("gemma3", len(tok), window=16), tok)
    reqs = _requests()[:3]
    out = option_probs(lm, reqs, batch_size=2)
    ref = np.stack([_plain_probs(lm, r) for r in reqs])
    np.testing.assert_allclose(np.log(out.probs), np.log(ref), atol=LOGP_ATOL, rtol=0)


def _with_o_proj_bias(model: nn.Module, u: torch.Tensor) -> nn.Module:
    """A copy of a stock model whose o_proj of layer i carries ``u[i]`` as its bias."""
    ref = copy.deepcopy(model)
    for i, layer in enumerate(ref.model.layers):
        old = layer.self_attn.o_proj
        new = nn.Linear(old.in_features, old.out_features, bias=True)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            new.bias.copy_(u[i] + (old.bias if old.bias is not None else 0))
        layer.self_attn.o_proj = new
    return ref.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_steering_all_positions_equals_o_proj_bias(family, tiny):
    lm = tiny[family]
    n_layers, hidden = len(lm.model.model.layers), lm.model.config.hidden_size
    torch.manual_seed(5)
    table = torch.randn(2, n_layers, hidden) * 0.5
    reqs = [
        ReadRequest(SYSTEMS[0], STATEMENTS[0], steer=1),
        ReadRequest(SYSTEMS[0], STATEMENTS[3], steer=None),
        ReadRequest(SYSTEMS[0], STATEMENTS[1], steer=0),
        ReadRequest(SYSTEMS[1], STATEMENTS[2], steer=1),
        ReadRequest(SYSTEMS[0], STATEMENTS[4], steer=1),
    ]
    out = option_probs(lm, reqs, batch_size=2, steering=table, position="all")
    biased = [_with_o_proj_bias(lm.model, table[k]) for k in range(len(table))]
    for i, r in enumerate(reqs):
        model = biased[r.steer] if r.steer is not None else lm.model
        ref = np.log(_plain_probs(lm, r, model))
        np.testing.assert_allclose(np.log(out.probs[i]), ref, atol=LOGP_ATOL, rtol=0)
    plain = option_probs(lm, [ReadRequest(r.system_prompt, r.statement) for r in reqs])
    gap = np.abs(np.log(plain.probs[0]) - np.log(out.probs[0])).max()
    assert gap > 10 * LOGP_ATOL  # steering changed the answer


@pytest.mark.parametrize("family", FAMILIES)
def test_steering_last_position(family, tiny):
    from palign.steering import steer

    lm = tiny[family]
    n_layers, hidden = len(lm.model.model.layers), lm.model.config.hidden_size
    torch.manual_seed(6)
    table = torch.randn(2, n_layers, hidden)
    reqs = [
        ReadRequest(SYSTEMS[1], STATEMENTS[0], steer=0),
        ReadRequest(SYSTEMS[1], STATEMENTS[3], steer=1),
        ReadRequest(None, STATEMENTS[2], steer=None),
    ]
    out = option_probs(lm, reqs, batch_size=2, steering=table, position="last")
    for i, r in enumerate(reqs):
        u = (table[r.steer] if r.steer is not None else torch.zeros(n_layers, hidden))[None]
        with steer(lm.model, u, position="last"):
            ref = _plain_probs(lm, r)
        np.testing.assert_allclose(np.log(out.probs[i]), np.log(ref), atol=LOGP_ATOL, rtol=0)
    allpos = option_probs(lm, reqs[:1], steering=table, position="all")
    gap = np.abs(np.log(allpos.probs[0]) - np.log(out.probs[0])).max()
    assert gap > 10 * LOGP_ATOL  # the two positions differ
