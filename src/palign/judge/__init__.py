"""Open-ended evaluation: aligned free-text answers judged on the paper's 1-6 rubric.

- :mod:`palign.judge.generate`: ``run_generate`` (the aligned model answers open questions
  about the test statements; resumable run folders, JSONL generations).
- :mod:`palign.judge.client`: judge backends: :class:`OpenAIJudge` (any OpenAI-compatible
  endpoint through the official ``openai`` client), :class:`LocalJudge` (any palign model
  in-process) and the disk cache :class:`CachedJudge`.
- :mod:`palign.judge.prompts`: the versioned question, rubric (score-first and the paper's
  reasoning protocol), pairwise and stance prompts.
- :mod:`palign.judge.parse`: the clean-parse rules and the probability-weighted score read at
  the choice's position.
- :mod:`palign.judge.run`: ``judge_generations``, ``judge_pairwise``, ``agreement``.
- :mod:`palign.judge.stance`: ``judge_stance`` (``palign judge --mode stance``): the judge's
  1-5 reading of each free-text answer against the person's answer, and against the method's
  own multiple-choice answer (consistency).
- :mod:`palign.judge.validate`: ``judge-validate``: known-answer texts at each stance 1..5 and
  a judge's reading of them (``write_texts``, ``judge_texts``, ``stance_metrics``).
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
from palign.judge.parse import parse_choice, parse_judgement, parse_score, weighted_score
from palign.judge.run import agreement, judge_generations, judge_pairwise
from palign.judge.stance import judge_stance
from palign.judge.validate import ValidateConfig, judge_texts, stance_metrics, write_texts

__all__ = [
    "CachedJudge",
    "GenerateConfig",
    "JudgeRequest",
    "JudgeResponse",
    "LocalJudge",
    "OpenAIJudge",
    "ValidateConfig",
    "agreement",
    "judge_generations",
    "judge_pairwise",
    "judge_stance",
    "judge_texts",
    "load_generations",
    "parse_choice",
    "parse_judgement",
    "parse_score",
    "run_generate",
    "stance_metrics",
    "weighted_score",
    "write_texts",
]
