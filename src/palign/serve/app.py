"""The OpenAI-compatible HTTP API (FastAPI): one base model, many personalities.

>>> from palign.serve import create_app, serve_in_thread
>>> app = create_app("smollm2", adapters=["adapters/"])       # folders of PAS adapters
>>> with serve_in_thread(app) as base_url:                      # http://127.0.0.1:PORT/v1
...     client = openai.OpenAI(base_url=base_url, api_key="none")
...     client.chat.completions.create(model="smollm2:alice", messages=[...])

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
``POST /v1/personalities``, ``DELETE /v1/personalities/{name}``, ``GET /health``.
Errors use the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
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
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from palign.chat import chat_ids
from palign.errors import PalignError
from palign.models.loading import LoadedModel, load_model
from palign.serve.engine import Completion, Engine, Event, Overloaded, SamplingParams, TokenInfo
from palign.serve.lora import LORA_WEIGHTS
from palign.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    PersonalityRequest,
    error_body,
)
from palign.serve.registry import Personality, Registry, adapter_kind
from palign.steering.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS

__all__ = ["PalignServer", "ServeConfig", "create_app"]


@dataclass
class ServeConfig:
    """Server options.

    Attributes:
        served_model_name: name of the base model in the API (default: the model spec, or
            the folder name for a path); personalities are ``<name>:<person>``.
        api_key: when set, every ``/v1`` request needs ``Authorization: Bearer <key>``.
        max_batch: most sequences decoded together.
        max_queue: most sequences waiting for a slot; beyond that requests get 503.
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
        """One entry of ``GET /v1/models``."""
        if p is None:
            return {
                "id": self.base,
                "object": "model",
                "created": self.created,
                "owned_by": "palign",
                "root": self.lm.model_id,
                "parent": None,
            }
        return {
            "id": f"{self.base}:{p.name}",
            "object": "model",
            "created": p.created,
            "owned_by": "palign",
            "root": self.lm.model_id,
            "parent": self.base,
            "palign": p.info(),
        }


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


def _text_logprobs(tokens: Sequence[TokenInfo], k: int, base_offset: int = 0) -> dict[str, Any]:
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [
            ({s: lp for _, s, lp in t.top} if (k and t.logprob is not None) else None)
            for t in tokens
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


class _Guard:
    """ASGI middleware: bearer key on ``/v1`` (401) and the request size limit (413/411)."""

    def __init__(self, app: Any, config: ServeConfig) -> None:
        self.app = app
        self.config = config

    def _refusal(self, scope: dict[str, Any]) -> JSONResponse | None:
        config = self.config
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if config.api_key and scope["path"].startswith("/v1"):
            auth = headers.get("authorization", "")
            if not hmac.compare_digest(auth.encode(), f"Bearer {config.api_key}".encode()):
                return JSONResponse(
                    error_body(
                        "missing or wrong API key; send Authorization: Bearer <key>",
                        "authentication_error",
                        code="invalid_api_key",
                    ),
                    status_code=401,
                )
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is None:
                if headers.get("transfer-encoding"):
                    return JSONResponse(
                        error_body(
                            "send a Content-Length header (no chunked bodies)",
                            "invalid_request_error",
                        ),
                        status_code=411,
                    )
            elif not length.isdigit() or int(length) > config.max_body_bytes:
                return JSONResponse(
                    error_body(
                        f"request body of {length} bytes exceeds the limit of "
                        f"{config.max_body_bytes} bytes; send less (or raise --max-body-mb)",
                        "invalid_request_error",
                        code="payload_too_large",
                    ),
                    status_code=413,
                )
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
        server.registry.load_dir(path)

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
        if first.get("type") == "json_invalid":
            text = "the request body is not valid JSON"
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
    app.add_middleware(_Guard, config=config)

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
        msgs = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        if p is not None and p.system_prompt and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": p.system_prompt})
        ids = chat_ids(server.lm, msgs)
        room = server.engine.max_context - len(ids)
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:
            max_tokens = max(1, min(config.default_max_tokens, room))
        params = _params(
            body, max_tokens, logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0
        )
        run = _Run(server)
        run.submit([ids], params, n=body.n, stream=body.stream, **_steering(body, p))
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
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [choice(c) for c in comps],
            "usage": _usage(n_prompt, comps),
        }

    # --- personalities -----------------------------------------------------------------------
    @app.post("/v1/personalities", status_code=201)
    async def add_personality(body: PersonalityRequest) -> Any:
        if (body.files is None) == (body.answers is None):
            raise APIError(
                400, "give exactly one of files (a PAS adapter) or answers", param="files"
            )
        if server.registry.get(body.name) is not None and not body.replace:
            raise APIError(
                409,
                f"personality {body.name!r} exists; DELETE it first or send replace: true",
                param="name",
                code="exists",
            )
        final = server.upload_dir / body.name
        staging = Path(tempfile.mkdtemp(prefix=f".{body.name}.", dir=server.upload_dir))
        try:
            if body.files is not None:
                names = set(body.files)
                pas_files = {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
                lora_files = {ADAPTER_CONFIG, LORA_WEIGHTS}
                if names != pas_files and names - {"palign_train.json"} != lora_files:
                    raise APIError(
                        400,
                        f"files must be {sorted(pas_files)} (a PAS adapter) or "
                        f"{sorted(lora_files)} [+ palign_train.json] (a PEFT LoRA adapter), as "
                        f"base64; got {sorted(names)}",
                        param="files",
                    )
                for fname, b64 in body.files.items():
                    try:
                        data = base64.b64decode(b64, validate=True)
                    except (binascii.Error, ValueError):
                        raise APIError(
                            400, f"files[{fname!r}] is not valid base64", param="files"
                        ) from None
                    (staging / fname).write_bytes(data)
                kind = adapter_kind(staging)
                if (kind == "peft") != (LORA_WEIGHTS in names):
                    raise APIError(
                        400,
                        "adapter_config.json does not match the weights file (a PAS config "
                        "goes with adapter.safetensors, a PEFT config with "
                        "adapter_model.safetensors)",
                        param="files",
                    )
                await run_in_threadpool(server.registry.check, staging)
            else:
                from palign.serve.align import align_answers

                def fit() -> None:
                    with server.engine.model_lock:  # generation pauses while aligning
                        align_answers(
                            server.lm,
                            body.answers or {},
                            staging,
                            inventory=body.inventory,
                            semantics=body.semantics,
                            seed=body.seed,
                            options=body.options,
                            data=server.config.data,
                        )

                await run_in_threadpool(fit)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            p = server.registry.load(final, body.name, replace=True)
        except PalignError as e:
            raise APIError(400, str(e), param="files" if body.files else "answers") from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return server.model_card(p)

    @app.delete("/v1/personalities/{name}")
    async def delete_personality(name: str) -> Any:
        if name.startswith(server.base + ":"):
            name = name[len(server.base) + 1 :]
        p = server.registry.get(name)
        if p is None or not server.registry.remove(name):
            raise APIError(
                404,
                f"no personality {name!r}; GET /v1/models lists them",
                type="not_found_error",
                param="name",
                code="model_not_found",
            )
        path = p.path
        if path is not None and Path(path).resolve().parent == server.upload_dir:
            shutil.rmtree(path, ignore_errors=True)
        return {"id": f"{server.base}:{name}", "object": "model", "deleted": True}

    return app
