"""One role's OpenAI-compatible endpoint, with limits, retries and validated structured output.

Transport retries (429 honouring Retry-After, 5xx, timeouts, dropped connections; exponential
backoff with jitter) are the OpenAI client's own. This module adds what it lacks: per-role
concurrency and request/token rate limits, validation of structured answers with a bounded number
of re-asks, ``n`` independent samples, token accounting, and turning every final failure into an
:class:`LLMRejection` whose reason a stage records on the rejected row.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
import openai
from aiolimiter import AsyncLimiter
from openai.types import Completion
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from infinisynth.llm.roles import RoleConfig
from infinisynth.llm.structured import InvalidAnswer, parse_answer, response_format, with_schema_instruction
from infinisynth.llm.usage import UsageMeter

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")  # the response type a request is parsed into

MAX_DETAIL_CHARS = 500
MAX_RAW_CHARS = 20_000


class LLMRejection(Exception):
    """A call that could not produce a usable answer within its bounds.

    ``reason`` is a short code for the rejected table (rate_limited, server_error, timeout,
    connection_error, request_rejected, invalid_output); ``detail`` explains it; ``raw_answer``
    keeps the model's last answer, if there was one, for inspection.
    """

    def __init__(self, reason: str, detail: str, raw_answer: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.raw_answer = raw_answer


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


class LLMClient:
    """Use as ``async with LLMClient(config, usage) as client:`` inside one event loop."""

    def __init__(self, config: RoleConfig, usage: UsageMeter | None = None):
        self.config = config
        self.usage = usage if usage is not None else UsageMeter()
        self._openai: openai.AsyncOpenAI | None = None
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._requests = AsyncLimiter(config.requests_per_minute, 60) if config.requests_per_minute else None
        self._tokens = AsyncLimiter(config.tokens_per_minute, 60) if config.tokens_per_minute else None

    @property
    def role(self) -> str:
        return self.config.role

    async def __aenter__(self) -> LLMClient:
        limits = httpx2.Limits(
            max_connections=self.config.max_concurrency,
            max_keepalive_connections=self.config.max_concurrency,
        )
        self._openai = openai.AsyncOpenAI(
            base_url=self.config.base_url,
            api_key=self.config.api_key.get_secret_value(),
            max_retries=self.config.max_retries,
            timeout=self.config.timeout_s,
            http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=self.config.timeout_s),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._openai is not None:
            await self._openai.close()
            self._openai = None

    # -- plain chat ----------------------------------------------------------------------------

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        stage: str,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ChatAnswer:
        """One chat completion; transport failures end as :class:`LLMRejection`."""
        if self._openai is None:
            raise RuntimeError("LLMClient must be used inside 'async with'")
        max_tokens = max_tokens or self.config.max_tokens
        await self._throttle(messages, max_tokens)
        request: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature if temperature is None else temperature,
            "max_tokens": max_tokens,
        }
        seed = self.config.seed if seed is None else seed
        if seed is not None:
            request["seed"] = seed
        if extra:
            request.update(extra)
        response = await self._post("/chat/completions", request, ChatCompletion, stage)
        try:
            usage = response.usage
            prompt_tokens = (usage.prompt_tokens or 0) if usage else 0
            completion_tokens = (usage.completion_tokens or 0) if usage else 0
            choice = response.choices[0] if response.choices else None
            text = (choice.message.content or "") if choice is not None else ""
            finish_reason = choice.finish_reason if choice is not None else None
        except (AttributeError, TypeError, KeyError, IndexError):
            # JSON, but not a chat completion (a list, null, choices that are not objects).
            self.usage.record(self.role, stage, failed=True)
            raise LLMRejection(
                "invalid_output", f"HTTP 200 from {self.config.base_url} with a body that is not a chat completion"
            ) from None
        self.usage.record(self.role, stage, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if choice is None:
            raise LLMRejection("invalid_output", "the endpoint answered with no choices")
        return ChatAnswer(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    async def _post(self, path: str, request: dict[str, Any], cast_to: type[R], stage: str) -> R:
        """One request through the OpenAI client (its retries, its parsing) within the role's slots."""
        assert self._openai is not None
        async with self._slots:
            try:
                # The client's generic post() keeps its retries and response parsing but skips the
                # recursive transform of typed params: about a fifth of its CPU per request, and
                # we build the body ourselves anyway.
                return await self._openai.post(path, body=request, cast_to=cast_to)
            except openai.APIError as exc:
                self.usage.record(self.role, stage, failed=True)
                raise self._rejection_for(exc) from None
            except json.JSONDecodeError as exc:
                # An HTTP 200 whose body is not JSON (a proxy's HTML page, a cut-off body): the OpenAI
                # client lets the decoder's error escape, which would fail the whole shard.
                self.usage.record(self.role, stage, failed=True)
                raise LLMRejection(
                    "invalid_output",
                    self._redact(f"HTTP 200 from {self.config.base_url} with a body that is not JSON ({exc.msg})"),
                    raw_answer=self._redact(exc.doc[:MAX_RAW_CHARS]),
                ) from None

    # -- legacy completions (prompt log-probabilities) --------------------------------------------

    async def completion(
        self,
        prompt: str,
        *,
        stage: str,
        max_tokens: int = 1,
        temperature: float = 0.0,
        extra: dict[str, Any] | None = None,
    ) -> Completion:
        """One ``/completions`` request (e.g. ``echo`` + ``logprobs`` to score a text with a base
        model); transport failures end as :class:`LLMRejection` like :meth:`chat`."""
        if self._openai is None:
            raise RuntimeError("LLMClient must be used inside 'async with'")
        await self._throttle([{"content": prompt}], max_tokens)
        request: dict[str, Any] = {"model": self.config.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
        if extra:
            request.update(extra)
        response = await self._post("/completions", request, Completion, stage)
        usage = getattr(response, "usage", None)
        self.usage.record(
            self.role, stage,
            prompt_tokens=(getattr(usage, "prompt_tokens", 0) or 0) if usage else 0,
            completion_tokens=(getattr(usage, "completion_tokens", 0) or 0) if usage else 0,
        )  # fmt: skip
        return response

    # -- structured ----------------------------------------------------------------------------

    async def structured(
        self,
        messages: list[dict[str, str]],
        schema: type[T],
        *,
        stage: str,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> T:
        """An answer validated against ``schema``; asked again on invalid answers, then rejected."""
        mode = self.config.structured_output
        prompt = messages if mode == "json_schema" else with_schema_instruction(messages, schema)
        fmt = response_format(mode, schema)
        conversation = list(prompt)
        raw = None
        problem = ""
        for attempt in range(self.config.max_invalid_retries + 1):
            answer = await self.chat(
                conversation,
                stage=stage,
                temperature=temperature,
                max_tokens=max_tokens,
                seed=seed,
                extra={"response_format": fmt} if fmt else None,
            )
            raw = answer.text
            try:
                return parse_answer(raw, schema)
            except InvalidAnswer as exc:
                problem = str(exc)
                if answer.finish_reason == "length":
                    problem += " (the answer was cut off at max_tokens)"
                log.debug("%s/%s: invalid answer on attempt %d: %s", self.role, stage, attempt + 1, problem)
                # Show the model its own answer and what was wrong: cheap models fix it more often.
                conversation = [
                    *prompt,
                    {"role": "assistant", "content": raw[:MAX_RAW_CHARS]},
                    {"role": "user", "content": f"That answer was invalid: {problem}. Reply again with only the corrected JSON object."},
                ]
        raise LLMRejection(
            "invalid_output",
            self._redact(f"no valid {schema.__name__} after {self.config.max_invalid_retries + 1} answers; last: {problem}"),
            raw_answer=self._redact(raw[:MAX_RAW_CHARS]) if raw is not None else None,
        )

    async def structured_samples(
        self,
        messages: list[dict[str, str]],
        schema: type[T],
        *,
        stage: str,
        n: int,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> list[T | LLMRejection]:
        """``n`` independent samples (separate requests, so every endpoint supports it).

        Each sample either validates or is an :class:`LLMRejection`; the caller decides what a
        partial set means (quality scoring averages what it has or rejects the row).
        """
        base_seed = self.config.seed

        async def one(i: int) -> T | LLMRejection:
            seed = None if base_seed is None else base_seed + i
            try:
                return await self.structured(messages, schema, stage=stage, temperature=temperature, max_tokens=max_tokens, seed=seed)
            except LLMRejection as rejection:
                return rejection

        return list(await asyncio.gather(*(one(i) for i in range(n))))

    # -- internals -----------------------------------------------------------------------------

    async def _throttle(self, messages: list[dict[str, str]], max_tokens: int) -> None:
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None:
            # A cheap upper-bound estimate: about 4 characters per token plus the full budget.
            estimate = sum(len(m["content"]) for m in messages) // 4 + max_tokens
            await self._tokens.acquire(min(estimate, self._tokens.max_rate))

    def _rejection_for(self, exc: openai.APIError) -> LLMRejection:
        attempts = self.config.max_retries + 1
        if isinstance(exc, openai.APITimeoutError):
            reason, what = "timeout", f"no answer within {self.config.timeout_s:g}s"
        elif isinstance(exc, openai.APIConnectionError):
            reason, what = "connection_error", "connection failed or dropped"
        elif isinstance(exc, openai.RateLimitError):
            reason, what = "rate_limited", "HTTP 429"
        elif isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
            reason, what = "server_error", f"HTTP {exc.status_code}"
        elif isinstance(exc, openai.APIStatusError):
            reason, what = "request_rejected", f"HTTP {exc.status_code}"
        else:
            reason, what = "api_error", type(exc).__name__
        retried = reason in {"timeout", "connection_error", "rate_limited", "server_error"}
        detail = f"{what} from {self.config.base_url}" + (f" after {attempts} attempts" if retried else "")
        message = getattr(exc, "message", "") or ""
        if message and reason not in {"timeout", "connection_error"}:
            detail += f": {message[:MAX_DETAIL_CHARS]}"
        return LLMRejection(reason, self._redact(detail))

    def _redact(self, text: str) -> str:
        secret = self.config.api_key.get_secret_value()
        return text.replace(secret, "***") if secret and len(secret) >= 4 else text
