"""The logits readout's forward strategies and the key/value caches they share.

:class:`_ReadContext` holds one :func:`palign.models.readout.option_probs` call's state and
runs its three strategies: ``one_stage`` (each suffix in full after a shared prefix),
``per_row`` (all-position steering: each steering row's prefix once, then its suffixes) and
``two_stage`` (last-position steering: prompts up to their last token once, kept in a
:class:`KVStore`, then one token per steering row). Materialised caches are sized to a memory
budget; sliding-window models get uncropped caches (see ``_ReadContext.chunks``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch


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


def _u_batch(
    steering: torch.Tensor, rows: Sequence[int | None], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    zeros = torch.zeros_like(steering[0])
    u = torch.stack([steering[r] if r is not None else zeros for r in rows])
    return u.to(device=device, dtype=dtype)


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
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


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
        share_lower: bool = False,
    ) -> None:
        self.model, self.device, self.mdtype, self.pad_id = model, device, mdtype, pad_id
        self.position = position
        # all-position steering: rows that differ only by steering share the layers below the
        # lowest steered layer (palign.steering.share), where the decoder layers allow it
        self.share_arch: Any = None
        if share_lower and steering is not None and position == "all" and window is None:
            from palign.errors import PalignError
            from palign.steering.arch import resolve_arch
            from palign.steering.share import can_share

            try:
                arch = resolve_arch(model)
            except PalignError:  # an architecture steering resolves otherwise (o_proj_path)
                arch = None
            if arch is not None and can_share(model, arch):
                self.share_arch = arch
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
                    u = self._u(sub)
                    low = self._shared_layer(u, 1, len(sub))
                    # shared: the prefix once (batch 1) below the lowest steered layer; the
                    # layers below then hold 1 row, broadcast into the group's tensors
                    with self._share(low, [0] * len(sub), 1), _maybe_steer(self.model, u, "all"):
                        out = self.model(
                            input_ids=ids if low else ids.expand(len(sub), -1),
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
            if self.share_arch is not None:  # a statement's rows side by side, to share them
                first = {st: j for j, st in enumerate(dict.fromkeys(k[0] for k in keys))}
                keys.sort(key=lambda k: (-len(seqs[k[0]]), first[k[0]]))
            else:
                keys.sort(key=lambda k: -len(seqs[k[0]]))
            for chunk in self.chunks(keys, size, lambda k: len(seqs[k[0]]), longest):
                u = self._u([k[1] for k in chunk])
                sts = list(dict.fromkeys(k[0] for k in chunk))
                low = self._shared_layer(u, len(sts), len(chunk)) if plen else None
                # shared: each statement once below the lowest steered layer, then per row
                fed = sts if low else [k[0] for k in chunk]
                ids, smask = _left_pad([seqs[st] for st in fed], self.pad_id, self.device)
                b = ids.shape[0]
                kwargs: dict[str, Any] = dict(self.keep_kw)
                if plen:
                    sel = torch.tensor([where[k[1]] for k in chunk], device=self.device)
                    rep = None
                    if low:  # below `low` every row of this chunk holds the unsteered prefix
                        rep = sel[[[k[0] for k in chunk].index(st) for st in sts]]
                    kwargs[self.cache_kw] = _indexed_cache(
                        self.model, kv, sel, self.full_cache, low=(low, rep) if low else None
                    )
                ones = torch.ones((b, plen), dtype=smask.dtype, device=self.device)
                attn = torch.cat([ones, smask], dim=1)
                pos = plen + (smask.cumsum(dim=1) - 1).clamp(min=0)
                index = [sts.index(k[0]) for k in chunk] if low else []
                with self._share(low, index, len(sts)), _maybe_steer(self.model, u, "all"):
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

    def _shared_layer(self, u: torch.Tensor | None, n_src: int, n_rows: int) -> int | None:
        """The layer from which ``n_rows`` rows fed as ``n_src`` distinct ones split, or
        None where nothing is shared (no sharing, nothing to share, or steering at layer 0)."""
        if self.share_arch is None or n_src >= n_rows:
            return None
        from palign.steering.share import lowest_steered_layer

        low = lowest_steered_layer(u)
        return low if low else None

    def _share(self, low: int | None, index: Sequence[int], n_src: int) -> Any:
        if not low:
            return contextlib.nullcontext()
        from palign.steering.share import share_below

        idx = torch.tensor(list(index), dtype=torch.long, device=self.device)
        return share_below(self.model, self.share_arch, low, idx, n_src)

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
    low: tuple[int, torch.Tensor] | None = None,
) -> Any:
    """A new DynamicCache holding rows ``rows`` of the given per-layer keys/values; with
    ``low = (layer, rows_below)``, the layers below ``layer`` hold rows ``rows_below``."""
    cache = _new_cache(model, full)
    for i, (k, v) in enumerate(kv):
        take = low[1] if low is not None and i < low[0] else rows
        if take is not None:
            k, v = k.index_select(0, take), v.index_select(0, take)
        cache.update(k, v, i)
    return cache
