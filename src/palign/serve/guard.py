"""Request guard of ``palign serve``: API key and request size, before any route runs."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi.responses import JSONResponse

from palign.serve.protocol import error_body

__all__ = ["Guard"]


class Guard:
    """ASGI middleware: bearer key on ``/v1`` (401) and the request size limit (413).

    Bodies with a ``Content-Length`` above the limit are refused before they are read; chunked
    bodies (no length) are read here up to the limit and replayed to the app.

    Args:
        app: the ASGI app.
        config: the server options (``api_key``, ``max_body_bytes``).
    """

    def __init__(self, app: Any, config: Any) -> None:
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
            if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
                return self._too_large(length)
        return None

    def _too_large(self, length: str) -> JSONResponse:
        return JSONResponse(
            error_body(
                f"request body of {length} bytes exceeds the limit of "
                f"{self.config.max_body_bytes} bytes; send less (or raise --max-body-mb)",
                "invalid_request_error",
                code="payload_too_large",
            ),
            status_code=413,
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            if scope["method"] in ("POST", "PUT", "PATCH") and not any(
                k.lower() == b"content-length" for k, _ in scope["headers"]
            ):
                # a chunked body: read it here (up to the limit), then replay it to the app
                chunks, size = [], 0
                while True:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        return  # the client went away
                    size += len(msg.get("body", b""))
                    if size > self.config.max_body_bytes:
                        await self._too_large(f"more than {size}")(scope, receive, send)
                        return
                    chunks.append(msg.get("body", b""))
                    if not msg.get("more_body", False):
                        break
                body, replayed = b"".join(chunks), False

                async def replay() -> dict[str, Any]:
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()  # then disconnects, as the server reports them

                await self.app(scope, replay, send)
                return
        await self.app(scope, receive, send)
