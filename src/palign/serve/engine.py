"""A batching generation engine: one base model, many personalities, per-row steering.

Every running sequence is one row of a shared batch. Each row carries its own PAS steering
vectors ``u`` (``(n_layers, hidden)``, zeros = the plain base model), steering position,
sampling parameters and random generator, so a row's tokens do not depend on what else is
in the batch (greedy rows are token-identical to the same request served alone; sampled rows
draw from their own ``torch.Generator`` seeded by the request's ``seed``).

The loop (one background thread):

1. admit waiting sequences (up to ``max_batch`` rows): their prompts are prefilled together
   (left padding, explicit position ids) and their KV caches are merged into the running
   batch's cache (left-padded to a common length), so new requests join at the next step
   instead of waiting for the batch to drain (continuous batching). Models whose cache is not
   a plain per-layer key/value cache (sliding-window layers) join only an empty batch;
2. pick every row's next token from its logits (greedy, or temperature/top-p sampling);
   emit text deltas, stop on an eos token, a stop string, ``max_tokens`` or the context size;
3. drop finished and cancelled rows (a client that disconnects frees its slot at once) and
   run one decoding forward for the rest.

Steering uses :func:`palign.steering.steer` twice around each forward: one hook set for
rows steered at ``"all"`` positions (the paper's o_proj bias: every prompt and generated
position) and one for rows steered at the ``"last"`` position; a row is zero in the other.
Rows with a PEFT LoRA adapter get its terms through :func:`palign.serve.lora.lora_rows`.
"""

from __future__ import annotations

import inspect
import itertools
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from palign.errors import PalignError
from palign.models.loading import LoadedModel
from palign.serve.lora import lora_rows
from palign.serve.sampling import SamplingParams, choose
from palign.steering.arch import resolve_arch
from palign.steering.intervene import steer

__all__ = [
    "Completion",
    "Engine",
    "Event",
    "Overloaded",
    "SamplingParams",
    "TokenInfo",
    "TooLarge",
]


class Overloaded(Exception):
    """The engine's queue is full (the server answers 503)."""


class TooLarge(PalignError):
    """A request with more sequences than the engine can ever hold (the server answers 400)."""


@dataclass
class TokenInfo:
    """One token with its log-probability and the top alternatives ``(id, text, logprob)``."""

    token_id: int
    text: str
    logprob: float | None
    top: list[tuple[int, str, float]] = field(default_factory=list)
    offset: int = 0


