"""The LLM client against a real OpenAI-compatible HTTP server (the scripted one, on loopback).

What a user of the pipeline relies on: structured answers arrive validated in every structured
output mode; transport trouble (429, 5xx, timeouts, dropped connections, garbage bodies) is retried
within bounds and then becomes a *transient* :class:`LLMRejection` with a reason, never an
exception that takes a shard down; invalid answers are re-asked a bounded number of times and then
are a *final* rejection; concurrency and rate limits hold; tokens are counted; the API key never
leaks; and no input row is ever lost (a transient one is pending, not rejected).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Literal

import httpx2
import pyarrow as pa
import pytest
from pydantic import BaseModel, Field

from infinisynth.llm import LLMClient, LLMRejection, RoleConfig, UsageMeter
from infinisynth.llm.structured import response_format
from infinisynth.runner import Passed, Rejected, rejected_table, run_shard, split_outcomes
from tests.support.servers import ScriptedOpenAI

# The reasons LLMRejection documents. Final ones go to the rejected table; transient ones leave the row pending.
FINAL = {"request_rejected", "invalid_output"}
TRANSIENT = {"rate_limited", "server_error", "timeout", "connection_error", "broken_response", "endpoint_refused"}
REASONS = FINAL | TRANSIENT
SECRET = "sk-test-SECRET-abc123"
FAST = 0.05  # a Retry-After (seconds) short enough to keep failure tests quick


class Problem(BaseModel):
    title: str = Field(min_length=5)
    difficulty: Literal["easy", "medium", "hard"]
    tags: list[str]
    score: int = Field(ge=1, le=10)


def config(server: ScriptedOpenAI, **overrides: Any) -> RoleConfig:
    settings: dict[str, Any] = {
        "role": "generator",
        "base_url": server.base_url,
        "model": "scripted",
        "api_key": SECRET,
        "max_retries": 2,
        "max_invalid_retries": 2,
        "timeout_s": 10.0,
        **overrides,
    }
    return RoleConfig(**settings)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You write programming problems."}, {"role": "user", "content": text}]


async def _structured(cfg: RoleConfig, text: str, usage: UsageMeter | None = None, stage: str = "write") -> Problem:
    async with LLMClient(cfg, usage) as client:
        return await client.structured(ask(text), Problem, stage=stage)


def structured(cfg: RoleConfig, text: str, usage: UsageMeter | None = None, stage: str = "write") -> Problem:
    return asyncio.run(_structured(cfg, text, usage, stage))


def rejection(cfg: RoleConfig, text: str, usage: UsageMeter | None = None, stage: str = "write") -> LLMRejection:
    """The call's LLMRejection; any other exception (or a success) fails the test."""
    with pytest.raises(LLMRejection) as caught:
        structured(cfg, text, usage, stage)
    assert caught.value.reason in REASONS
    assert caught.value.transient == (caught.value.reason in TRANSIENT)
    return caught.value


