"""Next-token choice of the serving engine, in vLLM's order.

vLLM's sampler (``vllm/v1/sample/sampler.py``) processes one row's logits as follows, and so
does :func:`choose`:

1. ``min_tokens``: end-of-sequence ids get ``-inf`` until ``min_tokens`` tokens are out
   (unless ``ignore_eos``);
2. ``repetition_penalty`` on every token of the prompt and of the output so far (logit / p
   when positive, logit * p when negative: the CTRL rule, as transformers'
   ``RepetitionPenaltyLogitsProcessor``);
3. temperature 0 (below 1e-5): the argmax, done;
4. logits / temperature, then ``min_p`` (tokens below ``min_p`` x the top probability
   dropped), then ``top_k``, then ``top_p`` (on the renormalised remaining mass);
5. a draw from the row's own ``torch.Generator``.

Log-probabilities reported to clients are those of the raw logits (vLLM's default
``logprobs_mode``), not of the processed ones.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

__all__ = ["SamplingParams", "choose", "processed_logits"]


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is generated.

    Attributes:
        max_tokens: most generated tokens (0: score the prompt only, with prompt_logprobs).
        temperature: 0 = greedy; else logits / temperature are sampled.
        top_p: nucleus sampling mass (1 = off).
        stop: strings that end the text (not included in it).
        seed: seed of this sequence's generator (None: a random seed).
        logprobs: return the log-probability of each generated token.
        top_logprobs: how many alternatives per position (with logprobs).
        prompt_logprobs: also the log-probability of each prompt token (echo scoring).
        top_k: keep the k most likely tokens (0 or -1 = off, as vLLM).
        min_p: drop tokens below ``min_p`` times the top probability (0 = off).
        repetition_penalty: CTRL repetition penalty over prompt and output (1 = off).
        min_tokens: no end-of-sequence token and no stop string before this many tokens.
        ignore_eos: keep generating after end-of-sequence tokens (to ``max_tokens``).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False


def processed_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    context: Sequence[int] = (),
    n_out: int = 0,
    eos_ids: Collection[int] = (),
) -> torch.Tensor:
    """The row's logits after steps 1, 2 and 4 of the module doc (``-inf`` = excluded).

    Args:
        logits: ``(vocab,)`` float logits of the next token.
        params: the sequence's sampling parameters.
        context: prompt and output token ids so far (for the repetition penalty).
        n_out: tokens generated so far (for ``min_tokens``).
        eos_ids: end-of-sequence ids (masked before ``min_tokens``).

    With temperature 0 only steps 1 and 2 apply (the caller takes the argmax).
    """
    x = logits.float().clone()
    if params.min_tokens and n_out < params.min_tokens and not params.ignore_eos and eos_ids:
        x[torch.tensor(sorted(eos_ids), dtype=torch.long)] = float("-inf")
    if params.repetition_penalty != 1.0 and len(context):
        idx = torch.tensor(sorted(set(context)), dtype=torch.long)
        v = x[idx]
        x[idx] = torch.where(v > 0, v / params.repetition_penalty, v * params.repetition_penalty)
    if params.temperature <= 1e-5:
        return x
    x = x / params.temperature
    if params.min_p > 0.0:
        probs = torch.softmax(x, -1)
        x = x.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    if params.top_k > 0 and params.top_k < x.numel():
        kth = torch.topk(x, params.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        vals, idx = torch.sort(x, descending=True)
        probs = torch.softmax(vals, -1)
        drop = (torch.cumsum(probs, -1) - probs) > params.top_p
        vals = vals.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(0, idx, vals)
    return x


def choose(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    context: Sequence[int] = (),
    n_out: int = 0,
    eos_ids: Collection[int] = (),
) -> int:
    """The next token id (argmax at temperature 0, else a draw from ``generator``)."""
    x = processed_logits(logits, params, context, n_out, eos_ids)
    if params.temperature <= 1e-5:
        return int(torch.argmax(x))
    return int(torch.multinomial(torch.softmax(x, -1), 1, generator=generator))
