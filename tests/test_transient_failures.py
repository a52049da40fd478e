"""Calls that did not complete are not verdicts: a declared pipeline's task bodies against the
scripted server (real HTTP), with the real checkpoints and commit.

- A shard whose rows lose their calls (5xx, 429, dropped connections, broken bodies) beyond
  ``max_transient_share`` fails its task, naming the counts and reasons; nothing of those rows is
  checkpointed or rejected, so the task's retry (the endpoint healthy again) redoes exactly them.
- Under the bound the shard commits, its lost rows *pending* in the funnel and named in the
  manifest; in = passed + rejected + pending.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

import pytest

from infinisynth.runner import Checkpoint
from infinisynth.settings import role_config, store_for
from infinisynth.shards import TransientFailures
from infinisynth.steps import RunContext, commit_step, run_global_step, run_step_shard
from tests.support.servers import ScriptedOpenAI
from tests.test_stage_contract import DS, SPEC, TinySettings

FAST = 0.05  # Retry-After (seconds) short enough to keep the tests quick
TOO_LONG = {"match": "Article 3:", "actions": [{"json": {"headline": "one two three four five six seven eight nine ten"}}]}
HEALTHY = [TOO_LONG, {"match": "Write a headline", "actions": [{"json": {"headline": "Council votes on bike lanes"}}]}]


def context(server: ScriptedOpenAI, root: str, **settings: Any) -> RunContext:
    connection = {"host": server.base_url, "extra": {"model": "scripted", "max_retries": 1}}
    return RunContext(SPEC, store_for(root), DS, TinySettings(**settings), roles=lambda r: role_config(r, lambda _: connection))


def saved_ids(ctx: RunContext, shard: int) -> set[str]:
    outcomes, _ = Checkpoint(ctx.store, ctx.store.work_dir("tiny", "headline", DS, shard)).load()
    return {key.split(":")[0] for key in outcomes}


def written_rejects(ctx: RunContext) -> list[str]:
    return ctx.store.fs.glob(posixpath.join(ctx.store.rejected("tiny", "headline", DS).path, "part-*"))


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        ({"status": 500, "retry_after": FAST}, "server_error"),
        ({"status": 429, "retry_after": FAST}, "rate_limited"),
        ({"drop": True}, "connection_error"),
        ({"body": "<html>502 Bad Gateway</html>"}, "broken_response"),
    ],
)
def test_lost_calls_fail_the_task_and_its_retry_redoes_exactly_them(fresh_scripted, headline_prompt, tmp_path, failure, reason):
    # Shards of 2: [a0, a1], [a2, a3], [a4]. a1 and a2 meet the outage; a3 is judged too long.
    fresh_scripted.script([{"match": ["Write a headline", f"Article {n}:"], "actions": [failure]} for n in (1, 2)] + HEALTHY)
    ctx = context(fresh_scripted, f"file://{tmp_path / 'data'}")
    shards = run_global_step(ctx, "articles")

    for n in (0, 1):
        with pytest.raises(TransientFailures) as failed:
            run_step_shard(ctx, "headline", shards[n])
        message = str(failed.value)
        assert f"tiny.headline shard {n}: 1 of 2 rows (50%) got no answer ({reason}=1)" in message
        assert "max_transient_share=0.02" in message and f"a{n + 1}" in message
    last = run_step_shard(ctx, "headline", shards[2])
    # Only verdicts were kept: the answered row of shard 0, the too-long one of shard 1.
    assert (saved_ids(ctx, 0), saved_ids(ctx, 1)) == ({"a0"}, {"a3"})
    assert written_rejects(ctx) == []  # a failing shard writes nothing

    # Airflow retries the two failed tasks; the endpoint is healthy again.
    fresh_scripted.reset()
    fresh_scripted.script(HEALTHY)
    retried = [run_step_shard(ctx, "headline", shards[n]) for n in (0, 1)]
    assert fresh_scripted.stats()["total"] == 2  # a1 and a2, nothing else
    assert [r["headline"]["resumed"] for r in retried] == [1, 1]
    commit_step(ctx, "headline", [*retried, last])

    funnel = ctx.partition("headline").manifest().meta["funnel"]
    assert (funnel["rows_in"], funnel["inputs_passed"], funnel["rows_out"], funnel["rejected"], funnel["pending"]) == (5, 4, 4, 1, 0)
    assert funnel["rejected_by_reason"] == {"too_long": 1}  # no transient reason ever reaches the rejected table
    assert [r["id"] for r in ctx.store.rejected("tiny", "headline", DS).read().to_pylist()] == ["a3"]
    assert sorted(r["id"] for r in ctx.partition("headline").read().to_pylist()) == ["a0", "a1", "a2", "a4"]


def test_an_outage_with_client_retries_off_still_goes_red(fresh_scripted, headline_prompt, tmp_path):
    """Every call fails once and the client does not retry: every shard's task fails."""
    answer = {"json": {"headline": "Council votes on bike lanes"}}
    fresh_scripted.script([{"match": "Write a headline", "actions": [{"status": 500}, {"status": 429}, answer]}])
    connection = {"host": fresh_scripted.base_url, "extra": {"model": "scripted", "max_retries": 0}}
    settings = TinySettings()
    ctx = RunContext(SPEC, store_for(f"file://{tmp_path / 'data'}"), DS, settings, roles=lambda r: role_config(r, lambda _: connection))
    shards = run_global_step(ctx, "articles")
    for shard in shards:
        with pytest.raises(TransientFailures, match=r"\(100%\) got no answer \(server_error="):
            run_step_shard(ctx, "headline", shard)
    for shard in shards:  # the retries meet a 429, then an answer
        with pytest.raises(TransientFailures, match=r"rate_limited="):
            run_step_shard(ctx, "headline", shard)
    results = [run_step_shard(ctx, "headline", shard) for shard in shards]
    commit_step(ctx, "headline", results)
    assert ctx.partition("headline").manifest().meta["funnel"]["rows_out"] == 5


