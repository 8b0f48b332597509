"""Training sees the readout's token ids: one BOS, not two (issue #23, item 7).

TRL 1.x tokenizes plain-text prompts with ``tokenizer(text=...)`` (special tokens added). The
prompts come from the chat template, which for Gemma-3 and Llama-3 already renders BOS, so
handing TRL the template text trained on ``[BOS, BOS, ...]``. These tests run TRL's own
preprocessing (``DPOTrainer._prepare_dataset``, ``GRPOTrainer._tokenize_prompts``) on the rows
palign builds and compare the ids with the readout's (:func:`encode_prompt`), for the real
Gemma-3 tokenizer, a Llama-3-style tokenizer (BOS added by the tokenizer and rendered by a
Llama-3 template) and SmolLM2's ChatML (no BOS at all).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from palign.data.types import Dataset, Person
from palign.errors import PalignError
from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT, build_prompt, encode_prompt
from palign.train import dpo_pairs, dpo_rows, grpo_rows, rl_prompts, trainer_text
from tests.conftest import TINY_STORED, tiny_inventory

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
"""Meta-Llama-3-8B-Instruct's chat template (BOS rendered into the first message)."""


def llama3_style(base):  # noqa: ANN001,ANN201
    """SmolLM2's tokenizer made Llama-3-like: a ``<|begin_of_text|>`` BOS the tokenizer adds
    itself (TemplateProcessing, as Llama-3's tokenizer.json) and Llama-3's chat template."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(base)
    tok.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        }
    )
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    tok.chat_template = LLAMA3_TEMPLATE
    assert tok("x").input_ids[0] == bos  # the tokenizer adds BOS, as Llama-3's does
    return tok


@pytest.fixture(scope="module", params=["gemma3", "llama3", "smollm2"])
def tok(request: pytest.FixtureRequest):  # noqa: ANN201
    if request.param == "gemma3":
        return request.getfixturevalue("gemma3_tokenizer")
    base = request.getfixturevalue("llama_tokenizer")
    return llama3_style(base) if request.param == "llama3" else base


def _dataset() -> Dataset:
    inv = tiny_inventory()
    return Dataset(inv, [Person(id=k, stored=dict(v)) for k, v in TINY_STORED.items()])


def test_dpo_prompt_ids_equal_readout(tok) -> None:  # noqa: ANN001
    from datasets import Dataset as HFDataset
    from trl import DPOTrainer

    ds = _dataset()
    pairs = dpo_pairs(tok, ds, ds.persons[0], system_prompt=NEUTRAL_SYSTEM_PROMPT)
    fake = SimpleNamespace(_tokenizer=tok)
    args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    out = DPOTrainer._prepare_dataset(
        fake, HFDataset.from_list(dpo_rows(tok, pairs)), tok, args, "t"
    )
    assert len(out) == len(pairs) > 0
    for pair, row in zip(pairs, out):
        want = encode_prompt(tok, pair.prompt)  # the readout's ids
        assert row["prompt_ids"] == want
        assert row["prompt_ids"][:2] != [tok.bos_token_id] * 2  # BOS once
        # the completion is the answer letter's continuation, as the readout reads it
        assert tok.decode(row["chosen_ids"]).startswith(pair.chosen)


def test_grpo_prompt_ids_equal_readout(tok) -> None:  # noqa: ANN001
    from trl import GRPOTrainer

    ds = _dataset()
    prompts = rl_prompts(tok, ds, ds.persons[0], system_prompt=NEUTRAL_SYSTEM_PROMPT)
    fake = SimpleNamespace(processing_class=tok, _is_vlm=False)
    ids, _, _ = GRPOTrainer._tokenize_prompts(fake, [r["prompt"] for r in grpo_rows(tok, prompts)])
    assert [list(x) for x in ids] == [encode_prompt(tok, p.prompt) for p in prompts]


def test_untrainable_tokenizer_is_refused(llama_tokenizer) -> None:  # noqa: ANN001
    """A tokenizer that adds BOS while its template renders none cannot match: one-line error."""
    tok = llama3_style(llama_tokenizer)
    tok.chat_template = LLAMA3_TEMPLATE.replace("bos_token + content", "content")
    prompt = build_prompt(tok, None, "You worry about things.")
    with pytest.raises(PalignError, match="adds special tokens the chat template does not render"):
        trainer_text(tok, prompt)