@pytest.fixture(autouse=True)
def own_limits_store(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own shared-limits store: no window or Retry-After of another test is left."""
    monkeypatch.setenv("INFINISYNTH_LIMITS_URL", f"sqlite://{tmp_path / 'limits.sqlite'}")


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """JSON bodies of the chat requests as they leave for the server (the request still goes out)."""
    bodies: list[dict[str, Any]] = []
    send = httpx2.AsyncClient.send

    async def spy(self: httpx2.AsyncClient, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        if request.url.path.endswith("/chat/completions"):
            bodies.append(json.loads(request.content))
        return await send(self, request, **kwargs)

    monkeypatch.setattr(httpx2.AsyncClient, "send", spy)
    return bodies


# -- structured output -------------------------------------------------------------------------

SCHEMA_IN_PROMPT = {"name": "schema-in-prompt", "match": "matches this JSON schema", "actions": [{"default": True}]}


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "prompt"])
def test_structured_answer_is_validated_in_every_mode(fresh_scripted: ScriptedOpenAI, wire: list, mode: str) -> None:
    # Counts requests whose prompt carries the schema, without changing the (default) answer.
    fresh_scripted.script([SCHEMA_IN_PROMPT])

    problem = structured(config(fresh_scripted, structured_output=mode), "Write a problem about intervals.")

    assert isinstance(problem, Problem) and len(problem.title) >= 5 and 1 <= problem.score <= 10
    assert len(wire) == 1 and fresh_scripted.stats()["total"] == 1  # valid at once: no re-ask
    schema = Problem.model_json_schema()
    sent = wire[0].get("response_format")
    schema_in_prompt = fresh_scripted.stats()["by_rule"].get("schema-in-prompt", 0)
    if mode == "json_schema":
        assert sent == {"type": "json_schema", "json_schema": {"name": "Problem", "schema": schema, "strict": False}}
        assert schema_in_prompt == 0  # the server enforces it; the prompt stays as written
    elif mode == "json_object":
        assert sent == {"type": "json_object", "schema": schema}
        assert schema_in_prompt == 1
    else:
        assert sent is None and "response_format" not in wire[0]
        assert schema_in_prompt == 1
        content = wire[0]["messages"][-1]["content"]
        in_prompt = json.loads(content[content.index("{") :])  # the user's text has no braces
        assert in_prompt["required"] == schema["required"] and in_prompt["properties"].keys() == schema["properties"].keys()
    assert response_format(mode, Problem) == sent


def test_plain_text_answer_without_schema_is_invalid(fresh_scripted: ScriptedOpenAI) -> None:
    """The server answers prose when it sees no schema: the check above is not vacuous."""
    fresh_scripted.script([{"match": "prose please", "actions": [{"content": "Here is a nice problem about graphs."}]}])
    rejected = rejection(config(fresh_scripted, max_invalid_retries=0), "prose please")
    assert rejected.reason == "invalid_output"
    assert rejected.raw_answer == "Here is a nice problem about graphs."


# -- transport failures ------------------------------------------------------------------------


def test_429_retry_after_is_honoured_then_succeeds(fresh_scripted: ScriptedOpenAI) -> None:
    fresh_scripted.script([{"match": "busy-once", "actions": [{"status": 429, "retry_after": 1}, {"default": True}]}])
    started = time.monotonic()
    problem = structured(config(fresh_scripted, max_retries=2), "busy-once: write a problem")
    elapsed = time.monotonic() - started

    assert isinstance(problem, Problem)
    # The client's own first backoff is at most 0.5 s: waiting ~1 s means Retry-After was obeyed.
    assert elapsed >= 0.95
    stats = fresh_scripted.stats()
    assert stats["total"] == 2 and stats["by_status"] == {"429": 1, "200": 1}


@pytest.mark.parametrize(
    ("status", "reason", "retried", "transient"),
    [
        (429, "rate_limited", True, True),
        (500, "server_error", True, True),
        (503, "server_error", True, True),
        (400, "request_rejected", False, False),  # this request is refused: a verdict on the row
        (401, "endpoint_refused", False, True),  # a wrong key refuses every row: not the row's fault
    ],
)
def test_status_forever_is_rejected_after_bounded_attempts(
    fresh_scripted: ScriptedOpenAI, status: int, reason: str, retried: bool, transient: bool
) -> None:
    fresh_scripted.script([{"match": "always-fails", "actions": [{"status": status, "retry_after": FAST}]}])
    usage = UsageMeter()
    rejected = rejection(config(fresh_scripted, max_retries=2), "always-fails: write a problem", usage)

    assert rejected.reason == reason and rejected.transient == transient
    assert f"HTTP {status}" in rejected.detail
    attempts = 3 if retried else 1  # max_retries + 1, or once for a request the server refuses
    assert fresh_scripted.stats()["total"] == attempts
    assert fresh_scripted.stats()["by_status"] == {str(status): attempts}
    if retried:
        assert "after 3 attempts" in rejected.detail
    assert usage.snapshot()["generator/write"]["failed_requests"] == 1


def test_500_then_success(fresh_scripted: ScriptedOpenAI) -> None:
    fresh_scripted.script([{"match": "flaky", "actions": [{"status": 500, "retry_after": FAST}, {"default": True}]}])
    assert isinstance(structured(config(fresh_scripted, max_retries=2), "flaky: write a problem"), Problem)
    assert fresh_scripted.stats()["by_status"] == {"500": 1, "200": 1}


def test_slow_answer_times_out(fresh_scripted: ScriptedOpenAI) -> None:
    fresh_scripted.script([{"match": "slowpoke", "actions": [{"delay": 0.6}]}])
    started = time.monotonic()
    rejected = rejection(config(fresh_scripted, timeout_s=0.3, max_retries=1), "slowpoke: write a problem")
    elapsed = time.monotonic() - started

    assert rejected.reason == "timeout"
    assert "no answer within 0.3s" in rejected.detail and "after 2 attempts" in rejected.detail
    assert fresh_scripted.stats()["total"] == 2
    assert elapsed < 3.0  # gave up on its own bound, did not wait for the server
    time.sleep(0.5)  # let the abandoned server handlers finish so later tests see a quiet server


def test_dropped_connection_forever_is_rejected(fresh_scripted: ScriptedOpenAI) -> None:
    fresh_scripted.script([{"match": "hangup", "actions": [{"drop": True}]}])
    rejected = rejection(config(fresh_scripted, max_retries=1), "hangup: write a problem")
    assert rejected.reason == "connection_error"
    assert fresh_scripted.stats()["total"] == 2


def test_dropped_once_then_success(fresh_scripted: ScriptedOpenAI) -> None:
    fresh_scripted.script([{"match": "hangup-once", "actions": [{"drop": True}, {"default": True}]}])
    assert isinstance(structured(config(fresh_scripted, max_retries=1), "hangup-once: write a problem"), Problem)
    assert fresh_scripted.stats()["total"] == 2


@pytest.mark.parametrize("body", ["<html>oops", "[]", "null", '{"choices": "x"}', '{"choices": []}'])
def test_garbage_http_200_body_is_retried_then_a_transient_rejection(fresh_scripted: ScriptedOpenAI, body: str) -> None:
    fresh_scripted.script([{"match": "garbage", "actions": [{"body": body}]}])
    usage = UsageMeter()
    rejected = rejection(config(fresh_scripted, max_retries=2), "garbage: write a problem", usage)  # not a JSONDecodeError
    assert rejected.reason == "broken_response" and rejected.transient  # the call did not complete: no verdict
    assert "HTTP 200" in rejected.detail and "not" in rejected.detail and "after 3 attempts" in rejected.detail
    assert fresh_scripted.stats()["total"] == 3  # retried like a 5xx: max_retries + 1 attempts
    assert usage.snapshot()["generator/write"]["failed_requests"] == 1


@pytest.mark.parametrize("body", ["<html>oops", '{"choices": []}'])
def test_garbage_http_200_body_once_is_retried_then_succeeds(fresh_scripted: ScriptedOpenAI, body: str) -> None:
    fresh_scripted.script([{"match": "garbage-once", "actions": [{"body": body}, {"default": True}]}])
    usage = UsageMeter()
    assert isinstance(structured(config(fresh_scripted, max_retries=1), "garbage-once: write a problem", usage), Problem)
    assert fresh_scripted.stats()["total"] == 2
    assert usage.snapshot()["generator/write"]["failed_requests"] == 0


# -- invalid answers ---------------------------------------------------------------------------


def test_malformed_json_is_reasked_with_the_problem_then_succeeds(fresh_scripted: ScriptedOpenAI, wire: list) -> None:
    fresh_scripted.script(
        [
            # Only a re-ask that tells the model what was wrong gets a valid answer.
            {"name": "reask", "match": "That answer was invalid: not valid JSON", "actions": [{"default": True}]},
            {"name": "first", "match": "broken-once", "actions": [{"content": "{not json"}]},
        ]
    )
    problem = structured(config(fresh_scripted), "broken-once: write a problem")

    assert isinstance(problem, Problem)
    assert fresh_scripted.stats()["by_rule"] == {"first": 1, "reask": 1}
    # The re-ask shows the model its own answer.
    assert {"role": "assistant", "content": "{not json"} in wire[1]["messages"]


def test_malformed_json_forever_is_rejected_with_the_last_answer(fresh_scripted: ScriptedOpenAI) -> None:
    fresh_scripted.script([{"match": "broken-always", "actions": [{"content": "{not json"}]}])
    rejected = rejection(config(fresh_scripted, max_invalid_retries=2), "broken-always: write a problem")

    assert rejected.reason == "invalid_output"
    assert rejected.raw_answer == "{not json"
    assert "not valid JSON" in rejected.detail and "after 3 answers" in rejected.detail
    assert fresh_scripted.stats()["total"] == 3  # max_invalid_retries + 1


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ({"wrong": 1}, "title: Field required"),
        ({"title": "Merge intervals", "difficulty": "easy", "tags": [], "score": "lots"}, "score:"),
        ({"title": "Merge intervals", "difficulty": "impossible", "tags": [], "score": 3}, "difficulty:"),
    ],
)
def test_schema_breaking_answer_is_rejected_naming_the_field(fresh_scripted: ScriptedOpenAI, answer: dict[str, Any], named: str) -> None:
    fresh_scripted.script([{"match": "off-schema", "actions": [{"json": answer}]}])
    rejected = rejection(config(fresh_scripted, max_invalid_retries=1), "off-schema: write a problem")

    assert rejected.reason == "invalid_output"
    assert "Problem schema" in rejected.detail and named in rejected.detail
    assert json.loads(rejected.raw_answer) == answer
    assert fresh_scripted.stats()["total"] == 2


# -- samples -----------------------------------------------------------------------------------


async def _samples(cfg: RoleConfig, text: str, n: int) -> list[Problem | LLMRejection]:
    async with LLMClient(cfg) as client:
        return await client.structured_samples(ask(text), Problem, stage="judge", n=n)


def test_samples_are_independent_validated_requests(fresh_scripted: ScriptedOpenAI, wire: list) -> None:
    samples = asyncio.run(_samples(config(fresh_scripted, seed=100), "sample me", n=3))

    assert len(samples) == 3 and all(isinstance(s, Problem) for s in samples)
    assert fresh_scripted.stats()["total"] == 3
    assert sorted(body["seed"] for body in wire) == [100, 101, 102]  # each sample its own draw


def test_samples_that_all_fail_are_rejections_not_exceptions(fresh_scripted: ScriptedOpenAI) -> None:
    fresh_scripted.script([{"match": "", "actions": [{"status": 500, "retry_after": FAST}]}])
    samples = asyncio.run(_samples(config(fresh_scripted, max_retries=0), "sample me", n=3))

    assert len(samples) == 3
    assert all(isinstance(s, LLMRejection) and s.reason == "server_error" for s in samples)
    assert fresh_scripted.stats()["total"] == 3


def test_samples_partial_set(fresh_scripted: ScriptedOpenAI) -> None:
    # The three samples share a prompt, so exactly one of them meets the 500.
    fresh_scripted.script([{"match": "", "actions": [{"status": 500}, {"default": True}]}])
    samples = asyncio.run(_samples(config(fresh_scripted, max_retries=0), "sample me", n=3))

    assert sum(isinstance(s, Problem) for s in samples) == 2
    assert sum(isinstance(s, LLMRejection) for s in samples) == 1


# -- limits ------------------------------------------------------------------------------------


def test_concurrency_is_bounded(fresh_scripted: ScriptedOpenAI) -> None:
    fresh_scripted.script([{"match": "parallel", "actions": [{"delay": 0.2}]}])

    async def run() -> list[Problem]:
        async with LLMClient(config(fresh_scripted, max_concurrency=4)) as client:
            calls = [client.structured(ask(f"parallel call {i}"), Problem, stage="write") for i in range(20)]
            return await asyncio.gather(*calls)

    started = time.monotonic()
    results = asyncio.run(run())
    elapsed = time.monotonic() - started

    assert len(results) == 20 and all(isinstance(r, Problem) for r in results)
    stats = fresh_scripted.stats()
    assert stats["total"] == 20
    assert stats["max_in_flight"] == 4  # never more than the bound, and the bound is used
    assert elapsed >= 5 * 0.2 * 0.9  # 20 calls in waves of 4


async def _timed_calls(cfg: RoleConfig, count: int) -> list[float]:
    """When each of ``count`` concurrent calls finished, in seconds from the start, sorted."""
    async with LLMClient(cfg) as client:
        started = time.monotonic()

        async def one(i: int) -> float:
            await client.structured(ask(f"limited {i}"), Problem, stage="write")
            return time.monotonic() - started

        return sorted(await asyncio.gather(*(one(i) for i in range(count))))


def _spread_per_second(done: list[float], per_second: int) -> None:
    """31 calls at ``per_second`` = 10: a moving window of 1 s lets 10 through at once, then the
    next 10 a second later, and so on: no second ever holds more than the budget."""
    assert done[per_second - 1] < 0.8  # the first window's share goes straight through
    for second in range(1, 4):
        assert done[second * per_second] >= second - 0.05  # the next share waits for the window


def test_requests_per_minute_limit(fresh_scripted: ScriptedOpenAI) -> None:
    # 600 per minute is spread as 10 per second (llm/limits.py: the shortest whole-number window).
    done = asyncio.run(_timed_calls(config(fresh_scripted, requests_per_minute=600), 31))

    _spread_per_second(done, 10)
    assert fresh_scripted.stats()["total"] == 31


def test_tokens_per_minute_limit(fresh_scripted: ScriptedOpenAI) -> None:
    # Each call is estimated at (characters in the messages) // 4 + max_tokens = 40 // 4 + 90 = 100
    # tokens; 60,000 per minute is 1,000 a second: 10 such calls per second.
    assert sum(len(m["content"]) for m in ask("limited 1")) // 4 == 10
    cfg = config(fresh_scripted, tokens_per_minute=60_000, max_tokens=90)
    done = asyncio.run(_timed_calls(cfg, 31))

    _spread_per_second(done, 10)


def test_single_call_larger_than_the_token_budget_still_runs(fresh_scripted: ScriptedOpenAI) -> None:
    # The estimate (max_tokens=1024) exceeds the whole per-minute budget: it must not raise or hang.
    cfg = config(fresh_scripted, tokens_per_minute=50)
    assert isinstance(structured(cfg, "one big call"), Problem)


# -- accounting --------------------------------------------------------------------------------


def test_usage_is_counted_per_role_and_stage(fresh_scripted: ScriptedOpenAI) -> None:
    fresh_scripted.script(
        [
            {"match": "fails", "actions": [{"status": 500, "retry_after": FAST}]},
            {"name": "reask", "match": "That answer was invalid", "actions": [{"default": True}]},
            {"match": "needs-reask", "actions": [{"content": "{not json"}]},
        ]
    )
    usage = UsageMeter()
    text = "Write a problem about heaps."
    problem = structured(config(fresh_scripted), text, usage, stage="write")
    structured(config(fresh_scripted, role="judge"), "needs-reask: score it", usage, stage="score")
    rejection(config(fresh_scripted, role="judge", max_retries=1), "fails: score it", usage, stage="score")

    snap = usage.snapshot()
    assert set(snap) == {"generator/write", "judge/score"}
    write = snap["generator/write"]
    # The scripted server counts len(text) // 4 tokens each way.
    prompt = "\n".join(m["content"] for m in ask(text))
    assert write["requests"] == 1 and write["failed_requests"] == 0
    assert write["prompt_tokens"] == len(prompt) // 4 > 0
    assert write["completion_tokens"] == len(json.dumps(problem.model_dump())) // 4 > 0
    assert write["total_tokens"] == write["prompt_tokens"] + write["completion_tokens"]
    score = snap["judge/score"]
    assert score["requests"] == 3  # two answers for the re-asked call, one failed call
    assert score["failed_requests"] == 1
    assert score["prompt_tokens"] > 0 and score["completion_tokens"] > 0


# -- secrets -----------------------------------------------------------------------------------


def test_api_key_is_sent_but_never_leaks(fresh_scripted: ScriptedOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    for name in (None, "infinisynth", "openai", "httpx2", "httpcore2"):
        caplog.set_level(logging.DEBUG, logger=name)
    fresh_scripted.script(
        [
            {"match": "limited", "actions": [{"status": 429, "retry_after": FAST}]},
            {"match": "broken", "actions": [{"status": 500, "retry_after": FAST}]},
            {"match": "hangup", "actions": [{"drop": True}]},
            {"match": "slowpoke", "actions": [{"delay": 0.6}]},
            # A model (or a proxy) that echoes the key back must not carry it into the rejected table.
            {"match": "echo-answer", "actions": [{"content": f"my key is {SECRET}"}]},
            {"match": "echo-body", "actions": [{"body": f"<html>bad key {SECRET}</html>"}]},
        ]
    )
    cfg = config(fresh_scripted, max_retries=1, max_invalid_retries=1, timeout_s=0.3)

    assert isinstance(structured(cfg, "a fine request"), Problem)
    rejections = [
        rejection(cfg, f"{marker}: write a problem") for marker in ("limited", "broken", "hangup", "slowpoke", "echo-answer", "echo-body")
    ]

    assert fresh_scripted.stats()["auth_headers"] == [f"Bearer {SECRET}"]
    assert {r.reason for r in rejections} == {
        "rate_limited",
        "server_error",
        "connection_error",
        "timeout",
        "invalid_output",
        "broken_response",
    }
    assert rejections[-1].raw_answer == "<html>bad key ***</html>"  # the broken body is kept, redacted
    places = {
        "repr(config)": repr(cfg),
        "str(config)": str(cfg),
        "public_dict": json.dumps(cfg.public_dict()),
        "model_dump_json": cfg.model_dump_json(),
        "logs": caplog.text + "\n".join(repr(r.args) for r in caplog.records),
    }
    for r in rejections:
        places[f"{r.reason} str"] = str(r)
        places[f"{r.reason} repr"] = repr(r)
        places[f"{r.reason} detail"] = r.detail
        places[f"{r.reason} raw_answer"] = r.raw_answer or ""
    assert "SECRET" not in "".join(places.values()), [where for where, text in places.items() if "SECRET" in text]
    assert caplog.records  # the loggers were really listening
    assert rejections[-2].raw_answer == "my key is ***"
    assert cfg.with_overrides(max_retries=3).api_key.get_secret_value() == SECRET  # overrides keep the key
    time.sleep(0.5)  # let the abandoned slow handler finish


# -- a whole shard -----------------------------------------------------------------------------

# What the server does to a row, by row number modulo 8, and the reason the row must end with.
FATES: dict[int, tuple[dict[str, Any] | None, str | None]] = {
    1: ({"status": 429, "retry_after": FAST}, "rate_limited"),
    3: ({"status": 500, "retry_after": FAST}, "server_error"),
    5: ({"content": "{not json"}, "invalid_output"),
    6: ({"drop": True}, "connection_error"),
    7: ({"body": "<html>oops"}, "broken_response"),
}


class WriteStage:
    name = "write"
    schema = pa.schema([("id", pa.string()), ("title", pa.string())])

    def __init__(self, client: LLMClient):
        self.client = client

    def cache_key(self, row: dict[str, Any]) -> str:
        return "v1"

    async def process(self, row: dict[str, Any]) -> Passed | Rejected:
        problem = await self.client.structured(ask(row["prompt"]), Problem, stage=self.name)
        return Passed([{"id": f"{row['id']}-out", "title": problem.title}])


def test_no_row_is_lost_in_a_shard(fresh_scripted: ScriptedOpenAI) -> None:
    rows = [{"id": f"r{i:02d}", "prompt": f"Write a problem about topic {i} [row-{i}]", "n": i} for i in range(30)]
    fresh_scripted.script([{"match": f"[row-{i}]", "actions": [FATES[i % 8][0]]} for i in range(30) if i % 8 in FATES])
    expected_reason = {row["id"]: FATES[i % 8][1] if i % 8 in FATES else None for i, row in enumerate(rows)}
    usage = UsageMeter()

    async def run():
        cfg = config(fresh_scripted, max_retries=1, max_invalid_retries=1, max_concurrency=16)
        async with LLMClient(cfg, usage) as client:
            return await run_shard(WriteStage(client), rows, usage=usage, concurrency=16)

    shard = asyncio.run(run())
    outputs, rejects = split_outcomes("write", shard)
    pending = shard.pending

    assert [row for row, _ in shard.outcomes] == rows  # every input, in order
    assert len(outputs) + len(rejects) + len(pending) == len(rows)
    assert [o["id"] for o in outputs] == [f"{r}-out" for r, why in expected_reason.items() if why is None]
    # Only verdicts are rejected rows; a call that did not complete leaves its row pending.
    assert {r["id"]: r["reason"] for r in rejects} == {r: why for r, why in expected_reason.items() if why in FINAL}
    assert {row["id"]: o.reason for row, o in pending} == {r: why for r, why in expected_reason.items() if why in TRANSIENT}
    for reject in rejects:
        original = next(row for row in rows if row["id"] == reject["id"])
        assert json.loads(reject["input_json"]) == original  # the input itself survives
        assert reject["stage"] == "write" and reject["detail"]
    assert rejected_table(rejects).num_rows == len(rejects)  # fits the rejected table's schema
    assert usage.snapshot()["generator/write"]["failed_requests"] > 0
