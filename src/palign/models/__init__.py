"""Models: loading (hub id / folder / .gguf / ``smollm2``), task prompts, and readouts."""

from __future__ import annotations

from palign.models.loading import LoadedModel, load_model, option_token_ids
from palign.models.prompts import (
    ANSWER_PREFILL,
    GENERATE_PREFILL,
    NEUTRAL_SYSTEM_PROMPT,
    OPTION_LETTERS,
    OPTION_TEXTS,
    TASK_TEMPLATE,
    PromptSplit,
    build_generate_prompt,
    build_prompt,
    shared_prefix,
)
from palign.models.readout import (
    Readout,
    ReadRequest,
    generate_answers,
    option_probs,
    parse_answer,
)

__all__ = [
    "ANSWER_PREFILL",
    "GENERATE_PREFILL",
    "NEUTRAL_SYSTEM_PROMPT",
    "OPTION_LETTERS",
    "OPTION_TEXTS",
    "TASK_TEMPLATE",
    "LoadedModel",
    "PromptSplit",
    "ReadRequest",
    "Readout",
    "build_generate_prompt",
    "build_prompt",
    "generate_answers",
    "load_model",
    "option_probs",
    "option_token_ids",
    "parse_answer",
    "shared_prefix",
]