@dataclass
class Completion:
    """A finished sequence (``token_ids``: every generated token, an eos included, as vLLM)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    tokens: list[TokenInfo] | None = None
    prompt_logprobs: list[TokenInfo] | None = None


@dataclass
class Event:
    """What the engine tells a request: a text ``delta`` (streaming), ``done`` or ``error``."""

    kind: Literal["delta", "done", "error"]
    index: int
    text: str = ""
    tokens: list[TokenInfo] | None = None
    completion: Completion | None = None
    message: str = ""


Sink = Callable[[Event], None]


class _Seq:
    """One row: a prompt, its steering, its sampling state and its output so far."""

    _ids = itertools.count()

    def __init__(
        self,
        engine: Engine,
        prompt_ids: list[int],
        params: SamplingParams,
        u: torch.Tensor | None,
        position: str,
        sink: Sink,
        index: int,
        stream: bool,
        lora: Any = None,
    ) -> None:
        self.id = next(self._ids)
        self.engine = engine
        self.prompt_ids = prompt_ids
        self.params = params
        self.u = u
        self.position = position
        self.sink = sink
        self.index = index
        self.stream = stream
        self.lora = lora
        self.cancelled = False
        self.finished = False
        self.out_ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.infos: list[TokenInfo] = []
        self.unsent_infos: list[TokenInfo] = []
        self.prompt_infos: list[TokenInfo] | None = None
        self.next_pos = len(prompt_ids)
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(7), "little")
        self.generator = torch.Generator().manual_seed(seed)

    # --- emitting ----------------------------------------------------------------------------
    def _emit(self, ev: Event) -> None:
        try:
            self.sink(ev)
        except Exception:  # the receiver is gone (closed loop): stop generating for it
            self.cancelled = True

    def _holdback(self) -> int:
        """Characters that may still turn into a stop string or a multi-byte character."""
        text = self.text
        hold = 0
        for s in self.params.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        if text.endswith("\ufffd"):
            hold = max(hold, len(text) - len(text.rstrip("\ufffd")))
        return hold

    def _stream_delta(self) -> None:
        if not self.stream:
            return
        safe = len(self.text) - self._holdback()
        delta = self.text[self.sent : safe] if safe > self.sent else ""
        if delta or self.unsent_infos:
            self.sent = max(self.sent, safe)
            self._emit(Event("delta", self.index, text=delta, tokens=self.unsent_infos or None))
            self.unsent_infos = []

    def finish(self, reason: str) -> None:
        """End the sequence: flush the streamed text and send the completion."""
        self.finished = True
        if self.cancelled:
            return
        # every generated token keeps its entry (the eos token and the token that completed a
        # stop string included), as vLLM: streaming and non-streaming agree
        keep = self.infos
        if self.stream:
            rest = self.unsent_infos
            delta = self.text[self.sent :]
            if delta or rest:
                self._emit(Event("delta", self.index, text=delta, tokens=rest or None))
            self.sent = len(self.text)
        comp = Completion(
            index=self.index,
            text=self.text,
            token_ids=list(self.out_ids),
            finish_reason=reason,
            prompt_tokens=len(self.prompt_ids),
            tokens=keep if self.params.logprobs else None,
            prompt_logprobs=self.prompt_infos,
        )
        self._emit(Event("done", self.index, completion=comp))

    def fail(self, message: str) -> None:
        """End the sequence with an error."""
        self.finished = True
        if not self.cancelled:
            self._emit(Event("error", self.index, message=message))

    # --- one step ------------------------------------------------------------------------
    def info(self, token_id: int, logp: torch.Tensor, offset: int) -> TokenInfo:
        """Log-probability of ``token_id`` and the top alternatives from ``logp``."""
        dec = self.engine.token_text
        top: list[tuple[int, str, float]] = []
        k = self.params.top_logprobs
        if k:
            vals, idx = torch.topk(logp, k)
            top = [(int(i), dec(int(i)), float(v)) for v, i in zip(vals, idx)]
        return TokenInfo(token_id, dec(token_id), float(logp[token_id]), top, offset)

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this row's (CPU, float32) logits (:func:`sampling.choose`)."""
        p = self.params
        plain = p.repetition_penalty == 1.0 and not p.min_tokens
        return choose(
            logits,
            p,
            self.generator,
            context=() if plain else self.prompt_ids + self.out_ids,
            n_out=len(self.out_ids),
            eos_ids=self.engine.eos_ids,
        )

    def advance(self, token_id: int, logp: torch.Tensor | None) -> None:
        """Append ``token_id`` (or end on eos / stop string / length)."""
        eng = self.engine
        eos = token_id in eng.eos_ids and not self.params.ignore_eos
        prev = len(self.text)
        self.out_ids.append(token_id)  # the eos token counts too (usage, logprobs), as vLLM
        if not eos:
            self.text = eng.tokenizer.decode(self.out_ids, skip_special_tokens=True)
        self.next_pos += 1
        if self.params.logprobs and logp is not None:
            t = self.info(token_id, logp, prev)
            self.infos.append(t)
            self.unsent_infos.append(t)
        if eos:
            self.finish("stop")
            return
        if self.params.stop and len(self.out_ids) > self.params.min_tokens:
            start = max(0, prev - max(len(s) for s in self.params.stop))
            hits = [i for i in (self.text.find(s, start) for s in self.params.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.finish("stop")
                return
        if len(self.out_ids) >= self.params.max_tokens or self.next_pos >= eng.max_context:
            self.finish("length")
            return
        self._stream_delta()


def _out_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class Engine:
    """The batching generation loop over one :class:`LoadedModel` (see the module doc).

    Args:
        lm: the base model.
        max_batch: most rows decoded together.
        max_queue: most sequences waiting for a row; more are refused (:class:`Overloaded`).
        threads: torch intra-op threads of the engine thread (None: torch's default). On a
            busy CPU, 1 is often much faster than several (no spinning on shared cores).

    Use :meth:`start` / :meth:`stop` (or ``with Engine(lm) as eng:``), :meth:`submit` from
    any thread (events go to the ``sink``), or the blocking :meth:`generate`.
    """

    def __init__(
        self,
        lm: LoadedModel,
        max_batch: int = 32,
        max_queue: int = 256,
        threads: int | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise PalignError("max_batch must be >= 1 and max_queue >= 0")
        self.lm = lm
        self.model = lm.model
        self.tokenizer = lm.tokenizer
        self.arch = resolve_arch(lm.model)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.threads = threads
        self.max_context = int(
            getattr(lm.model.config, "max_position_embeddings", None)
            or getattr(lm.tokenizer, "model_max_length", 4096)
        )
        eos: set[int] = set()
        for src in (
            getattr(lm.model.generation_config, "eos_token_id", None),
            lm.tokenizer.eos_token_id,
        ):
            if isinstance(src, int):
                eos.add(src)
            elif isinstance(src, (list, tuple)):
                eos.update(int(x) for x in src)
        self.eos_ids = frozenset(eos)
        pad = lm.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(eos), 0))
        #: held around every forward; hold it to use the model from another thread
        self.model_lock = threading.RLock()
        self._cond = threading.Condition()
        self._pending: deque[_Seq] = deque()
        self._active: list[_Seq] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        self._u: dict[str, torch.Tensor | None] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._token_text: dict[int, str] = {}
        #: called with the row count of every decoding step (metrics), from the engine thread
        self.step_observer: Callable[[int], None] | None = None
        params = inspect.signature(lm.model.forward).parameters
        #: transformers >= 5.2x names the KV cache argument ``cache`` (``past_key_values`` before)
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.stats = {
            "forwards": 0,
            "prefills": 0,
            "rows": 0,
            "max_rows": 0,
            "merges": 0,
            "cancelled": 0,
            "admitted": 0,
        }

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> Engine:
        """Start the loop thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="palign-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop; running and waiting sequences end with an error event."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for s in list(self._pending) + self._active:
            s.fail("the server is shutting down")
        self._pending.clear()
        self._reset()

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def load(self) -> dict[str, int]:
        """Rows running and sequences waiting."""
        return {"running": len(self._active), "waiting": len(self._pending)}

    def token_text(self, token_id: int) -> str:
        """The text of one token (cached)."""
        t = self._token_text.get(token_id)
        if t is None:
            t = self.tokenizer.decode([token_id])
            self._token_text[token_id] = t
        return t

    # --- submitting ----------------------------------------------------------------------
    def submit(
        self,
        prompts: Sequence[list[int]],
        params: SamplingParams,
        sink: Sink,
        *,
        u: torch.Tensor | None = None,
        position: str = "all",
        n: int = 1,
        stream: bool = False,
        lora: Any = None,
    ) -> list[Any]:
        """Queue ``n`` sequences per prompt; events go to ``sink`` (from the engine thread).

        ``u`` (PAS steering vectors) and ``lora`` (a :class:`palign.serve.lora.LoraAdapter`)
        apply to these sequences only.

        Sequence ``i * n + j`` (prompt ``i``, choice ``j``) reports with ``index`` ``i*n+j``
        and, when sampling with a ``seed``, draws from a generator seeded ``seed + j``.

        Returns:
            handles to pass to :meth:`cancel`.

        Raises:
            Overloaded: the queue cannot take them all now (nothing is queued then).
            TooLarge: more sequences than ``max_batch + max_queue``: they never fit.
            PalignError: a prompt is empty or too long, or ``u`` has the wrong shape.
        """
        if position not in ("all", "last"):
            raise PalignError(f"unknown steering position {position!r}; use 'all' or 'last'")
        if u is not None:
            u = u.detach().float()
            if tuple(u.shape) != (self.arch.n_layers, self.arch.hidden):
                raise PalignError(
                    f"steering vectors shaped {tuple(u.shape)}, this model needs "
                    f"({self.arch.n_layers}, {self.arch.hidden})"
                )
            u = u.to(self.lm.device) if bool(u.any()) else None
        total = len(prompts) * n
        if total > self.max_batch + self.max_queue:
            raise TooLarge(
                f"{len(prompts)} prompt(s) x n={n} = {total} sequences exceed this server's "
                f"limit of {self.max_batch + self.max_queue} (--max-batch {self.max_batch} + "
                f"--max-queue {self.max_queue}); send fewer prompts or a smaller n"
            )
        seqs = []
        for i, ids in enumerate(prompts):
            if not ids:
                raise PalignError("empty prompt; send at least one token")
            if len(ids) + max(params.max_tokens, 1) > self.max_context:
                raise PalignError(
                    f"prompt of {len(ids)} tokens plus max_tokens {params.max_tokens} exceeds "
                    f"the model's context of {self.max_context} tokens; shorten the prompt or "
                    "lower max_tokens"
                )
            for j in range(n):
                p = params
                if n > 1 and params.seed is not None:
                    p = SamplingParams(**{**params.__dict__, "seed": params.seed + j})
                seqs.append(_Seq(self, list(ids), p, u, position, sink, i * n + j, stream, lora))
        with self._cond:
            if self._stopping:
                raise Overloaded("the server is shutting down")
            if len(self._pending) + len(seqs) > self.max_queue + max(
                0, self.max_batch - len(self._active)
            ):
                raise Overloaded(
                    f"{len(self._pending)} sequences are waiting (limit {self.max_queue}); "
                    "retry later"
                )
            self._pending.extend(seqs)
            self._cond.notify_all()
        return seqs

    def cancel(self, handles: Sequence[Any]) -> None:
        """Stop generating for these sequences (their row is freed at the next step)."""
        with self._cond:
            for s in handles:
                s.cancelled = True
            self._pending = deque(s for s in self._pending if not s.cancelled)

    def generate(
        self,
        prompts: Sequence[list[int]],
        params: SamplingParams | None = None,
        *,
        u: torch.Tensor | None = None,
        position: str = "all",
        n: int = 1,
        timeout: float | None = None,
        lora: Any = None,
    ) -> list[Completion]:
        """Blocking: the completions of ``prompts`` (``n`` each), in index order."""
        params = params or SamplingParams()
        q: queue.Queue[Event] = queue.Queue()
        handles = self.submit(prompts, params, q.put, u=u, position=position, n=n, lora=lora)
        out: dict[int, Completion] = {}
        try:
            while len(out) < len(handles):
                ev = q.get(timeout=timeout)
                if ev.kind == "error":
                    raise PalignError(f"generation failed: {ev.message}")
                if ev.kind == "done" and ev.completion is not None:
                    out[ev.index] = ev.completion
        except queue.Empty:
            self.cancel(handles)
            raise PalignError(f"generation timed out after {timeout} s") from None
        return [out[k] for k in sorted(out)]

    # --- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._pending and not self._active:
                        self._cond.wait()
                    if self._stopping:
                        return
                    new: list[_Seq] = []
                    room = self.max_batch - len(self._active)
                    if room > 0 and self._pending and (not self._active or self._mergeable()):
                        while self._pending and len(new) < room:
                            s = self._pending.popleft()
                            if not s.cancelled:
                                new.append(s)
                    self.stats["admitted"] += len(new)
                try:
                    with self.model_lock:
                        if new:
                            self._prefill(new)
                        self._step()
                except Exception as e:  # a failed forward ends the rows, not the server
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    for s in self._active + new:
                        if not s.finished:
                            s.fail(msg)
                    self._reset()

    def _reset(self) -> None:
        self._active = []
        self._cache = None
        self._mask = None
        self._logits = None
        self._u = None

    def _mergeable(self) -> bool:
        from transformers.cache_utils import DynamicLayer

        layers = getattr(self._cache, "layers", None)
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    def _steer_rows(self, seqs: Sequence[_Seq]) -> dict[str, torch.Tensor | None]:
        """Per-position ``(B, n_layers, hidden)`` steering tensors (None: no row steered)."""
        out: dict[str, torch.Tensor | None] = {}
        for pos in ("all", "last"):
            rows = [s.u if (s.u is not None and s.position == pos) else None for s in seqs]
            if all(r is None for r in rows):
                out[pos] = None
                continue
            zero = torch.zeros(self.arch.n_layers, self.arch.hidden, device=self.lm.device)
            out[pos] = torch.stack([r if r is not None else zero for r in rows])
        return out

    def _forward(self, u: dict[str, torch.Tensor | None], rows: Sequence[_Seq], **kw: Any) -> Any:
        self.stats["forwards"] += 1
        with (
            steer(self.model, u["all"], position="all", arch=self.arch),
            steer(self.model, u["last"], position="last", arch=self.arch),
            lora_rows(self.model, [s.lora for s in rows]),
        ):
            return self.model(use_cache=True, **kw)

    def _prefill(self, new: list[_Seq]) -> None:
        dev = self.lm.device
        width = max(len(s.prompt_ids) for s in new)
        ids = torch.tensor(
            [[self.pad_id] * (width - len(s.prompt_ids)) + s.prompt_ids for s in new], device=dev
        )
        mask = torch.tensor(
            [[0] * (width - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in new], device=dev
        )
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        want_prompt = any(s.params.prompt_logprobs for s in new)
        out = self._forward(
            self._steer_rows(new),
            new,
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            logits_to_keep=0 if want_prompt else 1,
        )
        self.stats["prefills"] += 1
        logits = out.logits[:, -1].float()
        if want_prompt:
            for b, s in enumerate(new):
                if s.params.prompt_logprobs:
                    n = len(s.prompt_ids)
                    lp = torch.log_softmax(out.logits[b, width - n : width - 1].float(), -1).cpu()
                    infos = [TokenInfo(s.prompt_ids[0], self.token_text(s.prompt_ids[0]), None)]
                    off = len(infos[0].text)
                    for t in range(1, n):
                        info = s.info(s.prompt_ids[t], lp[t - 1], off)
                        off += len(info.text)
                        infos.append(info)
                    s.prompt_infos = infos
        keep = [b for b, s in enumerate(new) if s.params.max_tokens > 0 and not s.cancelled]
        for s in new:
            if s.params.max_tokens == 0:
                s.finish("length")
        if not keep:
            return
        cache = _out_cache(out)
        if len(keep) < len(new):
            idx = torch.tensor(keep, device=dev)
            cache.batch_select_indices(idx)
            mask, logits = mask[idx], logits[idx]
        rows = [new[b] for b in keep]
        if not self._active:
            self._active, self._cache, self._mask, self._logits = rows, cache, mask, logits
        else:
            ta, tb = self._mask.shape[1], mask.shape[1]
            t = max(ta, tb)
            for la, lb in zip(self._cache.layers, cache.layers):
                la.keys = torch.cat(
                    [F.pad(la.keys, (0, 0, t - ta, 0)), F.pad(lb.keys, (0, 0, t - tb, 0))]
                )
                la.values = torch.cat(
                    [F.pad(la.values, (0, 0, t - ta, 0)), F.pad(lb.values, (0, 0, t - tb, 0))]
                )
            self._mask = torch.cat([F.pad(self._mask, (t - ta, 0)), F.pad(mask, (t - tb, 0))])
            self._logits = torch.cat([self._logits, logits])
            self._active = self._active + rows
            self.stats["merges"] += 1
        self._u = None

    def _step(self) -> None:
        if not self._active:
            return
        assert self._logits is not None and self._mask is not None
        logits = self._logits.cpu()
        want_lp = any(s.params.logprobs for s in self._active)
        logp = torch.log_softmax(logits, -1) if want_lp else None
        for b, s in enumerate(self._active):
            if s.cancelled or s.finished:
                continue
            tok = s.choose(logits[b])
            s.advance(tok, logp[b] if logp is not None else None)
        keep = [b for b, s in enumerate(self._active) if not (s.finished or s.cancelled)]
        self.stats["cancelled"] += sum(1 for s in self._active if s.cancelled and not s.finished)
        if not keep:
            self._reset()
            return
        dev = self.lm.device
        if len(keep) < len(self._active):
            idx = torch.tensor(keep, device=dev)
            self._cache.batch_select_indices(idx)
            self._mask = self._mask[idx]
            self._active = [self._active[b] for b in keep]
            self._u = None
            if self._mergeable():  # drop leading columns no row attends to any more
                used = self._mask.any(0).nonzero()
                first = int(used[0]) if len(used) else 0
                if first > 0:
                    for layer in self._cache.layers:
                        layer.keys = layer.keys[:, :, first:]
                        layer.values = layer.values[:, :, first:]
                    self._mask = self._mask[:, first:]
        rows = self._active
        if self._u is None:
            self._u = self._steer_rows(rows)
        ids = torch.tensor([[s.out_ids[-1]] for s in rows], device=dev)
        pos = torch.tensor([[s.next_pos - 1] for s in rows], device=dev)
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], 1)
        out = self._forward(
            self._u,
            rows,
            input_ids=ids,
            attention_mask=self._mask,
            position_ids=pos,
            logits_to_keep=1,
            **{self._cache_kw: self._cache},
        )
        self._cache = _out_cache(out)
        self._logits = out.logits[:, -1].float()
        self.stats["rows"] += len(rows)
        self.stats["max_rows"] = max(self.stats["max_rows"], len(rows))
        if self.step_observer is not None:
            self.step_observer(len(rows))