def test_a_shard_within_the_bound_commits_with_its_pending_rows_named(fresh_scripted, headline_prompt, tmp_path, caplog):
    fresh_scripted.script([{"match": ["Write a headline", "Article 1:"], "actions": [{"status": 503, "retry_after": FAST}]}, *HEALTHY])
    ctx = context(fresh_scripted, f"file://{tmp_path / 'data'}", max_transient_share=0.5)
    shards = run_global_step(ctx, "articles")
    results = [run_step_shard(ctx, "headline", shard) for shard in shards]

    first = results[0]["headline"]
    assert (first["rows_in"], first["passed"], first["pending"], first["pending_by_reason"]) == (2, 1, 1, {"server_error": 1})
    assert first["pending_ids"] == ["a1"] and "HTTP 503" in first["pending_errors"]["server_error"]
    with caplog.at_level(logging.WARNING, logger="infinisynth.shards"):
        commit_step(ctx, "headline", results)

    manifest = ctx.partition("headline").manifest()
    funnel = manifest.meta["funnel"]
    assert (funnel["rows_in"], funnel["inputs_passed"], funnel["rejected"], funnel["pending"]) == (5, 3, 1, 1)
    assert funnel["inputs_passed"] + funnel["rejected"] + funnel["pending"] == funnel["rows_in"]
    assert funnel["pending_by_reason"] == {"server_error": 1} and funnel["rejected_by_reason"] == {"too_long": 1}
    assert manifest.meta["pending_rows"]["ids"] == ["a1"]
    assert "HTTP 503" in manifest.meta["pending_rows"]["last_error"]["server_error"]
    # Neither published nor rejected.
    assert "a1" not in {r["id"] for r in ctx.partition("headline").read().to_pylist()}
    assert [r["id"] for r in ctx.store.rejected("tiny", "headline", DS).read().to_pylist()] == ["a3"]
    assert "1 of 5 input rows got no answer (server_error=1)" in caplog.text

    # A re-run of the date (checkpoints are gone) redoes the pending row; the rest comes from the cache.
    fresh_scripted.reset()
    fresh_scripted.script(HEALTHY)
    commit_step(ctx, "headline", [run_step_shard(ctx, "headline", shard) for shard in shards])
    assert fresh_scripted.stats()["total"] == 1
    assert ctx.partition("headline").manifest().meta["funnel"]["pending"] == 0
    assert "pending_rows" not in ctx.partition("headline").manifest().meta


def test_a_stage_that_rejects_every_row_says_so(fresh_scripted, headline_prompt, tmp_path, caplog):
    fresh_scripted.script([{"match": "Write a headline", "actions": [{"json": {"headline": " ".join(["word"] * 20)}}]}])
    ctx = context(fresh_scripted, f"file://{tmp_path / 'data'}")
    results = [run_step_shard(ctx, "headline", shard) for shard in run_global_step(ctx, "articles")]
    with caplog.at_level(logging.WARNING, logger="infinisynth.shards"):
        commit_step(ctx, "headline", results)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("every one of its 5 input rows was rejected (too_long=5)" in w for w in warnings), warnings


def test_a_seed_whose_second_variant_got_no_answer_is_pending_not_half_done(fresh_scripted, tmp_path):
    """Reverse construction with two problems per seed: if one variant's call does not complete, the
    whole seed is pending (redone by the next run), never published with one problem short."""
    import asyncio

    from infinisynth.llm import LLMClient, first_failure
    from infinisynth.llm.client import LLMRejection
    from infinisynth.llm.roles import RoleConfig
    from infinisynth.stages.base import Rejected
    from infinisynth.stages.reverse import ReverseConstruction, ReverseSettings

    problem = "Write a function that merges overlapping intervals and returns them sorted by start."
    fresh_scripted.script(
        [
            {"match": "(variant 2:", "actions": [{"status": 503}]},
            {"match": "this snippet inspires", "actions": [{"json": {"problem": problem}}]},
        ]
    )
    config = RoleConfig(role="generator", base_url=fresh_scripted.base_url, model="scripted", max_retries=0)
    row = {"id": "s1", "parent_ids": [], "origin": "seed", "lang": "python", "seed": "def merge(a):\n    return sorted(a)\n"}

    async def run() -> object:
        async with LLMClient(config) as client:
            return await ReverseConstruction(client, ReverseSettings(problems_per_seed=2)).process(row)

    outcome = asyncio.run(run())
    assert isinstance(outcome, Rejected) and outcome.transient and outcome.reason == "server_error"
    # With several failed samples, the transient one decides: the row is redone, not judged on fewer.
    final, transient = LLMRejection("invalid_output", "bad"), LLMRejection("timeout", "slow")
    assert first_failure([final, transient]) is transient and first_failure([final]) is final
