"""Read a model's answer to questionnaire items: option probabilities or generated text.

``option_probs`` (the logits readout) runs one forward per item and reads the distribution of
the next token after the prefill ``"Option ("`` over the five letter tokens ``A``..``E``.

Prefix sharing: requests are grouped by system prompt. Within a group the full prompts are
tokenized one by one and split at their longest common token prefix
(:func:`palign.models.prompts.split_prompts`). The prefix is run once (batch 1) and its
key/value tensors kept; every batch of suffixes gets a fresh ``DynamicCache`` filled from those
stored tensors (expanded to the batch size), so no forward mutates the stored prefix.
Suffixes are left-padded *after* the prefix: the attention mask is ones over the prefix plus the
row's suffix mask, and the position ids are explicit (``prefix_len + rank among the row's real
tokens``), so each row sees exactly its own unpadded prompt and the readout position is the
last one (``-1``) for every row. Suffixes are sorted by length to reduce padding.

Steering positions (``position=``):

- ``"all"`` (default, the paper's method: the shift is an ``o_proj`` bias, so it is added at
  every position of every forward, system prompt included). A steered prefix differs per
  steering row, so it cannot be shared across rows; it is computed once per steering row
  (rows batched, each with its own vector) and reused for all of that row's items, whose
  suffixes then run on a per-row cache with the same row's steering. This equals a plain
  forward of the full prompt with ``u`` added to ``o_proj``'s bias.
- ``"last"`` (the fast variant): only the last position of each forward is shifted. The
  shared prefix and every statement's prompt up to its last token are computed unsteered
  once (and kept in a :class:`KVStore` across calls); only the last token runs per row.

The forward strategies and their caches live in :mod:`palign.models.readout_paths`.

``generate_answers`` decodes greedily from the prompt ending with the prefill ``"Option"`` (as
the paper's code did) and parses the text with :func:`parse_answer`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from palign.errors import PalignError
from palign.models.loading import LoadedModel, option_token_ids
from palign.models.prompts import (
    GENERATE_PREFILL,
    OPTION_LETTERS,
    OPTION_TEXTS,
    build_generate_prompt,
    build_prompt,
    encode_prompt,
    split_prompts,
)
from palign.models.readout_paths import (
    KVStore,
    _cache_kw,
    _cache_tensors,
    _chunks,
    _ids_key,
    _keep_last_kw,
    _left_pad,
    _maybe_steer,
    _out_cache,
    _ReadContext,
    _u_batch,
)

ANSWER_VALUES = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
"""Answer value of options A..E (A = Very Accurate = 5)."""


@dataclass(frozen=True)
class ReadRequest:
    """One item to read.

    Attributes:
        system_prompt: system turn; ``None`` = no system turn (or the template's default).
        statement: the full statement, e.g. ``"You worry about things."``.
        steer: row of the steering table passed to the readout; ``None`` = unsteered.
    """

    system_prompt: str | None
    statement: str
    steer: int | None = None


@dataclass
class Readout:
    """Readout of n requests, in request order.

    Attributes:
        probs: (n, 5) probabilities of A..E renormalised over the five letters (generate:
            one-hot of the parsed answer, NaN rows where unparsed).
        answers: (n,) int 1..5 (argmax; 5 = A); 0 where unparsed (generate readout).
        expected: (n,) sum_k p_k * answer_k (NaN for the generate readout).
        texts: generated texts (generate readout only), else None.
    """

    probs: np.ndarray
    answers: np.ndarray
    expected: np.ndarray
    texts: list[str] | None = None


# --- helpers --------------------------------------------------------------------------------
def readout_from_probs(probs: np.ndarray) -> Readout:
    """The logits readout of (n, 5) option probabilities: argmax answers (5 = A), expectations."""
    answers = (5 - probs.argmax(axis=1)).astype(int)
    return Readout(probs=probs, answers=answers, expected=probs @ ANSWER_VALUES, texts=None)


def _sliding_window(model: Any) -> int | None:
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    win = getattr(cfg, "sliding_window", None)
    return int(win) if win else None


def _steering_rows(
    requests: Sequence[ReadRequest], steering: torch.Tensor | None
) -> torch.Tensor | None:
    """Validate the steering table against the requests' rows."""
    if steering is None:
        bad = [r.steer for r in requests if r.steer is not None]
        if bad:
            raise PalignError(
                f"requests ask for steering row {bad[0]} but no steering table was passed; "
                "pass steering=... or set ReadRequest.steer=None"
            )
        return None
    if not isinstance(steering, torch.Tensor) or steering.dim() != 3:
        raise PalignError("steering must be a tensor of shape (n_rows, n_layers, hidden)")
    n = steering.shape[0]
    for r in requests:
        if r.steer is not None and not 0 <= r.steer < n:
            raise PalignError(
                f"steering row {r.steer} out of range for a table of {n} rows; use 0..{n - 1}"
            )
    return steering


POSITIONS = ("all", "last")
"""Steering positions: ``all`` (every position, the paper's o_proj bias) or ``last``."""


def check_position(position: str) -> str:
    """Validate a steering position name (one-line :class:`PalignError` otherwise)."""
    if position not in POSITIONS:
        raise PalignError(
            f"unknown steering position {position!r}; use 'all' (the paper's: every position) "
            "or 'last' (the fast variant: the last position of each forward)"
        )
    return position


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item")


def _groups(requests: Sequence[ReadRequest]) -> dict[str | None, list[int]]:
    groups: dict[str | None, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.system_prompt, []).append(i)
    return groups


def _model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _model_dtype(model: Any) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _empty(texts: bool) -> Readout:
    return Readout(
        probs=np.zeros((0, 5)),
        answers=np.zeros(0, dtype=int),
        expected=np.zeros(0),
        texts=[] if texts else None,
    )


def option_probs(
    lm: LoadedModel,
    requests: Sequence[ReadRequest],
    *,
    batch_size: int = 16,
    steering: torch.Tensor | None = None,
    progress: bool = False,
    kv_store: KVStore | None = None,
    position: str = "all",
    share_lower: bool = True,
) -> Readout:
    """Probabilities of the options A..E for each request (one forward per item).

    Args:
        lm: the loaded model.
        requests: items to read; results come back in this order.
        batch_size: suffixes per forward.
        steering: optional (n_rows, n_layers, hidden) table; ``request.steer`` picks a row
            (``None`` = zeros). Applied via ``palign.steering.steer`` at ``position``.
        progress: show a tqdm bar.
        kv_store: a :class:`KVStore` to reuse prompt caches across calls (``"last"``-position
            steered requests only; default: a store for this call).
        position: ``"all"`` (default, the paper's: every position of every forward, as an
            ``o_proj`` bias) or ``"last"`` (the last position of each forward; faster).
        share_lower: ``"all"`` position: rows that differ only by steering run the layers
            below the lowest steered layer once (:mod:`palign.steering.share`, forward
            hooks; where the model's decoder layers allow it, not on sliding-window models).

    Returns:
        A :class:`Readout` with ``probs`` (n, 5), ``answers`` (argmax mapped to 5..1) and
        ``expected`` (probability-weighted answer); ``texts`` is None.
    """
    requests = list(requests)
    if not requests:
        return _empty(texts=False)
    if batch_size < 1:
        raise PalignError(f"batch_size must be >= 1, got {batch_size}")
    steering = _steering_rows(requests, steering)
    check_position(position)
    model, tok = lm.model, lm.tokenizer
    device, mdtype = _model_device(model), _model_dtype(model)
    opt_ids = torch.tensor(option_token_ids(tok), device=device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    cache_kw, keep_kw = _cache_kw(model), _keep_last_kw(model)
    window = _sliding_window(model)

    probs = np.zeros((len(requests), 5))
    bar = _progress(len(requests), progress, "option probs")
    ctx = _ReadContext(
        model,
        device,
        mdtype,
        pad_id,
        cache_kw,
        keep_kw,
        opt_ids,
        steering,
        position,
        window,
        share_lower=share_lower,
    )
    with torch.no_grad():
        for system_prompt, idx in _groups(requests).items():
            # identical (statement, steering row) requests are read once
            uniq: dict[tuple[str, int | None], list[int]] = {}
            for i in idx:
                uniq.setdefault((requests[i].statement, requests[i].steer), []).append(i)
            statements = list(dict.fromkeys(requests[i].statement for i in idx))
            prompts = [build_prompt(tok, system_prompt, st) for st in statements]
            split = split_prompts(tok, prompts)
            prefix = split.prefix_ids
            if window is not None and len(prefix) >= window - 1:
                warnings.warn(
                    f"the model's sliding window ({window} tokens) is shorter than the shared "
                    f"prompt prefix ({len(prefix)} tokens): the readout keeps the prefix's cache "
                    "uncropped so that it is still shared, and batches only suffixes of equal "
                    "length (padding would move tokens out of the window)",
                    stacklevel=2,
                )
            steered = any(key[1] is not None for key in uniq)
            if steered and position == "all":
                plen = len(prefix)
                suffixes = {
                    st: split.prefix_ids[plen:] + s for st, s in zip(statements, split.suffix_ids)
                }
                ctx.per_row(list(prefix), suffixes, uniq, batch_size, probs, bar)
                continue
            if steered and prefix:
                # the two-stage path needs every suffix to keep >= 2 tokens (a body + the last)
                short = min(len(x) for x in split.suffix_ids)
                prefix = prefix[: max(0, len(prefix) - max(0, 2 - short))]
            plen = len(prefix)
            suffixes = {
                st: split.prefix_ids[plen:] + s for st, s in zip(statements, split.suffix_ids)
            }
            longest = plen + max(len(x) for x in suffixes.values())
            two = bool(steered and plen and (window is None or longest < window - 1))
            store = kv_store if kv_store is not None else KVStore()
            ptag = ("prefix", _ids_key(prefix))
            pkv: list[tuple[torch.Tensor, torch.Tensor]] = []
            if plen and two and ptag in store:
                pkv = store.get(ptag)
            elif plen:
                out = model(
                    input_ids=torch.tensor([prefix], device=device),
                    use_cache=True,
                    **{cache_kw: ctx.new_cache()},
                    **keep_kw,
                )
                pkv = [(k.detach(), v.detach()) for k, v in _cache_tensors(_out_cache(out))]
                if two:
                    pkv = store.put(ptag, pkv)
            if two:
                # two stages: each statement's prompt up to its last token once, then only
                # the last token per steering row ("last"-position steering touches nothing
                # before it), so persons and alphas share all but one position per item
                ctx.two_stage(pkv, plen, suffixes, uniq, batch_size, probs, bar, store, prefix)
            else:
                keys = list(uniq)
                seqs = [suffixes[k[0]] for k in keys]
                ctx.one_stage(pkv, plen, seqs, keys, uniq, batch_size, probs, bar)
    if bar is not None:
        bar.close()
    return readout_from_probs(probs)


def naive_option_probs(lm: LoadedModel, requests: Sequence[ReadRequest]) -> np.ndarray:
    """Reference readout: each full prompt alone (batch 1, no cache, no steering).

    Slow; for tests and checks of :func:`option_probs`. Returns (n, 5) probabilities.
    """
    model, tok = lm.model, lm.tokenizer
    device = _model_device(model)
    opt_ids = option_token_ids(tok)
    out = np.zeros((len(requests), 5))
    with torch.no_grad():
        for i, r in enumerate(requests):
            ids = encode_prompt(tok, build_prompt(tok, r.system_prompt, r.statement))
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float()
            out[i] = torch.softmax(logits[opt_ids], dim=-1).cpu().double().numpy()
    return out


# --- generate readout -----------------------------------------------------------------------
def generate_answers(
    lm: LoadedModel,
    requests: Sequence[ReadRequest],
    *,
    max_new_tokens: int = 15,
    batch_size: int = 8,
    steering: torch.Tensor | None = None,
    progress: bool = False,
    position: str = "all",
) -> Readout:
    """Greedy-decode up to ``max_new_tokens`` after the prefill ``"Option"`` and parse.

    Batches are left-padded. With ``steering``, ``steer(position=position)`` wraps the whole
    generation: ``"all"`` (default) shifts every prompt position and every new token (the
    paper's o_proj bias); ``"last"`` the prompt's last position and every new token.

    Returns:
        A :class:`Readout` with the generated ``texts`` (the continuation after ``"Option"``),
        ``answers`` parsed by :func:`parse_answer` (0 where unparsed), ``probs`` one-hot of
        the parsed answer (NaN rows where unparsed) and ``expected`` all NaN.
    """
    requests = list(requests)
    if not requests:
        return _empty(texts=True)
    if batch_size < 1:
        raise PalignError(f"batch_size must be >= 1, got {batch_size}")
    steering = _steering_rows(requests, steering)
    check_position(position)
    model, tok = lm.model, lm.tokenizer
    device, mdtype = _model_device(model), _model_dtype(model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = [
        encode_prompt(tok, build_generate_prompt(tok, r.system_prompt, r.statement))
        for r in requests
    ]
    order = sorted(range(len(requests)), key=lambda i: -len(encoded[i]))
    texts: list[str] = [""] * len(requests)
    bar = _progress(len(requests), progress, "generate")
    with torch.no_grad():
        for chunk in _chunks(order, batch_size):
            ids, mask = _left_pad([encoded[i] for i in chunk], pad_id, device)
            u = None
            if steering is not None:
                u = _u_batch(steering, [requests[i].steer for i in chunk], device, mdtype)
            with _maybe_steer(model, u, position):
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad_id,
                )
            new = out[:, ids.shape[1] :]
            for row, i in enumerate(chunk):
                texts[i] = tok.decode(new[row], skip_special_tokens=True)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    answers = np.zeros(len(requests), dtype=int)
    probs = np.full((len(requests), 5), np.nan)
    for i, text in enumerate(texts):
        a = parse_answer(GENERATE_PREFILL + text)
        if a is not None:
            answers[i] = a
            probs[i] = 0.0
            probs[i, 5 - a] = 1.0
    return Readout(
        probs=probs, answers=answers, expected=np.full(len(requests), np.nan), texts=texts
    )


# --- parser ---------------------------------------------------------------------------------
_LETTER_END = r"(?![A-Za-z])"
_LETTER_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\(\s*([A-Ea-e])\s*\)"),  # (A)  ( b )
    re.compile(r"\(([A-E])" + _LETTER_END),  # (A.  or a truncated "(A"
    re.compile(r"(?<![A-Za-z(])([A-E])\)"),  # A)
    re.compile(r"\*\*\s*([A-E])\s*\*\*"),  # **A**
    re.compile(r"(?m)^[\s>*#\-]*([A-E])\s*(?:[.:\]](?![A-Za-z])|$)"),  # line: "A." "A:" "A"
    re.compile(
        r"\b(?i:answer|option|choice)s?\s*(?i:is|would\s+be|will\s+be)?\s*[:=\-]?\s*\(?\s*([A-E])"
        + _LETTER_END
    ),  # Answer: B / My answer is D / Option A
    re.compile(
        r"\b(?i:i\s+(?:would\s+|will\s+)?(?:choose|chose|select|pick))\s+(?i:option\s+)?\(?"
        r"([A-E])" + _LETTER_END
    ),  # I choose C
)
_ARTICLE_A_PATTERNS = (1, 5, 6)  # patterns where "A" + a lowercase word is the article

_OPTION_TEXT_RE = re.compile(
    r"\b(" + "|".join(re.escape(t) for t in sorted(OPTION_TEXTS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
_OPTION_BY_TEXT = {t.lower(): 5 - k for k, t in enumerate(OPTION_TEXTS)}
_NEGATION_RE = re.compile(r"(?:\b(?:not|never|no)|n't)\s*[(\"'*]*\s*$", re.IGNORECASE)


def _negated(text: str, start: int) -> bool:
    return bool(_NEGATION_RE.search(text[max(0, start - 20) : start]))


def parse_answer(text: str) -> int | None:
    """Parse a free-text answer into 1..5 (A = Very Accurate = 5), or ``None``.

    Accepts a letter A–E in forms like ``"(A)"``, ``"A."``, ``"A)"``, ``"Answer: B"``,
    ``"My answer is D"``, ``"(C). Neither ..."``, a letter alone, or an option text anywhere
    (case-insensitive, longest first: ``"Very Inaccurate"`` is E, ``"Neither Accurate Nor
    Inaccurate"`` is C). A bare capital ``A`` counts only with parentheses, punctuation, an
    "Answer:"-like context or alone, and not when a lowercase word follows after an answer
    keyword (``"Answer: A person..."``). Returns ``None`` when nothing is found, when two
    different options are found, or when a found option is negated ("not (A)") — never
    guesses.
    """
    if not text:
        return None
    found: set[int] = set()
    for k, pattern in enumerate(_LETTER_PATTERNS):
        for m in pattern.finditer(text):
            letter = m.group(1).upper()
            if (
                k in _ARTICLE_A_PATTERNS
                and letter == "A"
                and re.match(r"\s+[a-z]", text[m.end(1) :])
            ):
                continue
            if _negated(text, m.start()):
                return None
            found.add(5 - OPTION_LETTERS.index(letter))
    for m in _OPTION_TEXT_RE.finditer(text):
        if _negated(text, m.start()):
            return None
        found.add(_OPTION_BY_TEXT[m.group(1).lower()])
    return found.pop() if len(found) == 1 else None
