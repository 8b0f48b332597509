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

``generate_answers`` decodes greedily from the prompt ending with the prefill ``"Option"`` (as
the paper's code did) and parses the text with :func:`parse_answer`.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import warnings
from collections.abc import Iterator, Sequence
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


def _forward_params(model: Any) -> Any:
    return inspect.signature(model.forward).parameters


def _cache_kw(model: Any) -> str:
    """``cache`` (transformers >= 5.x) or ``past_key_values`` (older)."""
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def _out_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _keep_last_kw(model: Any) -> dict[str, int]:
    params = _forward_params(model)
    if "logits_to_keep" in params:
        return {"logits_to_keep": 1}
    if "num_logits_to_keep" in params:
        return {"num_logits_to_keep": 1}
    return {}


def _cache_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of a dynamic cache, shape (1, kv_heads, seq, head_dim)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers < 4.56


def _new_cache(model: Any, full: bool = False) -> Any:
    """An empty DynamicCache; ``full``: every layer keeps every token (no sliding-window
    cropping; the model's attention mask still applies the window)."""
    from transformers import DynamicCache

    if full:
        return DynamicCache()
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older signature
        return DynamicCache()


def _fresh_cache(
    model: Any, stored: list[tuple[torch.Tensor, torch.Tensor]], batch: int, full: bool = False
) -> Any:
    """A new DynamicCache holding the stored prefix, expanded to ``batch`` rows."""
    cache = _new_cache(model, full)
    for i, (k, v) in enumerate(stored):
        cache.update(
            k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:]), i
        )  # concatenation copies: the stored tensors are never written
    return cache


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


