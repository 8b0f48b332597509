"""Request and response shapes of the OpenAI-compatible API, and the OpenAI error shape.

Only the fields palign implements are modelled; any other field is refused with a 400 naming
it (never silently ignored: a client that asks for a sampling option gets it or an error).
Fields palign models but cannot honour (``tools``, non-zero presence/frequency penalties,
``logit_bias``, ``best_of`` > n) are refused with a 400 naming the field too.

Extra body fields (``extra_body=`` in the ``openai`` client): vLLM's sampling extras
``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``, ``ignore_eos`` (both routes),
``add_generation_prompt`` and ``continue_final_message`` (chat), with vLLM's meaning; and
palign's ``alpha`` (steering strength, default: the adapter's fitted alpha) and
``steer_position`` (``"all"`` or ``"last"``; default: the adapter's recorded one).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "APIError",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "PersonalityRequest",
    "error_body",
]

MAX_N = 16
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20


class APIError(Exception):
    """An error answered in the OpenAI shape with an HTTP status.

    Args:
        status: HTTP status (400 bad parameter, 401 key, 404 unknown model, 409 conflict,
            413 payload too large, 503 overloaded).
        message: one line naming the problem and the fix.
        type: OpenAI error type (``invalid_request_error``, ``authentication_error``,
            ``not_found_error``, ``server_error``...).
        param: the offending request field, if any.
        code: a short machine code (``model_not_found``, ``context_length_exceeded``...).
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body ``{"error": {...}}``."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as the OpenAI API answers."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Strict(BaseModel):
    """A request body: unknown fields are refused (400 naming the field)."""

    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Base):
    """One chat message; ``content`` as a string or a list of ``{"type": "text"}`` parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message text (text parts joined; other part types are rejected)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(
                    400,
                    f"message content part of type {part.get('type')!r} is not supported; "
                    "send text parts only",
                    param="messages",
                )
            out.append(part["text"])
        return "".join(out)


class _Sampling(_Strict):
    """Fields shared by chat and text completions."""

    model: str
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # accepted and without effect: palign stores nothing, has one service tier and no tools
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    # vLLM's sampling extras
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    # palign extras
    alpha: float | None = None
    steer_position: Literal["all", "last"] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    def stop_list(self) -> list[str]:
        """``stop`` as a list."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def unsupported(self) -> None:
        """Reject fields palign cannot honour (400 naming the field)."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise APIError(400, f"{name} is not supported by palign serve; omit it", param=name)
        if self.logit_bias:
            raise APIError(
                400, "logit_bias is not supported by palign serve; omit it", param="logit_bias"
            )
        if self.alpha is not None and not (-1e4 < self.alpha < 1e4):
            raise APIError(400, "alpha must be a finite number of moderate size", param="alpha")
        if self.stream_options is not None and not self.stream:
            raise APIError(
                400, "stream_options is only allowed with stream: true", param="stream_options"
            )
        mt = getattr(self, "max_completion_tokens", None) or getattr(self, "max_tokens", None)
        if mt is not None and self.min_tokens > mt:
            raise APIError(
                400,
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({mt})",
                param="min_tokens",
            )


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Any] | None = None
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    # vLLM's chat extras
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    def unsupported(self) -> None:  # noqa: D102
        super().unsupported()
        if self.tools:
            raise APIError(400, "tools are not supported by palign serve; omit them", param="tools")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise APIError(
                400, "only response_format type 'text' is supported", param="response_format"
            )
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if self.continue_final_message:
            if self.add_generation_prompt:
                raise APIError(
                    400,
                    "continue_final_message needs add_generation_prompt: false (as vLLM)",
                    param="continue_final_message",
                )
            if self.messages[-1].role != "assistant":
                raise APIError(
                    400,
                    "continue_final_message needs an assistant message last",
                    param="continue_final_message",
                )


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (``prompt`` as text, list of texts, or token ids)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> None:  # noqa: D102
        super().unsupported()
        if self.best_of is not None and self.best_of != self.n:
            raise APIError(
                400, "best_of is not supported by palign serve; omit it", param="best_of"
            )
        if self.suffix:
            raise APIError(400, "suffix is not supported by palign serve; omit it", param="suffix")
        if self.max_tokens == 0 and not self.echo:
            raise APIError(
                400, "max_tokens 0 needs echo: true (prompt scoring)", param="max_tokens"
            )


class PersonalityRequest(_Strict):
    """``POST /v1/personalities``: register an adapter (files as base64) or align answers.

    Exactly one of ``files`` (``{"adapter_config.json": b64, "adapter.safetensors": b64}``,
    a PAS adapter folder's files; or a PEFT LoRA folder's ``adapter_config.json`` +
    ``adapter_model.safetensors``) or ``answers`` (``{item id: 1..5}``, a palign answers
    file's content, aligned on the fly with PAS on the served base model).
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    files: dict[str, str] | None = None
    answers: dict[str, int] | None = None
    inventory: Literal["ipip-neo", "sd3"] = "ipip-neo"
    semantics: Literal["agreement", "paper"] = "agreement"
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)
    replace: bool = False
