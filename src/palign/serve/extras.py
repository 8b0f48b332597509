"""vLLM's server routes beside the OpenAI API: ``/version``, ``/tokenize``, ``/detokenize``
and ``/metrics`` (Prometheus).

``POST /tokenize`` takes vLLM's two forms: ``{"model", "prompt", "add_special_tokens"}``
(completions) or ``{"model", "messages", "add_generation_prompt", "continue_final_message"}``
(chat: the ids the chat route would feed, the personality's default system prompt included)
and answers ``{"count", "max_model_len", "tokens", "token_strs"}``. ``POST /detokenize``
takes ``{"model", "tokens"}`` and answers ``{"prompt"}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import Field

from palign import __version__
from palign.serve.protocol import APIError, ChatMessage, _Strict

__all__ = ["DetokenizeRequest", "TokenizeRequest", "register_extra_routes"]


class TokenizeRequest(_Strict):
    """``POST /tokenize`` (vLLM's completion or chat form)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False


class DetokenizeRequest(_Strict):
    """``POST /detokenize``."""

    model: str | None = None
    tokens: list[int] = Field(min_length=0)


def register_extra_routes(app: FastAPI, server: Any) -> None:
    """Add ``/version``, ``/tokenize``, ``/detokenize`` and ``/metrics`` for ``server``."""
    tok = server.lm.tokenizer

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt or messages", param="prompt")
        if body.prompt is not None:
            special = True if body.add_special_tokens is None else body.add_special_tokens
            ids = list(tok(body.prompt, add_special_tokens=special).input_ids)
        else:
            p = server.resolve(body.model) if body.model else None
            ids = server.chat_prompt(
                p,
                body.messages or [],
                add_generation_prompt=body.add_generation_prompt,
                continue_final_message=body.continue_final_message,
            )
        return {
            "count": len(ids),
            "max_model_len": server.engine.max_context,
            "tokens": ids,
            "token_strs": tok.convert_ids_to_tokens(ids) if body.return_token_strs else None,
        }

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, str]:
        vocab = len(tok)
        if any(not 0 <= t < vocab for t in body.tokens):
            raise APIError(400, f"token ids must be in 0..{vocab - 1}", param="tokens")
        return {"prompt": tok.decode(body.tokens)}

    @app.get("/metrics")
    async def metrics() -> Response:
        data, ctype = server.metrics.exposition()
        return Response(content=data, media_type=ctype)
