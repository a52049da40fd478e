"""The response cache: a finished date re-runs for free, and nothing but a final, valid answer to
the very same request is ever reused. Real HTTP (the scripted server counts what it is asked),
real storage (local files, and S3 through moto)."""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import time
from typing import Any

import pytest
from pydantic import BaseModel, Field

from infinisynth.llm import LLMClient, LLMRejection, ResponseCache, RoleConfig, UsageMeter
from infinisynth.llm.cache import CACHE_DIR, prune, prune_if_due
from infinisynth.prompts import load_prompt
from infinisynth.settings import role_config, store_for
from infinisynth.steps import RunContext, commit_step, run_global_step, run_step_shard
from infinisynth.storage import Store
from tests.support.servers import ScriptedOpenAI
from tests.test_stage_contract import DS, PROMPT, SPEC, TinySettings

HEADLINES = [
    {"match": "Article 3:", "actions": [{"json": {"headline": "one two three four five six seven eight nine ten"}}]},
    # {prompt_digest}: each article its own headline, so a mix-up between rows would show.
    {"match": "Write a headline", "actions": [{"content": '{"headline": "Council votes {prompt_digest}"}'}]},
]


def context(server: ScriptedOpenAI, store: Store, ds: str = DS, model: str = "scripted", **settings: Any) -> RunContext:
    connection = {"host": server.base_url, "extra": {"model": model}}
    return RunContext(SPEC, store, ds, TinySettings(**settings), roles=lambda r: role_config(r, lambda _: connection))


def run_headlines(ctx: RunContext) -> tuple[list[dict], list[dict], dict]:
    """The whole tiny pipeline for ctx's date: (published rows, rejected rows, funnel)."""
    results = [run_step_shard(ctx, "headline", shard) for shard in run_global_step(ctx, "articles")]
    commit_step(ctx, "headline", results)
    rows = sorted(ctx.partition("headline").read().to_pylist(), key=lambda r: r["id"])
    rejected = sorted(ctx.store.rejected("tiny", "headline", ctx.ds).read().to_pylist(), key=lambda r: r["id"])
    return rows, rejected, ctx.partition("headline").manifest().meta["funnel"]


def cache_files(store: Store) -> list[str]:
    """The cached answers (``{root}/_cache/llm/v1/xx/<key>.json``)."""
    entries = posixpath.join(store.root, CACHE_DIR, "v1")
    return [p for p in store.fs.find(entries) if p.endswith(".json")] if store.fs.exists(entries) else []


# -- a finished date re-runs for free ------------------------------------------------------------


def test_a_finished_shard_reruns_with_no_model_call_and_identical_rows(fresh_scripted, headline_prompt, tmp_path):
    fresh_scripted.script(HEADLINES)
    store = store_for(f"file://{tmp_path / 'data'}")
    ctx = context(fresh_scripted, store)
    rows, rejected, funnel = run_headlines(ctx)
    assert fresh_scripted.stats()["total"] == 5 and funnel["usage"]["generator/headline"]["requests"] == 5
    assert (len(rows), [r["reason"] for r in rejected]) == (4, ["too_long"])
    assert not store.fs.exists(posixpath.dirname(store.work_dir("tiny", "headline", DS, 0)))  # the checkpoints died at commit
    assert len(cache_files(store)) == 5  # the too-long headline is a valid answer, judged: cached too

    fresh_scripted.reset()
    again, rejected_again, funnel_again = run_headlines(ctx)
    assert fresh_scripted.stats()["total"] == 0
    assert again == rows and rejected_again == rejected
    usage = funnel_again["usage"]["generator/headline"]
    assert (usage["requests"], usage["cached_requests"], usage["total_tokens"]) == (0, 5, 0)

    # Valid across dates: another night asking the same is free too.
    run_headlines(context(fresh_scripted, store, ds="2026-05-02"))
    assert fresh_scripted.stats()["total"] == 0


def test_a_changed_prompt_or_model_misses_the_cache(fresh_scripted, headline_prompt, tmp_path):
    fresh_scripted.script(HEADLINES)
    store = store_for(f"file://{tmp_path / 'data'}")
    first, _, _ = run_headlines(context(fresh_scripted, store))

    (headline_prompt / "test_headline.toml").write_text(PROMPT.replace("Write a headline of at most", "Write a headline, at most"))
    load_prompt.cache_clear()  # as a new task process would, read the prompt files afresh
    fresh_scripted.reset()
    fresh_scripted.script(HEADLINES)
    edited, _, _ = run_headlines(context(fresh_scripted, store))
    assert fresh_scripted.stats()["total"] == 5
    assert {r["headline"] for r in edited}.isdisjoint({r["headline"] for r in first})  # new answers, not the old ones

    fresh_scripted.reset()
    fresh_scripted.script(HEADLINES)
    run_headlines(context(fresh_scripted, store, model="another-model"))
    assert fresh_scripted.stats()["total"] == 5


