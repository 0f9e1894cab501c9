"""The request bodies of ``/v1`` (pydantic: validation, defaults and the hard caps on each field) and the
OpenAI-style message for a body that fails validation."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_TOKENS_LIMIT = 2048
DEFAULT_MAX_TOKENS = 128


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False  # server-sent events, as the OpenAI client expects
    stream_options: StreamOptions | None = None
    feedback: str | None = None  # ALT steering: the feedback to condition on
    revision_passes: int = Field(0, ge=0, le=5)  # Critique-and-Revise: revise the answer this many times
    guidance: float = Field(0.0, ge=0, le=10)  # feedback guidance γ (needs feedback); 0 = plain sampling
    negative_feedback: str | None = None  # f⁻ of guidance: a feedback text; null = the plain prompt



class CompletionRequest(BaseModel):
    """``POST /v1/completions`` as vLLM takes it: ``prompt`` is text, token ids, or a list of either.

    The prompt is used as given (no chat template, no conditioning: the caller — the studio's ``openai``
    sampling backend — built it with ``conditioning.build_input``). ``n`` samples per prompt, drawn with
    ``seed`` (reproducible); ``finish_reason`` is ``length`` when a sample stopped at ``max_tokens``.
    ``return_token_ids`` (vLLM's extra field) adds each choice's sampled ``token_ids``. ``logit_bias``
    bans tokens (``{"id": -100}``, e.g. Quark's control tokens); other biases are refused.
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[int] | list[str] | list[list[int]]
    logit_bias: dict[int, float] | None = None
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS_LIMIT)  # the OpenAI default
    seed: int | None = None
    stream: Literal[False] = False
    echo: Literal[False] = False
    return_token_ids: bool = False
    guidance: float = Field(0.0, ge=0, le=10)  # the studio's extra: feedback guidance γ (echoed in the response)
    negative_prompt: str | list[int] | list[str] | list[list[int]] | None = None  # per prompt, under f⁻

    def prompts(self) -> list[list[int] | str]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


def validation_message(e: ValidationError) -> tuple[str, str | None]:
    err = e.errors()[0]
    param = ".".join(str(p) for p in err.get("loc", ()))
    return f"{param}: {err.get('msg')}" if param else str(err.get("msg")), param or None
