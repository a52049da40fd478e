"""A scripted OpenAI-compatible server on loopback: real HTTP, deterministic answers.

Run: ``python tests/support/scripted_openai.py --port 0 [--latency 0.2] [--capacity 64]``; it
prints ``LISTENING <port>`` once it serves. Answers:

- by default, a valid instance of the JSON schema the request carries (``json_schema`` or
  ``json_object`` response formats, or a schema appended to the prompt), with text derived from a
  hash of the prompt, so the same prompt always gets the same answer;
- by rule: ``POST /_control/rules`` with ``[{"match": "substring", "actions": [...]}]``. The first
  rule whose ``match`` occurs in the request's messages (a list: all of them) applies; each distinct prompt walks the
  rule's actions in order and then keeps repeating the last one. An action is an object with any
  of: ``status`` (+ ``retry_after``), ``delay`` (seconds), ``drop`` (close the connection without
  answering), ``content`` (the message text; ``{prompt_digest}`` in it becomes a hash of the
  prompt), ``json`` (message text = that value as JSON),
  ``body`` (a raw HTTP 200 body, e.g. broken JSON), ``default`` (answer as if no rule matched),
  ``tests`` (``"pass"``, ``"fail"``, ``"error"``, ``"timeout"`` or ``"none"``: a solution with tests,
  see below).

A schema with ``solution`` and ``tests`` fields (the response stage with the test gate on) is
answered with a real program in the prompt's language (Python or JavaScript, from "... problem in
<Language>"): a correct ``total(values)`` and tests that pass; the ``tests`` action picks tests that
fail on an assertion, raise another error, loop forever, or are empty.

``POST /v1/completions`` (the legacy API) answers the same way and follows the same rules, matched
against the prompt; with ``logprobs`` it returns per-token log-probabilities (``echo`` puts the
prompt's tokens first). Tokens are whitespace-led words; a token scores -0.25 if the same word
occurred earlier in the text, else -2 to -4 (from a hash of the word): context that repeats the
answer's words makes it likelier, as with a real model. A rule action ``token_logprob`` fixes the
score of every token instead.

``GET /_control/stats`` counts requests (total, per rule, per status); ``POST /_control/reset``
clears rules and counters. ``--capacity`` bounds requests served at once; the rest queue.
``POST /_control/capacity`` with ``{"capacity": n, "overflow_status": 429, "retry_after": s}``
changes it at run time; with ``overflow_status``, a chat request beyond it is answered at once
with that status (and ``Retry-After``) instead of queueing. ``GET /_control/arrivals`` lists when
each chat request arrived and when each was answered with which status (wall-clock seconds).

The batch API (``/v1/files``, ``/v1/batches``) answers batch lines with the same rules:
tests/support/scripted_batches.py.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import sys
import time
from collections import Counter
from typing import Any

from aiohttp import web

try:
    from tests.support.scripted_batches import ScriptedBatches
except ImportError:  # run as a script: tests/support is the import path
    from scripted_batches import ScriptedBatches  # type: ignore[no-redef]

TOKEN = re.compile(r"\n|[^\S\n]*\S+|[^\S\n]+")  # legacy completions: newlines, then space-led words
SCHEMA_MARKER = re.compile(r"matches this JSON schema[^\n]*\n(\{.*\})\s*$", re.DOTALL)
WORDS = (
    "implement a function that parses the input records, validates every field, groups the "
    "results by key and returns a sorted summary with totals; handle empty input and invalid "
    "values by raising a clear error; include two worked examples with expected output"
).split()


class ScriptedServer:
    def __init__(self, latency: float = 0.0, capacity: int = 64):
        self.latency = latency
        self.capacity = asyncio.Semaphore(capacity)
        self.limit = capacity
        self.overflow: dict[str, Any] | None = None  # the action for a request beyond the limit
        self.rules: list[dict[str, Any]] = []
        self.reset_counters()

    def reset_counters(self) -> None:
        self.total = 0
        self.by_rule: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.progress: Counter[tuple[int, str]] = Counter()  # (rule, prompt hash) -> next action
        self.auth_headers: set[str] = set()
        self.max_in_flight = 0
        self.arrivals: list[float] = []  # chat requests, time.time() at arrival
        self.answers: list[tuple[float, int]] = []  # (time.time(), status) of each answer sent
        self.in_flight = 0

    # -- control -------------------------------------------------------------------------------

    async def set_rules(self, request: web.Request) -> web.Response:
        self.rules = await request.json()
        self.progress.clear()
        return web.json_response({"rules": len(self.rules)})

    async def reset(self, request: web.Request) -> web.Response:
        self.rules = []
        self.overflow = None
        self.reset_counters()
        return web.json_response({"ok": True})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "total": self.total,
                "by_rule": dict(self.by_rule),
                "by_status": {str(k): v for k, v in self.by_status.items()},
                "max_in_flight": self.max_in_flight,
                "auth_headers": sorted(self.auth_headers),
            }
        )

    async def set_capacity(self, request: web.Request) -> web.Response:
        settings = await request.json()
        self.limit = int(settings["capacity"])
        if settings.get("overflow_status"):
            self.overflow = {"status": int(settings["overflow_status"])}
            if settings.get("retry_after") is not None:
                self.overflow["retry_after"] = settings["retry_after"]
        else:
            self.overflow = None
            self.capacity = asyncio.Semaphore(self.limit)
        return web.json_response({"capacity": self.limit, "overflow": self.overflow})

    async def arrival_times(self, request: web.Request) -> web.Response:
        return web.json_response({"arrivals": self.arrivals, "answers": self.answers})

    # -- OpenAI API ----------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body, prompt, action = await self._received(request, chat=True)
        self.arrivals.append(time.time())
        if self.overflow is not None and self.in_flight >= self.limit:
            return self._respond(request, body, prompt, self.overflow)  # beyond capacity: refused at once
        async with self.capacity:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                delay = action.get("delay", 0.0) + self.latency
                if delay:
                    await asyncio.sleep(delay)
                return self._respond(request, body, prompt, action)
            finally:
                self.in_flight -= 1

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body, prompt, action = await self._received(request, chat=False)
        async with self.capacity:
            delay = action.get("delay", 0.0) + self.latency
            if delay:
                await asyncio.sleep(delay)
            return self._respond(request, body, prompt, action, chat=False)

    async def _received(self, request: web.Request, chat: bool) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """A request counted: its body, its prompt and the action the rules give it."""
        self.total += 1
        self.auth_headers.add(request.headers.get("Authorization", ""))
        body = await request.json()
        prompt = prompt_of(body, chat)
        return body, prompt, self._next_action(prompt)

    def _next_action(self, prompt: str) -> dict[str, Any]:
        for index, rule in enumerate(self.rules):
            needles = rule.get("match", "")
            if all(needle in prompt for needle in ([needles] if isinstance(needles, str) else needles)):
                self.by_rule[rule.get("name", str(index))] += 1
                key = (index, hashlib.sha1(prompt.encode()).hexdigest())
                actions = rule["actions"]
                step = min(self.progress[key], len(actions) - 1)
                self.progress[key] += 1
                return actions[step]
        return {"default": True}

    def _respond(
        self, request: web.Request, body: dict[str, Any], prompt: str, action: dict[str, Any], chat: bool = True
    ) -> web.StreamResponse:
        if action.get("drop"):
            self.by_status[0] += 1
            if request.transport is not None:
                request.transport.close()  # the client sees the connection die mid-request
            return web.Response(status=500)  # never delivered: the socket is gone
        status, answer = self.answer(body, prompt, action, chat)
        if chat:
            self.answers.append((time.time(), status))
        if status != 200:
            headers = {"Retry-After": str(action["retry_after"])} if "retry_after" in action else {}
            return web.json_response(answer, status=status, headers=headers)
        if "body" in action:
            return web.Response(text=answer, content_type="application/json")
        return web.json_response(answer)

    def answer(self, body: dict[str, Any], prompt: str, action: dict[str, Any], chat: bool) -> tuple[int, Any]:
        """The status and the response body the rules give a request (counted by status), online or
        in a batch: an error object, a ``body`` action's raw text, or a (chat) completion."""
        status = int(action.get("status", 200))
        self.by_status[status] += 1
        if status != 200:
            return status, {"error": {"message": f"scripted status {status}", "type": "scripted", "code": status}}
        if "body" in action:
            return 200, action["body"]
        if not chat:
            return 200, text_completion(body, prompt, action)
        if "content" in action:
            # ``{prompt_digest}`` makes a fixed answer differ per prompt (e.g. distinct code samples).
            content = action["content"].replace("{prompt_digest}", hashlib.sha1(prompt.encode()).hexdigest()[:10])
        elif "json" in action:
            content = json.dumps(action["json"])
        elif "tests" in action:
            content = json.dumps(written_tests(prompt, action["tests"]))
        elif "solution" in action:
            content = fenced_solution(prompt)
        else:
            content = default_answer(body, prompt)
        return 200, completion(body, prompt, content)