def test_the_cache_can_be_switched_off(fresh_scripted, headline_prompt, tmp_path):
    fresh_scripted.script(HEADLINES)
    store = store_for(f"file://{tmp_path / 'data'}")
    run_headlines(context(fresh_scripted, store, response_cache=False))
    run_headlines(context(fresh_scripted, store, response_cache=False))
    assert fresh_scripted.stats()["total"] == 10
    assert cache_files(store) == []


@pytest.mark.slow
def test_the_cache_lives_in_object_storage(fresh_scripted, headline_prompt):
    from tests.support.s3 import moto_s3

    fresh_scripted.script(HEADLINES)
    with moto_s3() as s3:
        store = store_for(f"s3://{s3.bucket}/nightly", lambda conn_id: s3.connection() if conn_id == "infinisynth_s3" else None)
        rows, _, _ = run_headlines(context(fresh_scripted, store))
        keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="nightly/_cache/llm/v1/")["Contents"]]
        assert len([k for k in keys if k.endswith(".json")]) == 5

        fresh_scripted.reset()
        again, _, _ = run_headlines(context(fresh_scripted, store))
        assert fresh_scripted.stats()["total"] == 0 and again == rows


# -- only final, valid answers to the very same request ------------------------------------------


class Verdict(BaseModel):
    title: str = Field(min_length=5)
    score: int = Field(ge=1, le=10)


def client_config(server: ScriptedOpenAI, **overrides: Any) -> RoleConfig:
    return RoleConfig(**{"role": "judge", "base_url": server.base_url, "model": "scripted", "max_retries": 0, **overrides})


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def _call(cache: ResponseCache, cfg: RoleConfig, what: str, text: str, usage: UsageMeter | None = None, **kwargs: Any) -> Any:
    async with LLMClient(cfg, usage, cache) as client:
        try:
            if what == "structured":
                return await client.structured(ask(text), Verdict, stage="judge", **kwargs)
            if what == "samples":
                return await client.structured_samples(ask(text), Verdict, stage="judge", n=3)
            if what == "chat":
                return await client.chat(ask(text), stage="judge", **kwargs)
            return await client.completion(text, stage="judge", extra={"echo": True, "logprobs": 1})
        except LLMRejection as rejection:
            return rejection


def call(cache: ResponseCache, cfg: RoleConfig, what: str, text: str, usage: UsageMeter | None = None, **kwargs: Any) -> Any:
    return asyncio.run(_call(cache, cfg, what, text, usage, **kwargs))


@pytest.fixture
def store(tmp_path) -> Store:
    return store_for(f"file://{tmp_path / 'data'}")


@pytest.fixture
def cache(store):
    cache = ResponseCache(store)
    yield cache
    cache.close()


def test_failures_and_invalid_answers_are_never_cached(fresh_scripted, store, cache):
    fresh_scripted.script(
        [
            {"match": "outage", "actions": [{"status": 500}, {"default": True}]},
            {"match": "That answer was invalid", "actions": [{"default": True}]},
            {"match": "prose", "actions": [{"content": "no JSON here"}]},
        ]
    )
    cfg = client_config(fresh_scripted, max_invalid_retries=0)
    assert call(cache, cfg, "structured", "outage").reason == "server_error"
    assert isinstance(call(cache, cfg, "structured", "outage"), Verdict)  # asked again, not served a failure
    assert call(cache, cfg, "structured", "prose").reason == "invalid_output"
    assert call(cache, cfg, "structured", "prose").reason == "invalid_output"  # asked again
    assert fresh_scripted.stats()["total"] == 4
    assert len(cache_files(store)) == 1  # only the one valid answer

    # A re-asked answer that validates is kept under the request a re-run asks first.
    usage = UsageMeter()
    reasked = call(cache, client_config(fresh_scripted, max_invalid_retries=1), "structured", "prose", usage)
    assert isinstance(reasked, Verdict) and usage.snapshot()["judge/judge"]["requests"] == 2
    assert call(cache, client_config(fresh_scripted, max_invalid_retries=1), "structured", "prose") == reasked
    assert fresh_scripted.stats()["total"] == 6


