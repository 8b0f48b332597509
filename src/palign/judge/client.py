"""Judge backends: any OpenAI-compatible endpoint (official ``openai`` client) or a local model.

Both take a list of :class:`JudgeRequest` and return one :class:`JudgeResponse` each.
:class:`CachedJudge` puts a disk cache in front of either: an answer is stored under
``palign.paths.cache_dir("judge")`` keyed by the judge's identity (model name and base URL, or
the local model's id and revision) and the full request (messages, max tokens, temperature,
seed, logprobs), so judging the same generations again sends no request.

Errors: a refused key (401/403), an unknown model (404), a rejected request (400) and an
unreachable endpoint (after the retries) stop the run with a one-line
:class:`~palign.errors.PalignError`; rate limits (429), server errors (5xx), timeouts and
malformed responses are retried with exponential backoff, and an item still failing after
the retries is recorded as an error (not cached; the next run retries it).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from palign.errors import PalignError
from palign.paths import atomic_write, cache_dir

if TYPE_CHECKING:
    from palign.models.loading import LoadedModel

API_KEY_ENVS = ("PALIGN_JUDGE_API_KEY", "OPENAI_API_KEY")
"""Environment variables read for the API key, in order (never a flag or a file)."""

TOP_LOGPROBS = 20
"""Alternatives requested per generated token (the OpenAI maximum)."""

DEFAULT_TIMEOUT = 120.0
"""Seconds per request of :class:`OpenAIJudge` (the CLI's ``--timeout`` default too)."""

CACHE_FORMAT = 2
"""Part of every cache key; bumped when what a cached answer holds changes (2: candidates
carry their character ``offset`` and the answer the resolved model)."""


@dataclass(frozen=True)
class JudgeRequest:
    """One judge call.

    Attributes:
        prompt: the user message (the rubric or pairwise prompt, filled in).
        choices: the valid choices (``"123456"`` or ``"AB"``): positions whose token is one
            of them keep their top log-probabilities.
        max_tokens: generation limit.
        temperature: sampling temperature (0 = greedy).
        seed: sampling seed (sent to the endpoint; local judges seed torch with it).
        logprobs: ask for token log-probabilities.
    """

    prompt: str
    choices: str = "123456"
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0
    logprobs: bool = True

    def messages(self) -> list[dict[str, str]]:
        """The chat messages sent."""
        return [{"role": "user", "content": self.prompt}]


@dataclass
class JudgeResponse:
    """A judge's answer (or the error that prevented one).

    Attributes:
        text: the judgement text ("" on error).
        candidates: per generated position whose token is a choice,
            ``{"token": ..., "top": {token: logprob}, "offset": first character of the token
            in text, or None where the tokens do not spell the text}``; None when no logprobs
            came back.
        finish_reason: ``stop``, ``length``...
        error: one line when the request failed after all retries.
        cached: answered from the disk cache.
        model: the model that answered, as the endpoint resolved it (``response.model``,
            e.g. ``gpt-4o-2024-08-06`` for ``gpt-4o``); a local judge's model id.
    """

    text: str = ""
    candidates: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    error: str | None = None
    cached: bool = False
    model: str | None = None


class JudgeBackend(Protocol):
    """What a judge backend provides."""

    identity: str
    """Cache identity: ``<model>@<base URL>`` (remote) or ``local:<id>@<revision>``."""
    name: str
    """Default output name: the model name (remote) or ``local-<spec>``."""

    def describe(self) -> dict[str, Any]:
        """The judge's settings, stored with every result."""
        ...

    def complete_many(
        self,
        requests: Sequence[JudgeRequest],
        progress: bool = False,
        on_result: Callable[[int, JudgeResponse], None] | None = None,
    ) -> list[JudgeResponse]:
        """One response per request, in order; ``on_result(index, response)`` as each arrives."""
        ...


def _first_line(x: object) -> str:
    s = str(x).strip().splitlines()
    return s[0][:300] if s else type(x).__name__


def _candidates(content: Any, choices: str, text: str) -> list[dict[str, Any]] | None:
    """Choice positions of an OpenAI ``logprobs.content`` list, with their offsets in ``text``.

    The tokens spell the text (offset = the summed lengths of the tokens before); an endpoint
    that trims the text's ends is allowed for (the tokens' string must contain the text).
    Where they do not spell it, the offsets are None (no weighted score is read).
    """
    if not content:
        return None
    toks = [t.token or "" for t in content]
    joined = "".join(toks)
    shift: int | None = 0
    if joined != text:
        k = joined.find(text) if text else -1
        shift = k if k >= 0 else None
    out = []
    pos = 0
    for t, s in zip(content, toks):
        if len(s.strip()) == 1 and s.strip() in choices:
            top = {a.token: a.logprob for a in (t.top_logprobs or [])}
            top.setdefault(s, t.logprob)
            off = None if shift is None else pos - shift
            out.append({"token": s, "top": top, "offset": off})
        pos += len(s)
    return out


def api_key() -> str | None:
    """The judge API key from the environment (:data:`API_KEY_ENVS`), or None."""
    for name in API_KEY_ENVS:
        v = os.environ.get(name)
        if v:
            return v
    return None


class _Fatal(Exception):
    """An error that stops the whole run (wrapped into PalignError by the caller)."""


class OpenAIJudge:
    """A judge behind any OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Args:
        model: the model name the endpoint serves (e.g. ``gpt-4o``, a vLLM model id).
        base_url: the endpoint's base URL, e.g. ``https://api.openai.com/v1`` or
            ``http://127.0.0.1:8000/v1``.
        concurrency: requests in flight at once.
        retries: retries per request on 429/5xx/timeouts/malformed responses.
        timeout: seconds per request (:data:`DEFAULT_TIMEOUT`).
        backoff: first retry delay in seconds (doubled each retry, with jitter, capped at
            60 s; a ``Retry-After`` header of the response takes precedence).
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        concurrency: int = 4,
        retries: int = 4,
        timeout: float = DEFAULT_TIMEOUT,
        backoff: float = 1.0,
    ) -> None:
        try:
            import openai
        except ImportError:  # pragma: no cover
            raise PalignError(
                "the judge needs the openai package; install it with pip install 'palign[judge]'"
            ) from None
        if concurrency < 1 or retries < 0 or timeout <= 0 or backoff < 0:
            raise PalignError(
                "--concurrency must be >= 1, --retries >= 0, --timeout > 0, --backoff >= 0"
            )
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        # the same model name at two endpoints is two judges (a local server's "gpt-4o" is
        # not OpenAI's): the cache identity holds both
        self.identity = f"{model}@{self.base_url}"
        self.name = model
        key = api_key()
        self.key_source = next((n for n in API_KEY_ENVS if os.environ.get(n)), None)
        # retries are ours (counted, with our backoff); the client never retries by itself
        self._client = openai.OpenAI(
            api_key=key or "EMPTY", base_url=self.base_url, timeout=timeout, max_retries=0
        )
        self._openai = openai
        self.requests_sent = 0
        self.retried = 0
        self._lock = threading.Lock()
        # OpenAI's newer models take max_completion_tokens only; switched to on their 400
        self._max_key = "max_tokens"

    def describe(self) -> dict[str, Any]:
        """Endpoint, model and client settings (the key itself is never recorded)."""
        return {
            "kind": "openai-compatible",
            "model": self.model,
            "base_url": self.base_url,
            "api_key_env": self.key_source,
            "concurrency": self.concurrency,
            "retries": self.retries,
            "timeout_s": self.timeout,
            "backoff_s": self.backoff,
            "openai_client": getattr(self._openai, "__version__", None),
        }

    def _delay(self, attempt: int, err: Exception | None) -> float:
        resp = getattr(err, "response", None)
        if resp is not None:
            h = resp.headers
            try:
                if h.get("retry-after-ms"):
                    return min(60.0, float(h["retry-after-ms"]) / 1000)
                if h.get("retry-after"):
                    return min(60.0, float(h["retry-after"]))
            except ValueError:
                pass
        return min(60.0, self.backoff * 2**attempt) * (0.75 + 0.5 * random.random())

    def _call(self, req: JudgeRequest) -> Any:
        kw: dict[str, Any] = {
            "model": self.model,
            "messages": req.messages(),
            self._max_key: req.max_tokens,
            "temperature": req.temperature,
            "seed": req.seed,
        }
        if req.logprobs:
            kw.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        with self._lock:
            self.requests_sent += 1
        try:
            return self._client.chat.completions.create(**kw)
        except self._openai.BadRequestError as e:
            if "max_completion_tokens" not in str(e.message) or "max_tokens" not in kw:
                raise
            self._max_key = "max_completion_tokens"  # the same request, the newer name
            kw["max_completion_tokens"] = kw.pop("max_tokens")
            with self._lock:
                self.requests_sent += 1
            return self._client.chat.completions.create(**kw)

    def _one(self, req: JudgeRequest) -> JudgeResponse:
        o = self._openai
        last: str = ""
        for attempt in range(self.retries + 1):
            err: Exception | None = None
            try:
                r = self._call(req)
                if not getattr(r, "choices", None):
                    raise ValueError("the response has no choices")
                ch = r.choices[0]
                text = ch.message.content if ch.message is not None else None
                if text is None:
                    raise ValueError("the response has no message content")
                cands = None
                if req.logprobs and ch.logprobs is not None:
                    cands = _candidates(ch.logprobs.content, req.choices, text)
                model = getattr(r, "model", None)
                return JudgeResponse(
                    text, cands, ch.finish_reason, model=model if isinstance(model, str) else None
                )
            except (o.AuthenticationError, o.PermissionDeniedError) as e:
                raise _Fatal(
                    f"the judge endpoint {self.base_url} refused the API key (HTTP "
                    f"{e.status_code}): set PALIGN_JUDGE_API_KEY (or OPENAI_API_KEY) to a valid "
                    "key for it"
                ) from None
            except o.NotFoundError as e:
                raise _Fatal(
                    f"the judge endpoint {self.base_url} answered 404 for model {self.model!r} "
                    f"({_first_line(e.message)}); check --judge-model and --base-url (it "
                    "usually ends in /v1)"
                ) from None
            except o.RateLimitError as e:
                err, last = e, "HTTP 429 (rate limited)"
            except o.APITimeoutError as e:
                err, last = e, f"timed out after {self.timeout:g} s"
            except o.APIConnectionError as e:
                if attempt == self.retries:
                    raise _Fatal(
                        f"cannot reach the judge endpoint {self.base_url} "
                        f"({_first_line(e.__cause__ or e)}); check --base-url and that the "
                        "server is running"
                    ) from None
                err, last = e, "connection error"
            except o.APIStatusError as e:
                msg = _first_line(e.message)
                if e.status_code < 500 and e.status_code not in (408, 409):
                    hint = " or pass --no-logprobs" if "logprobs" in msg else ""
                    raise _Fatal(
                        f"the judge endpoint {self.base_url} rejected the request (HTTP "
                        f"{e.status_code}: {msg}); check the judge options{hint}"
                    ) from None
                err, last = e, f"HTTP {e.status_code}"
            except (o.APIResponseValidationError, json.JSONDecodeError, ValueError) as e:
                err, last = e, f"malformed response ({_first_line(e)})"
            except Exception as e:  # the client's own parse errors on a bad body
                err, last = e, f"malformed response ({type(e).__name__}: {_first_line(e)})"
            if attempt < self.retries:
                with self._lock:
                    self.retried += 1
                time.sleep(self._delay(attempt, err))
        return JudgeResponse(error=f"{last} after {self.retries + 1} attempts")

    def complete_many(
        self,
        requests: Sequence[JudgeRequest],
        progress: bool = False,
        on_result: Callable[[int, JudgeResponse], None] | None = None,
    ) -> list[JudgeResponse]:
        """Send the requests, ``concurrency`` at a time."""
        from tqdm.auto import tqdm

        out: list[JudgeResponse | None] = [None] * len(requests)
        ex = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futs = {ex.submit(self._one, r): k for k, r in enumerate(requests)}
            with tqdm(total=len(requests), desc="judge", unit="item", disable=not progress) as bar:
                for f in as_completed(futs):
                    try:
                        out[futs[f]] = resp = f.result()
                    except _Fatal as e:
                        raise PalignError(str(e)) from None
                    if on_result is not None:
                        on_result(futs[f], resp)
                    bar.update(1)
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
        return [r for r in out if r is not None]


class LocalJudge:
    """A judge run in-process on any palign model (hub id, folder, .gguf, alias).

    Requests are batched (left padding, one ``generate`` per batch); with ``logprobs`` the
    raw next-token log-probabilities at every position whose token is a choice are kept,
    so the weighted score is defined exactly as for an endpoint.
    """

    def __init__(self, lm: LoadedModel, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise PalignError("--batch-size must be at least 1")
        self.lm = lm
        self.batch_size = batch_size
        self.identity = f"local:{lm.model_id}@{lm.revision}"
        self.name = "local-" + (Path(lm.spec).name or lm.spec)
        self.requests_sent = 0

    def describe(self) -> dict[str, Any]:
        """The local model's identity and settings."""
        lm = self.lm
        return {
            "kind": "local",
            "model": lm.spec,
            "model_id": lm.model_id,
            "revision": lm.revision,
            "device": str(lm.device),
            "dtype": str(lm.dtype).replace("torch.", ""),
            "batch_size": self.batch_size,
        }

    def _batch(self, reqs: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        import torch

        from palign.chat import chat_ids

        lm = self.lm
        tok = lm.tokenizer
        r0 = reqs[0]
        seqs = [chat_ids(lm, r.messages()) for r in reqs]
        width = max(len(s) for s in seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=lm.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=lm.device)
        kw: dict[str, Any] = {
            "max_new_tokens": r0.max_tokens,
            "pad_token_id": pad,
            "return_dict_in_generate": True,
            "output_logits": r0.logprobs,
        }
        if r0.temperature > 0:
            torch.manual_seed(r0.seed)
            kw.update(do_sample=True, temperature=r0.temperature, top_p=1.0, top_k=0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            g = lm.model.generate(ids, attention_mask=mask, **kw)
        self.requests_sent += len(reqs)
        eos = set()
        for e in (tok.eos_token_id, getattr(lm.model.generation_config, "eos_token_id", None)):
            if isinstance(e, int):
                eos.add(e)
            elif isinstance(e, list):
                eos.update(e)
        out = []
        for b, r in enumerate(reqs):
            new = g.sequences[b, width:].tolist()
            n = len(new)
            finish = "length"
            for k, t in enumerate(new):
                if t in eos or t == pad and pad in eos:
                    n, finish = k, "stop"
                    break
            text = tok.decode(new[:n], skip_special_tokens=True)
            cands = None
            if r.logprobs:
                cands = []
                for k in range(n):
                    piece = tok.decode([new[k]])
                    if len(piece.strip()) == 1 and piece.strip() in r.choices:
                        # offset in the decoded text: the length of what precedes the token
                        off = len(tok.decode(new[:k], skip_special_tokens=True))
                        lp = torch.log_softmax(g.logits[k][b].float(), dim=-1)
                        v, i = lp.topk(TOP_LOGPROBS)
                        top: dict[str, float] = {}
                        for tid, val in zip(i.tolist(), v.tolist()):
                            t = tok.decode([tid])
                            top[t] = max(top.get(t, -1e30), val)
                        top.setdefault(piece, float(lp[new[k]]))
                        ok = text[off : off + len(piece)] == piece
                        cands.append({"token": piece, "top": top, "offset": off if ok else None})
            out.append(JudgeResponse(text, cands, finish, model=lm.model_id))
        return out

    def complete_many(
        self,
        requests: Sequence[JudgeRequest],
        progress: bool = False,
        on_result: Callable[[int, JudgeResponse], None] | None = None,
    ) -> list[JudgeResponse]:
        """Generate the judgements, ``batch_size`` prompts per batch (equal settings grouped)."""
        from tqdm.auto import tqdm

        out: list[JudgeResponse | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for k, r in enumerate(requests):
            groups.setdefault((r.max_tokens, r.temperature, r.seed, r.logprobs), []).append(k)
        with tqdm(total=len(requests), desc="judge", unit="item", disable=not progress) as bar:
            for idx in groups.values():
                # longest prompts together: less padding
                idx = sorted(idx, key=lambda k: len(requests[k].prompt))
                for s in range(0, len(idx), self.batch_size):
                    chunk = idx[s : s + self.batch_size]
                    for k, resp in zip(chunk, self._batch([requests[k] for k in chunk])):
                        out[k] = resp
                        if on_result is not None:
                            on_result(k, resp)
                    bar.update(len(chunk))
        return [r for r in out if r is not None]


@dataclass
class CachedJudge:
    """A disk cache in front of a backend: answers keyed by (judge identity, request).

    Attributes:
        backend: the judge backend.
        folder: cache folder (default ``cache_dir("judge")``).
        hits: requests answered from the cache in this session.
    """

    backend: Any
    folder: Path = field(default_factory=lambda: cache_dir("judge"))
    hits: int = 0

    @property
    def identity(self) -> str:
        """The backend's identity."""
        return self.backend.identity

    @property
    def name(self) -> str:
        """The backend's output name."""
        return self.backend.name

    def describe(self) -> dict[str, Any]:
        """The backend's settings plus the cache folder."""
        return {**self.backend.describe(), "cache": str(self.folder)}

    def key(self, req: JudgeRequest) -> str:
        """sha256 of the judge identity, the full request and :data:`CACHE_FORMAT`."""
        blob = json.dumps(
            {"judge": self.identity, "format": CACHE_FORMAT, **asdict(req)}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, req: JudgeRequest) -> JudgeResponse | None:
        """The cached response of ``req``, or None."""
        p = self._path(self.key(req))
        if not p.is_file():
            return None
        try:
            d = json.loads(p.read_text())
            return JudgeResponse(
                d["text"], d.get("candidates"), d.get("finish_reason"), None, True, d.get("model")
            )
        except (json.JSONDecodeError, KeyError):
            return None

    def put(self, req: JudgeRequest, resp: JudgeResponse) -> None:
        """Store a successful response."""
        if resp.error is not None:
            return
        p = self._path(self.key(req))
        p.parent.mkdir(parents=True, exist_ok=True)
        rec = {
            "judge": self.identity,
            "text": resp.text,
            "candidates": resp.candidates,
            "finish_reason": resp.finish_reason,
            "model": resp.model,
        }

        def write(tmp: str) -> None:
            Path(tmp).write_text(json.dumps(rec, ensure_ascii=False))

        atomic_write(p, write)

    def complete_many(
        self,
        requests: Sequence[JudgeRequest],
        progress: bool = False,
        on_result: Callable[[int, JudgeResponse], None] | None = None,
    ) -> list[JudgeResponse]:
        """Cached answers where present; the rest from the backend (then cached).

        Identical requests (same key) are sent once and share the answer.
        """
        keys = [self.key(r) for r in requests]
        out: list[JudgeResponse | None] = [self.get(r) for r in requests]
        self.hits += sum(r is not None for r in out)
        groups: dict[str, list[int]] = {}
        for k, r in enumerate(out):
            if r is None:
                groups.setdefault(keys[k], []).append(k)
        uniq = [idx[0] for idx in groups.values()]
        if uniq:
            # answers are cached as they arrive: a run stopped midway keeps what it got
            def store(j: int, resp: JudgeResponse) -> None:
                first = uniq[j]
                self.put(requests[first], resp)
                for k in groups[keys[first]]:
                    out[k] = resp
                    if on_result is not None:
                        on_result(k, resp)

            self.backend.complete_many(
                [requests[k] for k in uniq], progress=progress, on_result=store
            )
        return [r for r in out if r is not None]