def prompt_of(body: dict[str, Any], chat: bool) -> str:
    """What the rules match against: a chat request's messages, or a completion request's prompt."""
    if chat:
        return "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else "".join(map(str, prompt))


def completion(body: dict[str, Any], prompt: str, content: str) -> dict[str, Any]:
    prompt_tokens, completion_tokens = max(1, len(prompt) // 4), max(1, len(content) // 4)
    return {
        "id": "chatcmpl-" + hashlib.sha1(prompt.encode()).hexdigest()[:12],
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "scripted"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def text_completion(body: dict[str, Any], prompt: str, action: dict[str, Any]) -> dict[str, Any]:
    """A legacy completion: ``" ok"`` per requested token, with log-probabilities if asked."""
    generated = " ok" * min(int(body.get("max_tokens", 16) or 0), 1)
    text = prompt + generated if body.get("echo") else generated
    tokens = re.findall(TOKEN, text)
    offsets, position, seen, scores = [], 0, set(), []
    for token in tokens:
        offsets.append(position)
        position += len(token)
        word = token.strip().lower()
        if "token_logprob" in action:
            scores.append(float(action["token_logprob"]))
        else:
            scores.append(-0.25 if word in seen else -2.0 - int(hashlib.sha1(word.encode()).hexdigest()[:4], 16) / 32768)
        seen.add(word)
    if body.get("echo") and scores:
        scores[0] = None  # the first token has no context (the OpenAI API's convention)
    logprobs = None
    if body.get("logprobs") is not None:
        top = [None if s is None else {t: s} for t, s in zip(tokens, scores)]
        logprobs = {"tokens": tokens, "token_logprobs": scores, "text_offset": offsets, "top_logprobs": top}
    prompt_tokens, completion_tokens = len(re.findall(TOKEN, prompt)), len(re.findall(r"\S+", generated))
    return {
        "id": "cmpl-" + hashlib.sha1(prompt.encode()).hexdigest()[:12],
        "object": "text_completion",
        "created": 0,
        "model": body.get("model", "scripted"),
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": "length"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def default_answer(body: dict[str, Any], prompt: str) -> str:
    """A schema-valid JSON answer when the request names a schema, else plain text."""
    seed = hashlib.sha256(prompt.encode()).hexdigest()
    schema = requested_schema(body, prompt)
    if schema is None:
        return f"Scripted answer {seed[:8]}: " + " ".join(WORDS[:20])
    if set(schema.get("properties", {})) == {"tests"}:  # the test-writing stage: tests that pass
        return json.dumps(written_tests(prompt, "pass"))
    return json.dumps(fill(schema, schema, seed))


LANGUAGE_ASKED = re.compile(r"problem in (Python|JavaScript)\b")
SOLUTIONS = {
    "Python": "def total(values):\n    result = 0\n    for value in values:\n        result += value\n    return result\n",
    "JavaScript": "function total(values) {\n  return values.reduce((a, b) => a + b, 0);\n}\n",
}
TESTS = {
    "Python": {
        "pass": "assert total([1, 2, 3]) == 6\nassert total([]) == 0\n",
        "fail": "assert total([1, 2, 3]) == 6\nassert total([2, 2]) == 5, 'two and two'\n",
        "error": "assert total(None) == 0\n",
        "timeout": "while True:\n    total([1])\n",
        "none": "",
    },
    "JavaScript": {
        "pass": "const assert = require('node:assert');\nassert.strictEqual(total([1, 2, 3]), 6);\nassert.strictEqual(total([]), 0);\n",
        "fail": "const assert = require('node:assert');\nassert.strictEqual(total([1, 2, 3]), 6);\nassert.strictEqual(total([2, 2]), 5);\n",
        "error": "const assert = require('node:assert');\nassert.strictEqual(total(null), 0);\n",
        "timeout": "for (;;) { total([1]); }\n",
        "none": "",
    },
}


def asked_language(prompt: str) -> str:
    found = LANGUAGE_ASKED.search(prompt)
    return found.group(1) if found else "Python"


def fenced_solution(prompt: str) -> str:
    """A plain-text answer to a response prompt: an explanation and the solution (``total``) in a
    fenced block of the language asked for."""
    language = asked_language(prompt)
    return f"Add the values one by one.\n\n```{language.lower()}\n{SOLUTIONS[language]}```\n"


def written_tests(prompt: str, outcome: str) -> dict[str, str]:
    """The test-writing stage's structured answer: tests of ``total`` that ``pass``, ``fail`` (an
    assertion), raise an ``error``, run into a ``timeout`` or are missing (``none``)."""
    return {"tests": TESTS[asked_language(prompt)][outcome]}


def requested_schema(body: dict[str, Any], prompt: str) -> dict[str, Any] | None:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt["json_schema"]["schema"]
    if fmt.get("type") == "json_object" and "schema" in fmt:
        return fmt["schema"]
    found = SCHEMA_MARKER.search(prompt)
    return json.loads(found.group(1)) if found else None


def fill(schema: dict[str, Any], root: dict[str, Any], seed: str) -> Any:
    """A deterministic instance of a (pydantic-generated) JSON schema."""
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        return fill(root.get("$defs", {})[name], root, seed)
    for combiner in ("anyOf", "oneOf", "allOf"):
        if combiner in schema:
            options = [s for s in schema[combiner] if s.get("type") != "null"] or schema[combiner]
            return fill(options[0], root, seed)
    if "enum" in schema:
        if 7 in schema["enum"]:  # numeric scores: the same passing 7 as a plain integer gets
            return 7
        return schema["enum"][int(seed[:4], 16) % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if kind == "object":
        return {
            name: fill(sub, root, hashlib.sha256((seed + name).encode()).hexdigest()) for name, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        count = max(int(schema.get("minItems", 0)), min(3, int(schema.get("maxItems", 3))))
        return [fill(schema.get("items", {}), root, hashlib.sha256(f"{seed}{i}".encode()).hexdigest()) for i in range(count)]
    if kind == "integer":
        low, high = int(schema.get("minimum", 1)), int(schema.get("maximum", 10))
        return max(low, min(high, 7))
    if kind == "number":
        low, high = float(schema.get("minimum", 1)), float(schema.get("maximum", 10))
        return max(low, min(high, 7.0))
    if kind == "boolean":
        return True
    start = int(seed[:2], 16) % len(WORDS)
    text = f"Task {seed[:6]}: " + " ".join(WORDS[start:] + WORDS[:start])
    min_length, max_length = int(schema.get("minLength", 0)), int(schema.get("maxLength", 10_000))
    text = text.ljust(min_length, ".")
    return text[:max_length]


def make_app(latency: float, capacity: int) -> web.Application:
    server = ScriptedServer(latency=latency, capacity=capacity)
    batches = ScriptedBatches(server)  # /v1/files and /v1/batches: tests/support/scripted_batches.py
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(batches.routes())
    app.add_routes(
        [
            web.post("/v1/chat/completions", server.chat),
            web.post("/v1/completions", server.completions),
            web.get("/v1/models", server.models),
            web.post("/_control/rules", server.set_rules),
            web.post("/_control/reset", server.reset),
            web.get("/_control/stats", server.stats),
            web.post("/_control/capacity", server.set_capacity),
            web.get("/_control/arrivals", server.arrival_times),
            web.get("/health", lambda request: web.json_response({"ok": True})),
        ]
    )
    return app


async def serve(host: str, port: int, latency: float, capacity: int) -> None:
    runner = web.AppRunner(make_app(latency, capacity), access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"LISTENING {bound}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--capacity", type=int, default=64, help="requests served at once")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.latency, args.capacity))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
