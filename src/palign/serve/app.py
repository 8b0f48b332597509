"""The OpenAI-compatible HTTP API (FastAPI): one base model, many personalities.

>>> from palign.serve import create_app, serve_in_thread
>>> app = create_app("smollm2", adapters=["adapters/"])       # folders of PAS adapters
>>> with serve_in_thread(app) as base_url:                      # http://127.0.0.1:PORT/v1
...     client = openai.OpenAI(base_url=base_url, api_key="none")
...     client.chat.completions.create(model="smollm2:alice", messages=[...])

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
``POST /v1/personalities``, ``GET|DELETE /v1/personalities/{name}``
(:mod:`palign.serve.personalities`), ``GET /health``, and vLLM's ``GET /version``,
``POST /tokenize``, ``POST /detokenize``, ``GET /metrics`` (:mod:`palign.serve.extras`).
Errors use the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from palign.chat import chat_ids
from palign.errors import PalignError
from palign.models.loading import LoadedModel, load_model
from palign.serve.engine import (
    Completion,
    Engine,
    Event,
    Overloaded,
    SamplingParams,
    TokenInfo,
    TooLarge,
)
from palign.serve.extras import register_extra_routes
from palign.serve.guard import Guard
from palign.serve.metrics import ServeMetrics
from palign.serve.personalities import register_personality_routes
from palign.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    error_body,
)
from palign.serve.registry import Personality, Registry

__all__ = ["PalignServer", "ServeConfig", "create_app"]


@dataclass
class ServeConfig:
    """Server options.

    Attributes:
        served_model_name: name of the base model in the API (default: the model spec, or
            the folder name for a path); personalities are ``<name>:<person>``.
        api_key: when set, every ``/v1`` request needs ``Authorization: Bearer <key>``.
        max_batch: most sequences decoded together.
        max_queue: most sequences waiting for a slot; beyond that requests get 503 (a
            request with more sequences than ``max_batch + max_queue`` gets 400: it never fits).
        max_body_bytes: larger request bodies get 413.
        default_max_tokens: chat ``max_tokens`` when the request gives none.
        upload_dir: where uploaded/aligned adapters are stored (default: a temporary folder
            removed at shutdown). ``DELETE`` removes files only there.
        data: PAPI data folder for aligning uploaded answers (default: ``$PALIGN_DATA``).
        force: accept adapters recorded for another id/revision of the same model shape.
        threads: torch threads of the engine (None: torch's default).
    """

    served_model_name: str | None = None
    api_key: str | None = None
    max_batch: int = 32
    max_queue: int = 256
    max_body_bytes: int = 16 * 1024 * 1024
    default_max_tokens: int = 512
    upload_dir: str | Path | None = None
    data: str | Path | None = None
    force: bool = False
    threads: int | None = None


def _base_name(lm: LoadedModel) -> str:
    spec = lm.spec
    p = Path(spec)
    if p.exists() or spec.startswith((".", "/", "~")):
        return p.stem if p.suffix == ".gguf" else (p.name or spec)
    return spec


class PalignServer:
    """The state behind the app: model, registry, engine, options (``app.state.palign``)."""

    def __init__(self, lm: LoadedModel, config: ServeConfig) -> None:
        self.lm = lm
        self.config = config
        self.base = config.served_model_name or _base_name(lm)
        if ":" in self.base:
            raise PalignError(f"served model name {self.base!r} must not contain ':'")
        self.registry = Registry(lm, force=config.force)
        self.engine = Engine(
            lm, max_batch=config.max_batch, max_queue=config.max_queue, threads=config.threads
        )
        self.metrics = ServeMetrics(self.engine, self.registry)
        self._own_upload = config.upload_dir is None
        self.upload_dir = Path(
            config.upload_dir or tempfile.mkdtemp(prefix="palign-serve-")
        ).resolve()
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.created = int(time.time())

    def close(self) -> None:
        """Stop the engine and remove the temporary upload folder."""
        self.engine.stop()
        if self._own_upload:
            shutil.rmtree(self.upload_dir, ignore_errors=True)

    # --- naming --------------------------------------------------------------------------
    def resolve(self, model: str) -> Personality | None:
        """The personality named by ``model`` (``<base>:<name>`` or ``<name>``), None = base."""
        if model == self.base:
            return None
        name = model[len(self.base) + 1 :] if model.startswith(self.base + ":") else model
        p = self.registry.get(name)
        if p is None:
            raise APIError(
                404,
                f"The model `{model}` does not exist; GET /v1/models lists the served models "
                f"(`{self.base}` and `{self.base}:<person>`)",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )
        return p

    def model_card(self, p: Personality | None) -> dict[str, Any]:
        """One entry of ``GET /v1/models`` (with vLLM's ``max_model_len``)."""
        if p is None:
            return {
                "id": self.base,
                "object": "model",
                "created": self.created,
                "owned_by": "palign",
                "root": self.lm.model_id,
                "parent": None,
                "max_model_len": self.engine.max_context,
            }
        return {
            "id": f"{self.base}:{p.name}",
            "object": "model",
            "created": p.created,
            "owned_by": "palign",
            "root": self.lm.model_id,
            "parent": self.base,
            "max_model_len": self.engine.max_context,
            "palign": p.info(),
        }

    def chat_prompt(
        self,
        p: Personality | None,
        messages: Sequence[ChatMessage],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> list[int]:
        """Prompt ids of a chat for personality ``p`` (its system prompt when none is given)."""
        msgs = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in messages
        ]
        if p is not None and p.system_prompt and (not msgs or msgs[0]["role"] != "system"):
            msgs.insert(0, {"role": "system", "content": p.system_prompt})
        return chat_ids(
            self.lm,
            msgs,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
        )


# --- helpers ---------------------------------------------------------------------------------
def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def _chat_logprobs(tokens: Sequence[TokenInfo] | None) -> dict[str, Any] | None:
    if tokens is None:
        return None
    return {
        "content": [
            {
                "token": t.text,
                "logprob": t.logprob,
                "bytes": _bytes(t.text),
                "top_logprobs": [
                    {"token": s, "logprob": lp, "bytes": _bytes(s)} for _, s, lp in t.top
                ],
            }
            for t in tokens
        ],
        "refusal": None,
    }


def _top_with_chosen(t: TokenInfo) -> dict[str, float]:
    """The top alternatives plus the chosen token (up to k + 1 entries, as OpenAI/vLLM)."""
    top = {s: lp for _, s, lp in t.top}
    if t.logprob is not None:
        top.setdefault(t.text, t.logprob)
    return top


def _text_logprobs(tokens: Sequence[TokenInfo], k: int, base_offset: int = 0) -> dict[str, Any]:
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [
            (_top_with_chosen(t) if (k and t.logprob is not None) else None) for t in tokens
        ],
        "text_offset": [base_offset + t.offset for t in tokens],
    }


def _params(
    req: ChatCompletionRequest | CompletionRequest, max_tokens: int, **kw: Any
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else float(req.temperature),
        top_p=1.0 if req.top_p is None else float(req.top_p),
        stop=tuple(req.stop_list()),
        seed=req.seed,
        top_k=max(0, req.top_k or 0),
        min_p=req.min_p or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
        **kw,
    )


class _Run:
    """One request's sequences in the engine and the queue their events arrive on."""

    def __init__(self, server: PalignServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.handles: list[Any] = []

    def sink(self, ev: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)

    def submit(self, prompts: list[list[int]], params: SamplingParams, **kw: Any) -> None:
        try:
            self.handles = self.server.engine.submit(prompts, params, self.sink, **kw)
        except Overloaded as e:
            raise APIError(
                503, f"server overloaded: {e}", type="server_error", code="overloaded"
            ) from None
        except TooLarge as e:
            raise APIError(400, str(e), param="n", code="too_many_sequences") from None
        except PalignError as e:
            code = "context_length_exceeded" if "context" in str(e) else None
            raise APIError(400, str(e), param="messages", code=code) from None

    def cancel(self) -> None:
        self.server.engine.cancel(self.handles)

    async def collect(self, request: Request) -> list[Completion]:
        """Wait for every sequence; a client that went away cancels them."""
        done: dict[int, Completion] = {}
        try:
            while len(done) < len(self.handles):
                try:
                    ev = await asyncio.wait_for(self.queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        self.cancel()
                        raise APIError(499, "client disconnected", type="server_error") from None
                    continue
                if ev.kind == "error":
                    self.cancel()
                    raise APIError(500, f"generation failed: {ev.message}", type="server_error")
                if ev.kind == "done" and ev.completion is not None:
                    done[ev.index] = ev.completion
        except asyncio.CancelledError:
            self.cancel()
            raise
        return [done[k] for k in sorted(done)]


def _usage(prompt_tokens: int, comps: Sequence[Completion]) -> dict[str, int]:
    c = sum(len(x.token_ids) for x in comps)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": c,
        "total_tokens": prompt_tokens + c,
    }


# --- the app ---------------------------------------------------------------------------------
def create_app(
    model: LoadedModel | str = "smollm2",
    adapters: Sequence[str | Path] = (),
    config: ServeConfig | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    load_in_4bit: bool = False,
) -> FastAPI:
    """The FastAPI app serving ``model`` and the PAS adapters in ``adapters``.

    Args:
        model: a loaded model, or a spec for :func:`palign.models.loading.load_model`.
        adapters: adapter folders, or folders of adapter folders (each named by its folder).
        config: server options (:class:`ServeConfig`).
        device: device when loading ``model`` from a spec.
        dtype: dtype when loading ``model`` from a spec.
        load_in_4bit: 4-bit weights when loading ``model`` from a spec (CUDA, bitsandbytes).

    The engine thread starts with the app (its lifespan) and stops with it. Run it with
    uvicorn (``palign serve``) or :func:`palign.serve.testing.serve_in_thread`.
    """
    config = config or ServeConfig()
    lm = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, device=device, dtype=dtype, load_in_4bit=load_in_4bit)
    )
    server = PalignServer(lm, config)
    for path in adapters:
        for p in server.registry.load_dir(path):
            if p.name == server.base:
                raise PalignError(
                    f"adapter folder {p.path} is named like the base model {server.base!r}; "
                    "rename the folder (personalities are served as <base>:<folder name>)"
                )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.engine.start()
        try:
            yield
        finally:
            server.close()

    app = FastAPI(title="palign serve", version="1", lifespan=lifespan)
    app.state.palign = server

    # --- errors ----------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = str(first.get("msg", "invalid request"))
        text = f"{param}: {msg}" if param else msg
        if first.get("type") == "extra_forbidden":
            text = (
                f"{param}: unknown or unsupported field; palign serve does not implement it "
                "(omit it; docs/serving.md lists the supported fields)"
            )
        elif first.get("type") == "json_invalid":
            why = str((first.get("ctx") or {}).get("error") or "").strip()
            text = "the request body is not valid JSON" + (f": {why}" if why else "")
            param = None
        return JSONResponse(
            error_body(text, "invalid_request_error", param, "invalid_value"), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _other(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
            status_code=500,
        )

    # --- guard: api key and body size (plain ASGI: keeps disconnect detection intact) ------
    app.add_middleware(Guard, config=config)

    # --- routes ----------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **server.engine.load, "personalities": len(server.registry)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        cards = [server.model_card(None)] + [server.model_card(p) for p in server.registry.items()]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model:path}")
    async def one_model(model: str) -> dict[str, Any]:
        return server.model_card(server.resolve(model))

    def _steering(
        req: ChatCompletionRequest | CompletionRequest, p: Personality | None
    ) -> dict[str, Any]:
        if p is None:
            if req.alpha is not None:
                raise APIError(
                    400,
                    f"alpha applies to a personality; use model `{server.base}:<person>`",
                    param="alpha",
                )
            return {"u": None, "position": req.steer_position or "all"}
        if p.lora is not None:
            if req.alpha is not None or req.steer_position is not None:
                raise APIError(
                    400,
                    f"alpha and steer_position apply to PAS personalities; {p.name} is a LoRA "
                    "adapter",
                    param="alpha" if req.alpha is not None else "steer_position",
                )
            return {"u": None, "position": "all", "lora": p.lora}
        return {"u": p.u(req.alpha), "position": req.steer_position or p.position}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        body.unsupported()
        p = server.resolve(body.model)
        ids = server.chat_prompt(
            p,
            body.messages,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
        )
        room = server.engine.max_context - len(ids)
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:
            max_tokens = max(1, min(config.default_max_tokens, room))
        params = _params(
            body, max_tokens, logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0
        )
        run = _Run(server)
        run.submit([ids], params, n=body.n, stream=body.stream, **_steering(body, p))
        pname = p.name if p is not None else None
        server.metrics.request("chat", pname)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(
            index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
        ) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [
                    {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
                ],
            }

        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))

            async def events() -> AsyncIterator[str]:
                comps: list[Completion] = []
                try:
                    for i in range(len(run.handles)):
                        yield _sse(chunk(i, {"role": "assistant", "content": ""}))
                    while len(comps) < len(run.handles):
                        ev = await run.queue.get()
                        if ev.kind == "delta":
                            lp = _chat_logprobs(ev.tokens) if body.logprobs else None
                            yield _sse(chunk(ev.index, {"content": ev.text}, logprobs=lp))
                        elif ev.kind == "done" and ev.completion is not None:
                            comps.append(ev.completion)
                            yield _sse(chunk(ev.index, {}, ev.completion.finish_reason))
                        elif ev.kind == "error":
                            yield _sse(
                                error_body(f"generation failed: {ev.message}", "server_error")
                            )
                            break
                    server.metrics.tokens(pname, len(ids), _usage(0, comps)["total_tokens"])
                    if include_usage:
                        yield _sse(
                            {
                                "id": rid,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": body.model,
                                "choices": [],
                                "usage": _usage(len(ids), comps),
                            }
                        )
                    yield "data: [DONE]\n\n"
                finally:
                    run.cancel()  # a client gone mid-stream frees its rows at once

            return StreamingResponse(events(), media_type="text/event-stream")

        comps = await run.collect(request)
        server.metrics.tokens(pname, len(ids), _usage(0, comps)["total_tokens"])
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": _chat_logprobs(c.tokens) if body.logprobs else None,
                    "finish_reason": c.finish_reason,
                }
                for c in comps
            ],
            "usage": _usage(len(ids), comps),
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        body.unsupported()
        p = server.resolve(body.model)
        tok = server.lm.tokenizer
        pr = body.prompt
        if isinstance(pr, str):
            prompts = [list(tok(pr).input_ids)]
        elif pr and all(isinstance(x, str) for x in pr):
            prompts = [list(tok(x).input_ids) for x in pr]  # type: ignore[arg-type]
        elif pr and all(isinstance(x, int) for x in pr):
            prompts = [list(pr)]  # type: ignore[arg-type]
        elif pr and all(isinstance(x, list) for x in pr):
            prompts = [list(x) for x in pr]  # type: ignore[arg-type, misc]
        else:
            raise APIError(400, "prompt must be a string, strings, or token ids", param="prompt")
        vocab = len(tok)
        if any(not q or any(not 0 <= t < vocab for t in q) for q in prompts):
            raise APIError(
                400, "prompt is empty or has token ids outside the vocabulary", param="prompt"
            )
        k = body.logprobs or 0
        params = _params(
            body,
            int(body.max_tokens if body.max_tokens is not None else 16),
            logprobs=body.logprobs is not None,
            top_logprobs=k,
            prompt_logprobs=body.echo and body.logprobs is not None,
        )
        run = _Run(server)
        run.submit(prompts, params, n=body.n, stream=body.stream, **_steering(body, p))
        pname = p.name if p is not None else None
        server.metrics.request("completions", pname)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        n = body.n
        prompt_texts = [tok.decode(q) for q in prompts]
        n_prompt = sum(len(q) for q in prompts)

        def choice(c: Completion) -> dict[str, Any]:
            ptext = prompt_texts[c.index // n] if body.echo else ""
            lp = None
            if body.logprobs is not None:
                toks = list(c.prompt_logprobs or []) if body.echo else []
                lp = _text_logprobs(toks, k)
                gen = _text_logprobs(c.tokens or [], k, base_offset=len(ptext))
                for key in lp:
                    lp[key] = lp[key] + gen[key]
            return {
                "index": c.index,
                "text": ptext + c.text,
                "logprobs": lp,
                "finish_reason": c.finish_reason,
            }

        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))

            def chunk(index: int, text: str, finish: str | None, lp: Any = None) -> dict[str, Any]:
                return {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": body.model,
                    "choices": [
                        {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
                    ],
                }

            async def events() -> AsyncIterator[str]:
                comps: list[Completion] = []
                try:
                    if body.echo:
                        for i in range(len(run.handles)):
                            yield _sse(chunk(i, prompt_texts[i // n], None))
                    while len(comps) < len(run.handles):
                        ev = await run.queue.get()
                        if ev.kind == "delta":
                            lp = (
                                _text_logprobs(ev.tokens or [], k)
                                if body.logprobs is not None
                                else None
                            )
                            yield _sse(chunk(ev.index, ev.text, None, lp))
                        elif ev.kind == "done" and ev.completion is not None:
                            comps.append(ev.completion)
                            yield _sse(chunk(ev.index, "", ev.completion.finish_reason))
                        elif ev.kind == "error":
                            yield _sse(
                                error_body(f"generation failed: {ev.message}", "server_error")
                            )
                            break
                    server.metrics.tokens(pname, n_prompt, _usage(0, comps)["total_tokens"])
                    if include_usage:
                        yield _sse(
                            {
                                "id": rid,
                                "object": "text_completion",
                                "created": created,
                                "model": body.model,
                                "choices": [],
                                "usage": _usage(n_prompt, comps),
                            }
                        )
                    yield "data: [DONE]\n\n"
                finally:
                    run.cancel()

            return StreamingResponse(events(), media_type="text/event-stream")

        comps = await run.collect(request)
        server.metrics.tokens(pname, n_prompt, _usage(0, comps)["total_tokens"])
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [choice(c) for c in comps],
            "usage": _usage(n_prompt, comps),
        }

    register_personality_routes(app, server)
    register_extra_routes(app, server)
    return app