def _u_batch(
    steering: torch.Tensor, rows: Sequence[int | None], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    zeros = torch.zeros_like(steering[0])
    u = torch.stack([steering[r] if r is not None else zeros for r in rows])
    return u.to(device=device, dtype=dtype)


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


@contextlib.contextmanager
def _maybe_steer(model: Any, u: torch.Tensor | None, position: str = "last") -> Iterator[None]:
    if u is None:
        yield
        return
    from palign.steering import steer  # lazy: only needed when steering

    with steer(model, u, position=position):  # type: ignore[arg-type]
        yield


def _ids_key(ids: Sequence[int]) -> str:
    """A digest of token ids (cache keys must identify the tokens, not only their count)."""
    import hashlib

    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


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


def _chunks(order: list[int], size: int) -> Iterator[list[int]]:
    for s in range(0, len(order), size):
        yield order[s : s + size]


def _left_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if len(s):
            ids[row, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[row, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


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


# --- logits readout -------------------------------------------------------------------------
class _ReadContext:
    """Shared state of one :func:`option_probs` call and its two forward strategies."""

    def __init__(
        self,
        model: Any,
        device: torch.device,
        mdtype: torch.dtype,
        pad_id: int,
        cache_kw: str,
        keep_kw: dict[str, int],
        opt_ids: torch.Tensor,
        steering: torch.Tensor | None,
        position: str = "last",
        window: int | None = None,
    ) -> None:
        self.model, self.device, self.mdtype, self.pad_id = model, device, mdtype, pad_id
        self.position = position
        # sliding-window models: caches keep every token (a cropped prefix cannot be shared)
        self.window, self.full_cache = window, window is not None
        self.kv_bytes_per_token = _kv_bytes_per_token(model, mdtype)
        # materialised per-row caches per forward: a long shared prefix (few-shot, persona)
        # copied to every row must not exhaust memory
        self.budget = (8 << 30) if device.type == "cuda" else (1 << 30)
        self.cache_kw, self.keep_kw, self.opt_ids, self.steering = (
            cache_kw,
            keep_kw,
            opt_ids,
            steering,
        )

    def new_cache(self) -> Any:
        """An empty cache for a forward of this readout (uncropped on sliding-window models)."""
        return _new_cache(self.model, self.full_cache)

    def chunks(
        self, order: Sequence[Any], size: int, length: Any, plen: int
    ) -> Iterator[list[Any]]:
        """Chunks of at most ``size`` of ``order`` (sorted longest first by ``length``).

        On a sliding-window model, whose mask counts cache columns, the left padding between
        the prefix and a shorter suffix would move prefix tokens out of that row's window;
        a chunk whose prompts may reach past the window holds suffixes of one length only.
        """
        chunk: list[Any] = []
        for key in order:
            if chunk and (
                len(chunk) >= size
                or (
                    self.window is not None
                    and plen + length(chunk[0]) > self.window
                    and length(key) != length(chunk[0])
                )
            ):
                yield chunk
                chunk = []
            chunk.append(key)
        if chunk:
            yield chunk

    def _u(self, rows: Sequence[int | None]) -> torch.Tensor | None:
        if self.steering is None or all(r is None for r in rows):
            return None
        return _u_batch(self.steering, rows, self.device, self.mdtype)

    def _store(
        self,
        logits: torch.Tensor,
        keys: Sequence[tuple[str, int | None]],
        uniq: dict[tuple[str, int | None], list[int]],
        probs: np.ndarray,
        bar: Any,
    ) -> None:
        p = (
            torch.softmax(logits.float().index_select(-1, self.opt_ids), dim=-1)
            .cpu()
            .double()
            .numpy()
        )
        for row, key in enumerate(keys):
            for i in uniq[key]:
                probs[i] = p[row]
            if bar is not None:
                bar.update(len(uniq[key]))

    def one_stage(
        self,
        stored: list[tuple[torch.Tensor, torch.Tensor]],
        plen: int,
        seqs: list[list[int]],
        keys: list[tuple[str, int | None]],
        uniq: dict[tuple[str, int | None], list[int]],
        batch_size: int,
        probs: np.ndarray,
        bar: Any,
    ) -> int:
        """Each (statement, row) suffix in full after the shared prefix."""
        # longest first to reduce padding; without a prefix, rows are read one at a time (a
        # fully padded query row would have nothing to attend to)
        order = sorted(range(len(keys)), key=lambda j: -len(seqs[j]))
        size = self.rows_for(plen + max(len(x) for x in seqs), batch_size) if plen else 1
        for chunk in self.chunks(order, size, lambda j: len(seqs[j]), plen):
            ids, smask = _left_pad([seqs[j] for j in chunk], self.pad_id, self.device)
            b = ids.shape[0]
            kwargs: dict[str, Any] = dict(self.keep_kw)
            if plen:
                kwargs[self.cache_kw] = _fresh_cache(self.model, stored, b, self.full_cache)
            ones = torch.ones((b, plen), dtype=smask.dtype, device=self.device)
            attn = torch.cat([ones, smask], dim=1)
            pos = plen + (smask.cumsum(dim=1) - 1).clamp(min=0)
            with _maybe_steer(self.model, self._u([keys[j][1] for j in chunk]), self.position):
                out = self.model(
                    input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **kwargs
                )
            self._store(out.logits[:, -1, :], [keys[j] for j in chunk], uniq, probs, bar)
            del out, kwargs  # this forward's cache, before the next chunk's is built
        return len(keys)

    def per_row(
        self,
        prefix: list[int],
        seqs: dict[str, list[int]],
        uniq: dict[tuple[str, int | None], list[int]],
        batch_size: int,
        probs: np.ndarray,
        bar: Any,
    ) -> int:
        """All-position steering: each steering row's prefix once, then its items' suffixes.

        The shared prefix is computed once per steering row under that row's vector (rows
        batched, one vector each); every (statement, row) suffix then runs on a cache holding
        its own row's steered prefix, with the same row's steering on the suffix positions.
        Rows are processed in groups whose prefix caches fit the memory budget.
        """
        plen = len(prefix)
        rows = list(dict.fromkeys(k[1] for k in uniq))
        longest = plen + max(len(x) for x in seqs.values())
        per_tok = self.kv_bytes_per_token
        if plen:
            # alive at once: the group's prefix caches (group x plen tokens) and the working
            # set of one forward, either a prefix forward's own cache (sub x plen) or a
            # suffix forward's cache, which grows to `longest` tokens per row (size x longest);
            # each working set gets at most half of the budget, the group what is left
            size = self.rows_for(longest, batch_size, self.budget // 2)
            sub_rows = self.rows_for(plen, batch_size, self.budget // 2)
            work = max(size * longest, sub_rows * plen) * per_tok
            group = self.rows_for(plen, max(1, 64 * batch_size), self.budget - work)
        else:
            size, sub_rows, group = 1, 1, len(rows)
        for rgroup in _chunks(rows, group):
            kv: list[tuple[torch.Tensor, torch.Tensor]] = []
            if plen:
                ids = torch.tensor([prefix], device=self.device)
                lo = 0
                for sub in _chunks(rgroup, sub_rows):
                    with _maybe_steer(self.model, self._u(sub), "all"):
                        out = self.model(
                            input_ids=ids.expand(len(sub), -1),
                            use_cache=True,
                            **{self.cache_kw: self.new_cache()},
                            **self.keep_kw,
                        )
                    for li, (k, v) in enumerate(_cache_tensors(_out_cache(out))):
                        if not lo:  # one tensor per layer for the whole group, filled in place
                            kv.append(
                                (
                                    k.new_empty((len(rgroup), *k.shape[1:])),
                                    v.new_empty((len(rgroup), *v.shape[1:])),
                                )
                            )
                        kv[li][0][lo : lo + len(sub)] = k
                        kv[li][1][lo : lo + len(sub)] = v
                    lo += len(sub)
                    del out  # the forward's own cache, before the next one is built
            where = {r: j for j, r in enumerate(rgroup)}
            keys = [k for k in uniq if k[1] in where]
            keys.sort(key=lambda k: -len(seqs[k[0]]))
            for chunk in self.chunks(keys, size, lambda k: len(seqs[k[0]]), longest):
                ids, smask = _left_pad([seqs[k[0]] for k in chunk], self.pad_id, self.device)
                b = ids.shape[0]
                kwargs: dict[str, Any] = dict(self.keep_kw)
                if plen:
                    sel = torch.tensor([where[k[1]] for k in chunk], device=self.device)
                    kwargs[self.cache_kw] = _indexed_cache(self.model, kv, sel, self.full_cache)
                ones = torch.ones((b, plen), dtype=smask.dtype, device=self.device)
                attn = torch.cat([ones, smask], dim=1)
                pos = plen + (smask.cumsum(dim=1) - 1).clamp(min=0)
                with _maybe_steer(self.model, self._u([k[1] for k in chunk]), "all"):
                    out = self.model(
                        input_ids=ids,
                        attention_mask=attn,
                        position_ids=pos,
                        use_cache=True,
                        **kwargs,
                    )
                self._store(out.logits[:, -1, :], chunk, uniq, probs, bar)
                del out, kwargs  # this forward's cache, before the next chunk's is built
            del kv
        return len(uniq)

    def rows_for(self, length: int, cap: int, budget: int | None = None) -> int:
        """Rows (at most ``cap``, at least 1) whose caches of ``length`` tokens each fit
        ``budget`` bytes (default: the whole memory budget)."""
        per_row = max(1, self.kv_bytes_per_token * length)
        budget = self.budget if budget is None else budget
        return max(1, min(cap, budget // per_row))

    def two_stage(
        self,
        prefix: list[tuple[torch.Tensor, torch.Tensor]],
        plen: int,
        suffixes: dict[str, list[int]],
        uniq: dict[tuple[str, int | None], list[int]],
        batch_size: int,
        probs: np.ndarray,
        bar: Any,
        store: KVStore,
        prefix_ids: Sequence[int],
    ) -> int:
        """Stage 1: each statement's prompt up to its last token, unsteered, once; the
        statement's part of that cache (after the shared prefix) is kept in ``store`` so later
        calls reuse it. Stage 2: the last token for every steering row, many rows per forward,
        on [shared prefix | statement part] caches."""
        # keys identify the tokens: the shared prefix's ids and each statement's body ids
        tag = (_ids_key(prefix_ids),)
        bkey = {st: ("body", *tag, _ids_key(suffixes[st][:-1])) for st in suffixes}
        local = {st: store.get(bkey[st]) for st in suffixes if bkey[st] in store}
        missing = [st for st in suffixes if st not in local]
        missing.sort(key=lambda st: -len(suffixes[st]))
        longest = plen + max(len(x) for x in suffixes.values())
        size1 = self.rows_for(longest, batch_size)
        for chunk in _chunks(missing, size1):
            bodies = [suffixes[st][:-1] for st in chunk]
            ids, bmask = _left_pad(bodies, self.pad_id, self.device)
            b, width = ids.shape
            cache = _fresh_cache(self.model, prefix, b, self.full_cache)
            ones = torch.ones((b, plen), dtype=bmask.dtype, device=self.device)
            pos = plen + (bmask.cumsum(dim=1) - 1).clamp(min=0)
            out = self.model(
                input_ids=ids,
                attention_mask=torch.cat([ones, bmask], dim=1),
                position_ids=pos,
                use_cache=True,
                **{self.cache_kw: cache},
                **self.keep_kw,
            )
            kv = _cache_tensors(_out_cache(out))
            for r, st in enumerate(chunk):
                n = len(bodies[r])  # real body tokens sit at the end of the padded body
                lo, hi = plen + width - n, plen + width
                local[st] = store.put(
                    bkey[st],
                    [(k[r : r + 1, :, lo:hi], v[r : r + 1, :, lo:hi]) for k, v in kv],
                )
        # stage 2, grouped by statement so each statement's part is padded once
        by_st: dict[str, list[tuple[str, int | None]]] = {}
        for key in uniq:
            by_st.setdefault(key[0], []).append(key)
        keys_all = [
            key for st in sorted(by_st, key=lambda s: -len(suffixes[s])) for key in by_st[st]
        ]
        size2 = self.rows_for(longest + 1, max(batch_size, 8 * batch_size))
        for sub in _chunks(keys_all, size2):
            sts = list(dict.fromkeys(k[0] for k in sub))
            parts = [local[st] for st in sts]
            counts = [sum(1 for k in sub if k[0] == st) for st in sts]
            lens = [kv[0][0].shape[2] for kv in parts]
            width = max(lens)
            rows = len(sub)
            layers = []
            for li in range(len(parts[0])):
                ks, vs = [], []
                for kv, c, n in zip(parts, counts, lens):
                    k, v = kv[li]
                    padw = (0, 0, width - n, 0)
                    ks.append(torch.nn.functional.pad(k, padw).expand(c, -1, -1, -1))
                    vs.append(torch.nn.functional.pad(v, padw).expand(c, -1, -1, -1))
                k_all, v_all = torch.cat(ks), torch.cat(vs)
                if plen:
                    pk, pv = prefix[li]
                    k_all = torch.cat([pk.expand(rows, -1, -1, -1), k_all], dim=2)
                    v_all = torch.cat([pv.expand(rows, -1, -1, -1), v_all], dim=2)
                layers.append((k_all, v_all))
            mask = torch.zeros((rows, plen + width + 1), dtype=torch.long, device=self.device)
            mask[:, :plen] = 1
            mask[:, -1] = 1
            pos_list: list[int] = []
            row = 0
            for c, n in zip(counts, lens):
                mask[row : row + c, plen + width - n : plen + width] = 1
                pos_list += [plen + n] * c
                row += c
            cache2 = _indexed_cache(self.model, layers, None, self.full_cache)
            last = torch.tensor([[suffixes[k[0]][-1]] for k in sub], device=self.device)
            pos2 = torch.tensor(pos_list, device=self.device).unsqueeze(1)
            with _maybe_steer(self.model, self._u([k[1] for k in sub]), "last"):
                out2 = self.model(
                    input_ids=last,
                    attention_mask=mask,
                    position_ids=pos2,
                    use_cache=True,
                    **{self.cache_kw: cache2},
                    **self.keep_kw,
                )
            self._store(out2.logits[:, -1, :], sub, uniq, probs, bar)
        return len(uniq)


class KVStore:
    """Keys/values of prompts up to their last token, kept across readout calls.

    Steered readouts (``position="last"``) change only the last position, so the cache of
    everything before it is the same for every steering row, every alpha and every person
    with the same system prompt. A method that reads the same items many times (PAS: folds,
    alphas, persons) passes one store to :func:`option_probs` and pays the prompt once.
    Entries are evicted oldest-first beyond ``max_bytes``.
    """

    def __init__(self, max_bytes: int = 4 << 30) -> None:
        self.max_bytes = max_bytes
        self._d: dict[Any, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.bytes = 0

    @staticmethod
    def _size(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)

    def __contains__(self, key: Any) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The stored per-layer (keys, values), each ``(1, kv_heads, length, head_dim)``."""
        return self._d[key]

    def put(
        self, key: Any, kv: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Store (and return) a compact copy of ``kv``; evict the oldest beyond ``max_bytes``."""
        kv = [(k.contiguous().clone(), v.contiguous().clone()) for k, v in kv]
        self._d[key] = kv
        self.bytes += self._size(kv)
        while self.bytes > self.max_bytes and len(self._d) > 1:
            old = next(iter(self._d))
            if old == key:
                break
            self.bytes -= self._size(self._d.pop(old))
        return kv

    def clear(self) -> None:
        """Drop everything."""
        self._d.clear()
        self.bytes = 0


def _kv_bytes_per_token(model: Any, dtype: torch.dtype) -> int:
    """Bytes of keys + values of one token over all layers."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    layers = int(getattr(cfg, "num_hidden_layers", 1))
    heads = int(getattr(cfg, "num_attention_heads", 1))
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    hd = getattr(cfg, "head_dim", None) or int(getattr(cfg, "hidden_size", heads)) // heads
    return 2 * layers * kv * int(hd) * torch.tensor([], dtype=dtype).element_size()


def _indexed_cache(
    model: Any,
    kv: list[tuple[torch.Tensor, torch.Tensor]],
    rows: torch.Tensor | None,
    full: bool = False,
) -> Any:
    """A new DynamicCache holding rows ``rows`` of the given per-layer keys/values."""
    cache = _new_cache(model, full)
    for i, (k, v) in enumerate(kv):
        if rows is not None:
            k, v = k.index_select(0, rows), v.index_select(0, rows)
        cache.update(k, v, i)
    return cache


def option_probs(
    lm: LoadedModel,
    requests: Sequence[ReadRequest],
    *,
    batch_size: int = 16,
    steering: torch.Tensor | None = None,
    progress: bool = False,
    kv_store: KVStore | None = None,
    position: str = "all",
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
        model, device, mdtype, pad_id, cache_kw, keep_kw, opt_ids, steering, position, window
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
