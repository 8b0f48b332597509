"""``generate`` with the prompt prefix that all rows share computed once.

Open-ended runs answer many statements under one system prompt: the few-shot prompt lists
the person's 120 shown answers (about 1,500 tokens on Qwen2.5), and every statement's prompt
repeats it. :func:`generate_shared_prefix` runs that common prefix through the model once
(batch 1), expands its keys/values to each batch, and lets ``generate`` continue from there
with the rows' own suffixes, left-padded *between* prefix and suffix. Positions come from the
attention mask (prefix ``0..P-1``, then the suffix's real tokens ``P, P+1, ...``), so every row
sees exactly the tokens and positions of the unshared call (``lm.model.generate`` on the
left-padded full prompts); the outputs agree up to float rounding (tested against the
unshared call on SmolLM2 and tiny Llama/Qwen2 models, in log-probability).

Steering hooks that act at every position (``steer(..., position="all")``) or a LoRA adapter
apply to the prefix forward exactly as to the unshared one, so the caller wraps both calls in
the same context. Hooks that act only at the *last* position of each forward must not use
this (the prefix forward's last token is not a prompt's last token): callers keep the
unshared path for them. Models with a sliding attention window shorter than the prompts plus
the new tokens (Gemma-3: 512) take the unshared path too: their window counts cache slots,
and the padding between prefix and suffix would take slots that left padding leaves outside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from palign.models.readout import _sliding_window
from palign.models.readout_paths import _cache_kw, _cache_tensors, _fresh_cache, _out_cache

MIN_SHARED_PREFIX = 64
"""Below this many shared tokens the unshared call is used (nothing worth saving)."""


def shared_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix common to all ``seqs``, leaving every row one own token.

    The last token of each prompt is never part of the prefix, so ``generate`` always has at
    least one new input token per row.
    """
    if not seqs:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for k in range(max(n, 0)):
        t = first[k]
        if any(s[k] != t for s in seqs[1:]):
            return k
    return max(n, 0)


def prefix_kv(model: Any, prefix: Sequence[int], device: torch.device) -> list[Any]:
    """Per-layer (keys, values) of ``prefix`` (batch 1), under whatever hooks are active."""
    ids = torch.tensor([list(prefix)], device=device)
    with torch.inference_mode():
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            use_cache=True,
            **{_cache_kw(model): _fresh_cache(model, [], 1, full=True)},
        )
    return [(k.clone(), v.clone()) for k, v in _cache_tensors(_out_cache(out))]


def generate_shared_prefix(
    model: Any,
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    *,
    batch_size: int,
    min_prefix: int | None = MIN_SHARED_PREFIX,
    return_logits: bool = False,
    **generate_kw: Any,
) -> list[list[int]] | tuple[list[list[int]], list[torch.Tensor]]:
    """The new tokens ``model.generate`` writes for each prompt in ``seqs``.

    Batches of ``batch_size`` rows in the given order; ``generate_kw`` go to every
    ``generate`` call (sampling settings, ``max_new_tokens``...; seed torch before calling,
    as for the unshared loop, which consumes random numbers in the same order). When the
    rows share fewer than ``min_prefix`` tokens (or ``min_prefix`` is None, or a sliding
    window is shorter than the longest prompt plus ``max_new_tokens``) this is the plain
    left-padded loop. Returns
    the generated ids of each row (up to ``max_new_tokens``, padding included as
    ``generate`` returns it); with ``return_logits`` also each row's raw next-token logits
    per generated step, ``(steps, vocab)`` float32.
    """
    seqs = [list(s) for s in seqs]
    p = shared_prefix_len(seqs)
    window = _sliding_window(model)
    longest = max((len(q) for q in seqs), default=0) + int(generate_kw.get("max_new_tokens", 0))
    if window is not None and window < longest + 1:
        min_prefix = None  # the window would count the padding between prefix and suffix
    device = model.device
    out: list[list[int]] = []
    logits: list[torch.Tensor] = []
    if return_logits:
        generate_kw = {**generate_kw, "return_dict_in_generate": True, "output_logits": True}

    def run(ids: torch.Tensor, mask: torch.Tensor, start: int, **kw: Any) -> None:
        with torch.inference_mode():
            g = model.generate(ids, attention_mask=mask, **kw, **generate_kw)
        rows = g.sequences if return_logits else g
        out.extend(row[start:].tolist() for row in rows)
        if return_logits:
            steps = torch.stack([x.float() for x in g.logits], dim=1)  # (batch, steps, vocab)
            logits.extend(steps.unbind(0))

    if min_prefix is None or p < min_prefix:
        for s in range(0, len(seqs), batch_size):
            chunk = seqs[s : s + batch_size]
            width = max(len(q) for q in chunk)
            ids = torch.tensor([[pad_id] * (width - len(q)) + q for q in chunk], device=device)
            mask = torch.tensor(
                [[0] * (width - len(q)) + [1] * len(q) for q in chunk], device=device
            )
            run(ids, mask, width)
        return (out, logits) if return_logits else out
    prefix = seqs[0][:p]
    stored = prefix_kv(model, prefix, device)
    for s in range(0, len(seqs), batch_size):
        chunk = [q[p:] for q in seqs[s : s + batch_size]]
        width = max(len(q) for q in chunk)
        ids = torch.tensor([prefix + [pad_id] * (width - len(q)) + q for q in chunk], device=device)
        mask = torch.tensor(
            [[1] * p + [0] * (width - len(q)) + [1] * len(q) for q in chunk], device=device
        )
        cache = _fresh_cache(model, stored, len(chunk), full=True)
        run(ids, mask, p + width, **{_cache_kw(model): cache})
    return (out, logits) if return_logits else out
