"""One role's OpenAI-compatible endpoint, with limits, retries and validated structured output.

Transport retries (429 honouring Retry-After, 5xx, timeouts, dropped connections; exponential
backoff with jitter) are the OpenAI client's own; an HTTP 200 whose body is not the response asked
for (not JSON, or JSON of another shape) is retried here the same way. This module adds what the
OpenAI client lacks: per-role concurrency and request/token rate limits that hold across every
process using the role, adaptive concurrency (:mod:`infinisynth.llm.limits`), validation of structured
answers with a bounded number of re-asks, ``n`` independent samples, token accounting, an optional
response cache (:mod:`infinisynth.llm.cache`), and turning every failure into an
:class:`LLMRejection` whose reason says whether the answer was judged (final) or the call did not
complete (transient; :mod:`infinisynth.llm.reasons`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2
import openai
from openai.types import Completion
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from infinisynth.llm.cache import ResponseCache, request_key
from infinisynth.llm.limits import RoleLimiter, limits_url, open_store
from infinisynth.llm.reasons import (
    API_ERROR,
    BROKEN_RESPONSE,
    CONNECTION_ERROR,
    ENDPOINT_REFUSED,
    INVALID_OUTPUT,
    RATE_LIMITED,
    REQUEST_REJECTED,
    SERVER_ERROR,
    TIMEOUT,
    is_transient,
)
from infinisynth.llm.roles import UNCACHED_ROLES, RoleConfig
from infinisynth.llm.structured import InvalidAnswer, parse_answer, response_format, with_schema_instruction
from infinisynth.llm.usage import UsageMeter

if TYPE_CHECKING:
    from infinisynth.llm.batch import BatchCollector

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")  # the response type a request is parsed into
A = TypeVar("A")  # what a caller reads from that response

MAX_DETAIL_CHARS = 500
MAX_RAW_CHARS = 20_000
# The OpenAI client's backoff, for the retries it does not do itself (broken HTTP 200 bodies).
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
# What reading a JSON body of the wrong shape raises (a list, null, choices that are not objects).
_WRONG_SHAPE = (AttributeError, TypeError, KeyError, IndexError)


class LLMRejection(Exception):
    """A call that could not produce a usable answer within its bounds.

    ``reason`` is a short code (:mod:`infinisynth.llm.reasons`): ``invalid_output`` and
    ``request_rejected`` are final (the answer, or the request, was judged); ``rate_limited``,
    ``server_error``, ``timeout``, ``connection_error``, ``broken_response``, ``endpoint_refused``
    and ``api_error`` are :attr:`transient` (the call did not complete after the client's own
    retries: the row is to be done again, never recorded as rejected). ``detail`` explains it;
    ``raw_answer`` keeps the model's last answer (or the broken body), if there was one.
    """

    def __init__(self, reason: str, detail: str, raw_answer: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.raw_answer = raw_answer

    @property
    def transient(self) -> bool:
        return is_transient(self.reason)


def first_failure(samples: Sequence[object]) -> LLMRejection:
    """What decides a row whose samples did not all come back: a transient failure if there is one
    (the row is then redone, not judged on fewer samples), else the first failure."""
    failures = [s for s in samples if isinstance(s, LLMRejection)]
    return next((f for f in failures if f.transient), failures[0])


class _BrokenBody(Exception):
    """An HTTP 200 whose body is not the response asked for (retried, then transient)."""


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


class LLMClient:
    """Use as ``async with LLMClient(config, usage, cache) as client:`` inside one event loop.

    With a :class:`ResponseCache`, every call looks its request up first (a hit costs no request,
    no rate-limit budget and no tokens) and stores the answers it accepts; a role in
    :data:`~infinisynth.llm.roles.UNCACHED_ROLES` (the model under diagnosis) never uses it.
    """

    def __init__(self, config: RoleConfig, usage: UsageMeter | None = None, cache: ResponseCache | None = None):
        self.config = config
        self.usage = usage if usage is not None else UsageMeter()
        self.cache = cache if config.role not in UNCACHED_ROLES else None
        self._openai: openai.AsyncOpenAI | None = None
        self.limiter: RoleLimiter | None = None  # the role's shared limits, while entered
        # Batch mode (llm/batch.py): set by the shard runner; consulted in _post before any request.
        self.collector: BatchCollector | None = None

    @property
    def concurrency_now(self) -> int:
        """The role's in-flight limit now: ``max_concurrency`` until overload lowers it (AIMD)."""
        return self.limiter.current if self.limiter is not None else self.config.max_concurrency

    @property
    def role(self) -> str:
        return self.config.role

    async def __aenter__(self) -> LLMClient:
        limits = httpx2.Limits(
            max_connections=self.config.max_concurrency,
            max_keepalive_connections=self.config.max_concurrency,
        )
        self.limiter = RoleLimiter(self.config, open_store(limits_url(self.config.limits_url)))
        self._openai = openai.AsyncOpenAI(
            base_url=self.config.base_url,
            api_key=self.config.api_key.get_secret_value(),
            max_retries=self.config.max_retries,
            timeout=self.config.timeout_s,
            http_client=_LimitedHttpClient(self.limiter, limits=limits, timeout=self.config.timeout_s),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._openai is not None:
            await self._openai.close()
            self._openai = None
        if self.limiter is not None:
            await self.limiter.aclose()
            await self.limiter.store.aclose()
            self.limiter = None
        if self.cache is not None:
            await self.cache.flush()  # every answer of this client is stored before it is gone

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
        """One chat completion (from the cache if it holds this request); failures end as
        :class:`LLMRejection`."""
        request = self._chat_request(messages, temperature, max_tokens, seed, extra)
        key = self._cache_key("chat", request)
        if key is not None:
            hit = await self._cached(key, stage)
            if hit is not None:
                try:
                    return ChatAnswer(**hit)
                except TypeError:
                    pass  # not a ChatAnswer (an older format): ask again
        answer = await self._send_chat(request, stage)
        if key is not None:
            self._store(key, asdict(answer))
        return answer

    def _chat_request(
        self,
        messages: list[dict[str, str]],
        temperature: float | None,
        max_tokens: int | None,
        seed: int | None,
        extra: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The request body as sent: it is also what the cache key is made of."""
        request: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature if temperature is None else temperature,
            "max_tokens": max_tokens or self.config.max_tokens,
        }
        seed = self.config.seed if seed is None else seed
        if seed is not None:
            request["seed"] = seed
        request.update(self.config.penalties())
        if extra:
            request.update(extra)
        return request

    async def _send_chat(self, request: dict[str, Any], stage: str) -> ChatAnswer:
        """One chat completion from the model: limits, the request, token accounting."""
        if self._openai is None:
            raise RuntimeError("LLMClient must be used inside 'async with'")
        await self._throttle(request["messages"], request["max_tokens"])
        answer = await self._post("/chat/completions", request, ChatCompletion, stage, _read_chat, "a chat completion")
        self.usage.record(self.role, stage, prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens)
        return answer

    async def _post(self, path: str, request: dict[str, Any], cast_to: type[R], stage: str, read: Callable[[R], A], what: str) -> A:
        """One request through the OpenAI client (its retries, its parsing); each HTTP attempt takes
        the role's limits (:class:`_LimitedHttpClient`).

        ``read`` takes what the caller needs from the response; an HTTP 200 body that is not JSON
        or does not read as ``what`` (a proxy's HTML page, a cut-off body, JSON of another shape)
        is retried like a 5xx, with the same bound and backoff, and then is ``broken_response``.
        """
        assert self._openai is not None
        if self.collector is not None:  # batch mode: the provider batch's answer, or "awaiting batch"
            answered = self.collector.answer(self, path, request, stage)
            if answered is not None:
                return self.collector.read(self, answered, cast_to, read, what)
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            try:
                # The client's generic post() keeps its retries and response parsing but skips the
                # recursive transform of typed params: about a fifth of its CPU per request, and
                # we build the body ourselves anyway.
                return read(await self._openai.post(path, body=request, cast_to=cast_to))
            except openai.APIError as exc:
                self.usage.record(self.role, stage, failed=True)
                raise self._rejection_for(exc) from None
            except json.JSONDecodeError as exc:
                # The OpenAI client lets the decoder's error escape: it would fail the whole shard.
                problem, body = f"a body that is not JSON ({exc.msg})", exc.doc
            except (_BrokenBody, *_WRONG_SHAPE):
                problem, body = f"a body that is not {what}", None
            if attempt + 1 < attempts:
                log.debug("%s/%s: HTTP 200 with %s; retrying (attempt %d of %d)", self.role, stage, problem, attempt + 1, attempts)
                await asyncio.sleep(_backoff(attempt))
        self.usage.record(self.role, stage, failed=True)
        raise LLMRejection(
            BROKEN_RESPONSE,
            self._redact(f"HTTP 200 from {self.config.base_url} with {problem} after {attempts} attempts"),
            raw_answer=self._redact(body[:MAX_RAW_CHARS]) if body is not None else None,
        )

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
        model), from the cache if it holds it; failures end as :class:`LLMRejection` like :meth:`chat`."""
        if self._openai is None:
            raise RuntimeError("LLMClient must be used inside 'async with'")
        request: dict[str, Any] = {"model": self.config.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
        if extra:
            request.update(extra)
        key = self._cache_key("completion", request)
        if key is not None:
            hit = await self._cached(key, stage)
            if hit is not None:
                return Completion.construct(**hit)
        await self._throttle([{"content": prompt}], max_tokens)
        response = await self._post("/completions", request, Completion, stage, _read_completion, "a completion")
        usage = response.usage
        self.usage.record(
            self.role, stage,
            prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
            completion_tokens=(usage.completion_tokens or 0) if usage else 0,
        )  # fmt: skip
        if key is not None:
            self._store(key, response.to_dict())
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
        return await self._structured(messages, schema, stage, temperature, max_tokens, seed, draw=(0, 1))

    async def _structured(
        self,
        messages: list[dict[str, str]],
        schema: type[T],
        stage: str,
        temperature: float | None,
        max_tokens: int | None,
        seed: int | None,
        draw: tuple[int, int],
    ) -> T:
        mode = self.config.structured_output
        prompt = messages if mode == "json_schema" else with_schema_instruction(messages, schema)
        fmt = response_format(mode, schema)
        extra = {"response_format": fmt} if fmt else None
        request = self._chat_request(prompt, temperature, max_tokens, seed, extra)
        key = self._cache_key("structured", request, draw)
        if key is not None:
            hit = await self._cached(key, stage)
            if hit is not None:
                try:
                    return parse_answer(hit.get("text"), schema)
                except InvalidAnswer:
                    pass  # the schema's rules changed since: ask again
        raw = None
        problem = ""
        for attempt in range(self.config.max_invalid_retries + 1):
            answer = await self._send_chat(request, stage)
            raw = answer.text
            try:
                value = parse_answer(raw, schema)
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
                request = self._chat_request(conversation, temperature, max_tokens, seed, extra)
                continue
            if key is not None:
                self._store(key, {"text": raw})  # under the first request's key: what a re-run asks first
            return value
        raise LLMRejection(
            INVALID_OUTPUT,
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
        partial set means (quality scoring averages what it has or rejects the row). Each sample
        is cached on its own (its index and ``n`` are part of the key).
        """
        base_seed = self.config.seed

        async def one(i: int) -> T | LLMRejection:
            seed = None if base_seed is None else base_seed + i
            try:
                return await self._structured(messages, schema, stage, temperature, max_tokens, seed, draw=(i, n))
            except LLMRejection as rejection:
                return rejection

        return list(await asyncio.gather(*(one(i) for i in range(n))))

    # -- internals -----------------------------------------------------------------------------

    def _cache_key(self, kind: str, request: dict[str, Any], draw: tuple[int, int] = (0, 1)) -> str | None:
        return None if self.cache is None else request_key(kind, self.config.base_url, request, draw)

    async def _cached(self, key: str, stage: str) -> dict[str, Any] | None:
        assert self.cache is not None
        hit = await self.cache.get(key)
        if hit is not None:
            self.usage.record_cached(self.role, stage)
        return hit

    def _store(self, key: str, value: dict[str, Any]) -> None:
        assert self.cache is not None
        self.cache.put(key, value)

    async def _throttle(self, messages: list[dict[str, str]], max_tokens: int) -> None:
        """The call's share of the role's tokens per minute (requests are counted per HTTP attempt)."""
        assert self.limiter is not None
        if self.config.tokens_per_minute:
            # A cheap upper-bound estimate: about 4 characters per token plus the full budget.
            await self.limiter.spend_tokens(sum(len(m["content"]) for m in messages) // 4 + max_tokens)

    def _rejection_for(self, exc: openai.APIError) -> LLMRejection:
        attempts = self.config.max_retries + 1
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        if isinstance(exc, openai.APITimeoutError):
            reason, what = TIMEOUT, f"no answer within {self.config.timeout_s:g}s"
        elif isinstance(exc, openai.APIConnectionError):
            reason, what = CONNECTION_ERROR, "connection failed or dropped"
        elif isinstance(exc, openai.RateLimitError):
            reason, what = RATE_LIMITED, "HTTP 429"
        elif status is not None and status >= 500:
            reason, what = SERVER_ERROR, f"HTTP {status}"
        elif status == 408:
            reason, what = TIMEOUT, "HTTP 408"
        elif status in (401, 403, 404):
            reason, what = ENDPOINT_REFUSED, f"HTTP {status}"  # the key, the model or the URL: not this row
        elif status is not None:
            reason, what = REQUEST_REJECTED, f"HTTP {status}"
        else:
            reason, what = API_ERROR, type(exc).__name__
        retried = reason in {TIMEOUT, CONNECTION_ERROR, RATE_LIMITED, SERVER_ERROR}
        detail = f"{what} from {self.config.base_url}" + (f" after {attempts} attempts" if retried else "")
        message = getattr(exc, "message", "") or ""
        if message and reason not in {TIMEOUT, CONNECTION_ERROR}:
            detail += f": {message[:MAX_DETAIL_CHARS]}"
        return LLMRejection(reason, self._redact(detail))

    def _redact(self, text: str) -> str:
        secret = self.config.api_key.get_secret_value()
        return text.replace(secret, "***") if secret and len(secret) >= 4 else text


class _LimitedHttpClient(openai.DefaultAioHttpClient):
    """The OpenAI client's HTTP client, with the role's limits around every attempt it sends.

    The OpenAI client retries 429s and 5xx itself: each retry passes here too, so it takes a slot
    and a request of the budget, and AIMD and the Retry-After hold-off see every answer.

    On aiohttp (the OpenAI client's own aiohttp backend): httpx's pool checks every idle connection
    with a system call before each request, which took about a third of the client's CPU at 64-80
    connections (docs/BENCHMARKS.md, 1.51 -> 1.08 ms a request).
    """

    def __init__(self, limiter: RoleLimiter, **kwargs: Any):
        super().__init__(**kwargs)
        self._limiter = limiter

    async def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        async with self._limiter.attempt() as started:
            try:
                response = await super().send(request, **kwargs)  # the body is read (no streaming)
            except httpx2.ConnectTimeout as exc:
                # the aiohttp backend reports every lost connection as a connect timeout; a
                # dropped or refused connection is a connection error (the rejection says which)
                if exc.__cause__ is not None and not isinstance(exc.__cause__, TimeoutError):
                    raise httpx2.ConnectError(str(exc), request=request) from exc.__cause__
                raise
            await self._limiter.observe(started, response.status_code, response.headers)
            return response


def _read_chat(response: ChatCompletion) -> ChatAnswer:
    """The first choice's text and the token counts; raises on a body of another shape."""
    choice = response.choices[0]  # none at all: not an answer
    usage = response.usage
    return ChatAnswer(
        text=choice.message.content or "",
        finish_reason=choice.finish_reason,
        prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
        completion_tokens=(usage.completion_tokens or 0) if usage else 0,
    )


def _read_completion(response: Completion) -> Completion:
    if not isinstance(response, Completion) or not isinstance(response.choices, list):
        raise _BrokenBody
    return response


def _backoff(attempt: int) -> float:
    """The OpenAI client's delay before retry ``attempt + 1``: exponential, capped, minus 0-25% jitter."""
    return min(INITIAL_RETRY_DELAY * 2.0**attempt, MAX_RETRY_DELAY) * (1 - 0.25 * random.random())
