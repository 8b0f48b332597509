"""Open-ended evaluation: aligned free-text answers judged on the paper's 1-6 rubric.

- :mod:`palign.judge.generate`: ``run_generate`` (the aligned model answers open questions
  about the test statements; resumable run folders, JSONL generations).
- :mod:`palign.judge.client`: judge backends: :class:`OpenAIJudge` (any OpenAI-compatible
  endpoint through the official ``openai`` client), :class:`LocalJudge` (any palign model
  in-process) and the disk cache :class:`CachedJudge`.
- :mod:`palign.judge.prompts`: the versioned question, rubric and pairwise prompts.
- :mod:`palign.judge.parse`: the clean-parse rule and the probability-weighted score.
- :mod:`palign.judge.run`: ``judge_generations``, ``judge_pairwise``, ``agreement``.
"""

from __future__ import annotations

from palign.judge.client import (
    CachedJudge,
    JudgeRequest,
    JudgeResponse,
    LocalJudge,
    OpenAIJudge,
)
from palign.judge.generate import GenerateConfig, load_generations, run_generate
from palign.judge.parse import parse_choice, parse_score, weighted_score
from palign.judge.run import agreement, judge_generations, judge_pairwise

__all__ = [
    "CachedJudge",
    "GenerateConfig",
    "JudgeRequest",
    "JudgeResponse",
    "LocalJudge",
    "OpenAIJudge",
    "agreement",
    "judge_generations",
    "judge_pairwise",
    "load_generations",
    "parse_choice",
    "parse_score",
    "run_generate",
    "weighted_score",
]