def test_every_generation_parameter_is_part_of_the_key(fresh_scripted, cache):
    cfg = client_config(fresh_scripted)
    for kwargs in ({}, {"temperature": 0.1}, {"max_tokens": 77}, {"seed": 5}):
        call(cache, cfg, "structured", "Score this problem.", **kwargs)
    call(cache, cfg, "chat", "Score this problem.")  # plain text: another kind of request
    call(cache, client_config(fresh_scripted, structured_output="prompt"), "structured", "Score this problem.")
    call(cache, client_config(fresh_scripted, model="other"), "structured", "Score this problem.")
    assert fresh_scripted.stats()["total"] == 7

    fresh_scripted.reset()
    usage = UsageMeter()
    for kwargs in ({}, {"temperature": 0.1}, {"max_tokens": 77}, {"seed": 5}):
        call(cache, cfg, "structured", "Score this problem.", usage, **kwargs)
    answer = call(cache, cfg, "chat", "Score this problem.", usage)
    assert fresh_scripted.stats()["total"] == 0 and usage.snapshot()["judge/judge"]["cached_requests"] == 5
    assert answer.text.startswith("Scripted answer") and answer.prompt_tokens > 0  # the ChatAnswer as it came


def test_each_of_n_samples_is_its_own_entry(fresh_scripted, store, cache):
    cfg = client_config(fresh_scripted)  # no seed: the n requests are identical but for which sample they are
    first = call(cache, cfg, "samples", "Score this problem.")
    assert fresh_scripted.stats()["total"] == 3 and len(cache_files(store)) == 3
    assert call(cache, cfg, "samples", "Score this problem.") == first
    assert fresh_scripted.stats()["total"] == 3


def test_completions_are_cached_too(fresh_scripted, cache):
    first = call(cache, client_config(fresh_scripted, role="base"), "completion", "Response:\nThe sum is 4.")
    again = call(cache, client_config(fresh_scripted, role="base"), "completion", "Response:\nThe sum is 4.")
    assert fresh_scripted.stats()["total"] == 1
    assert again.choices[0].logprobs.token_logprobs == first.choices[0].logprobs.token_logprobs
    assert again.choices[0].logprobs.text_offset == first.choices[0].logprobs.text_offset


def test_an_entry_that_no_longer_validates_is_asked_again(fresh_scripted, store, cache):
    cfg = client_config(fresh_scripted)
    call(cache, cfg, "structured", "Score this problem.")
    [entry] = cache_files(store)
    cache.fs.pipe_file(entry, json.dumps({"text": '{"title": "x", "score": 99}'}).encode())
    assert isinstance(call(cache, cfg, "structured", "Score this problem."), Verdict)
    assert fresh_scripted.stats()["total"] == 2
    assert json.loads(cache.fs.cat_file(entry))["text"] != '{"title": "x", "score": 99}'  # replaced by the valid one


# -- the bound ----------------------------------------------------------------------------------


def test_prune_deletes_the_oldest_entries_down_to_the_bound(store, cache):
    now = time.time()
    for age in range(10):  # entry k is k days old, 1000 bytes each
        key = f"{age:02d}" + "0" * 62
        cache.save(key, {"text": "x" * 989})  # {"text":"..."}: 1000 bytes
        os.utime(cache.path(key), (now - age * 86400, now - age * 86400))

    deleted, kept = prune(store, 6000)
    assert (deleted, kept) == (4, 6000)  # the four oldest entries
    assert sorted(posixpath.basename(p)[:2] for p in cache_files(store)) == ["00", "01", "02", "03", "04", "05"]

    prune_if_due(store, 1e-9)  # due: prunes everything over a tiny bound
    assert cache_files(store) == []
    cache.save("ff" + "0" * 62, {"text": "x"})
    prune_if_due(store, 1e-9)  # ran less than a day ago: nothing to do
    assert len(cache_files(store)) == 1


def test_an_unwritable_cache_costs_reuse_never_an_answer(fresh_scripted, tmp_path, caplog):
    root = tmp_path / "data"
    (root / "_cache").mkdir(parents=True)
    (root / "_cache" / "llm").write_text("a file where the cache folder should be")
    cache = ResponseCache(store_for(f"file://{root}"))
    try:
        assert isinstance(call(cache, client_config(fresh_scripted), "structured", "Score this problem."), Verdict)
        assert isinstance(call(cache, client_config(fresh_scripted), "structured", "Score this problem."), Verdict)
    finally:
        cache.close()
    assert fresh_scripted.stats()["total"] == 2
    assert "response cache: could not store" in caplog.text


def test_the_model_under_diagnosis_is_never_served_from_the_cache(fresh_scripted, store, cache):
    """A newly registered model can sit behind the last one's URL and model id: always ask it."""
    for _ in range(2):
        call(cache, client_config(fresh_scripted, role="target"), "chat", "What is a p-value?")
    assert fresh_scripted.stats()["total"] == 2 and cache_files(store) == []
