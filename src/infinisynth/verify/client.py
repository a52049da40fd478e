"""A :class:`~infinisynth.verify.model.Gate` that asks the lint sidecar (:mod:`infinisynth.verify.service`).

Large checks are split into requests under the service's body and item limits (read from
``/healthz`` once); connection errors, timeouts and 5xx answers are retried with backoff; a 4xx
is a bug on our side and raises :class:`LintServiceError` with the service's message. Code that is
not UTF-8 text, or larger than one request may be, gets its verdict here without a round trip.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from typing import Any

import httpx

from infinisynth.verify.execute import ExecItem, ExecResult
from infinisynth.verify.model import BINARY_CODE, CODE_TOO_LARGE, GATE_TOOL, Finding, LintItem, LintResult

_ENVELOPE = 64  # bytes of JSON around each item besides its fields
_RETRY_STATUS = {500, 502, 503, 504}


class LintServiceError(RuntimeError):
    """The lint service refused a request or stayed unreachable through every retry."""


class LintServiceClient:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.5,
        concurrency: int = 2,
        max_items_per_request: int = 500,  # keeps one request well inside the timeout, even for C++
    ):
        self.url = url.rstrip("/")
        self.max_items_per_request = max_items_per_request
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.retries = retries
        self.backoff = backoff
        self.concurrency = concurrency
        self._health: dict[str, Any] | None = None

    # -- Gate ---------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        return str(self.health()["fingerprint"])

    async def check(self, items: Sequence[LintItem]) -> list[LintResult]:
        limits = (await asyncio.to_thread(self.health))["limits"]
        results: dict[int, LintResult] = {}
        payloads: list[tuple[int, dict[str, str], int]] = []  # (index, item JSON, its size)
        for index, item in enumerate(items):
            text, problem = _as_text(item)
            if problem is None:
                entry = {"id": str(index), "language": item.language, "code": text}
                size = len(json.dumps(entry)) + _ENVELOPE
                if size + _ENVELOPE > limits["max_body_bytes"]:
                    problem = Finding(
                        GATE_TOOL,
                        CODE_TOO_LARGE,
                        0,
                        f"{len(text.encode('utf-8', 'surrogatepass'))} bytes of code; the lint service takes at most {limits['max_code_bytes']}",
                    )
                else:
                    payloads.append((index, entry, size))
            if problem is not None:
                results[index] = LintResult(item.id, False, (problem,))

        slots = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout) as http:

            async def send(chunk: list[tuple[int, dict[str, str], int]]) -> None:
                async with slots:
                    answered = await self._post(http, [entry for _, entry, _ in chunk])
                for (index, _, _), answer in zip(chunk, answered, strict=True):
                    results[index] = _result(items[index].id, answer)

            await asyncio.gather(
                *(
                    send(chunk)
                    for chunk in _chunks(payloads, limits["max_body_bytes"], min(limits["max_items"], self.max_items_per_request))
                )
            )
        return [results[index] for index in range(len(items))]

    async def execute(self, items: Sequence[ExecItem]) -> list[ExecResult]:
        """Run solutions with their tests in the service's sandbox (``POST /v1/execute``), one
        request of at most ``max_items`` items at a time; raises :class:`LintServiceError` when
        the service has no sandbox (503 after the retries) or refuses the request."""
        limits = (await asyncio.to_thread(self.health))["limits"]
        results: list[ExecResult] = []
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            for start in range(0, len(items), limits["max_items"]):
                chunk = items[start : start + limits["max_items"]]
                entries = [{"id": str(n), "language": i.language, "code": i.code, "tests": i.tests} for n, i in enumerate(chunk)]
                answered = await self._post(http, entries, "/v1/execute")
                results += [
                    ExecResult(item.id, str(a["verdict"]), str(a["detail"]), float(a["seconds"]))
                    for item, a in zip(chunk, answered, strict=True)
                ]
        return results

    # -- HTTP ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``/healthz`` of the service (cached after the first success)."""
        if self._health is None:
            with httpx.Client(timeout=self.timeout) as http:
                self._health = self._with_retries(lambda: http.get(f"{self.url}/healthz"), "GET /healthz")
        return self._health

    def _with_retries(self, call: Any, what: str) -> Any:
        for attempt in range(self.retries + 1):
            try:
                response = call()
            except httpx.TransportError as exc:
                problem: str = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response.json()
                problem = _problem(response)
                if response.status_code not in _RETRY_STATUS:
                    raise LintServiceError(f"{what} at {self.url}: {problem}")
            if attempt == self.retries:
                raise LintServiceError(f"{what} at {self.url} failed after {self.retries + 1} attempts: {problem}")
            time.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    async def _post(self, http: httpx.AsyncClient, entries: list[dict[str, str]], path: str = "/v1/lint") -> list[dict[str, Any]]:
        body = json.dumps({"items": entries}).encode("utf-8", "surrogatepass")
        for attempt in range(self.retries + 1):
            try:
                response = await http.post(f"{self.url}{path}", content=body, headers={"content-type": "application/json"})
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    answered = response.json()["results"]
                    if [a["id"] for a in answered] != [e["id"] for e in entries]:
                        raise LintServiceError(f"POST {path} at {self.url} answered for other items than it was asked about")
                    return answered
                problem = _problem(response)
                if response.status_code not in _RETRY_STATUS:
                    raise LintServiceError(f"POST {path} at {self.url}: {problem}")
            if attempt == self.retries:
                raise LintServiceError(f"POST {path} at {self.url} failed after {self.retries + 1} attempts: {problem}")
            await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int) -> float:
        return self.backoff * (2**attempt) * (0.5 + random.random())


def _as_text(item: LintItem) -> tuple[str, Finding | None]:
    """The code as text JSON can carry, or the verdict the gate would give it (see LocalGate._admit)."""
    if isinstance(item.code, str):
        try:
            item.code.encode("utf-8")
        except UnicodeEncodeError:  # JSON parsers refuse lone surrogates: the whole request would fail
            return "", Finding(GATE_TOOL, BINARY_CODE, 0, "contains unpaired surrogates: not valid text")
        return item.code, None
    try:
        return item.code.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return "", Finding(GATE_TOOL, BINARY_CODE, 0, f"not UTF-8 text ({exc.reason} at byte {exc.start})")


def _chunks(payloads: list[tuple[int, dict[str, str], int]], max_bytes: int, max_items: int) -> list[list[tuple[int, dict[str, str], int]]]:
    """Consecutive runs of items whose request stays under both limits."""
    chunks: list[list[tuple[int, dict[str, str], int]]] = []
    current: list[tuple[int, dict[str, str], int]] = []
    size = _ENVELOPE
    for payload in payloads:
        if current and (size + payload[2] > max_bytes or len(current) == max_items):
            chunks.append(current)
            current, size = [], _ENVELOPE
        current.append(payload)
        size += payload[2]
    if current:
        chunks.append(current)
    return chunks


def _result(item_id: str, answer: dict[str, Any]) -> LintResult:
    findings = tuple(Finding(str(f["tool"]), str(f["rule"]), int(f["line"]), str(f["message"])) for f in answer["findings"])
    tools = tuple((str(t["tool"]), str(t["version"])) for t in answer.get("tools", []))
    return LintResult(item_id, bool(answer["passed"]), findings, tools)


def _problem(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text[:300]
    return f"HTTP {response.status_code}: {detail}"
