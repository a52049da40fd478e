"""Money: a price per model, dollars beside tokens in the funnel and the manifest, a projection
before spending (the ``estimate`` Param), readable progress lines, and asset events that say what
was published. Runs go through the real task bodies against the scripted server (real HTTP)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from infinisynth.estimate import wall_time
from infinisynth.llm.prices import DEFAULT_PRICES, Price, price_for, role_price
from infinisynth.llm.usage import UsageMeter
from infinisynth.runner import progress_line
from infinisynth.settings import role_config, store_for
from infinisynth.shards import funnel_table
from infinisynth.spec import PipelineSpec, Step
from infinisynth.stages.base import GlobalStep, StepOutput
from infinisynth.steps import RunContext, commit_step, run_global_step, run_step_shard
from tests.support.airflow import make_airflow_home
from tests.test_stage_contract import ARTICLE_SCHEMA, DS, SPEC, TinySettings

GPT4O_MINI = DEFAULT_PRICES["gpt-4o-mini"]
ANSWER = [{"match": "Write a headline", "actions": [{"json": {"headline": "Council votes on bike lanes"}}]}]


def connection(server: Any, **extra: Any) -> dict[str, Any]:
    return {"host": server.base_url, "extra": {"model": "scripted", **extra}}


def context(server: Any, root: str, spec: PipelineSpec = SPEC, conn: dict[str, Any] | None = None, **settings: Any) -> RunContext:
    conn = conn or connection(server)
    return RunContext(spec, store_for(root), DS, TinySettings(**settings), roles=lambda r: role_config(r, lambda _: conn))


def run_tiny(ctx: RunContext, step: str = "headline") -> list[dict[str, Any]]:
    shards = run_global_step(ctx, "articles")
    return commit_step(ctx, step, [run_step_shard(ctx, step, shard) for shard in shards])


# -- the price table ---------------------------------------------------------------------------


def test_a_model_gets_its_price_from_the_connection_then_the_variable_then_the_table(monkeypatch):
    monkeypatch.delenv("AIRFLOW_VAR_INFINISYNTH_PRICES", raising=False)
    # The table knows dated and provider-prefixed ids of its models; the longest name wins.
    assert price_for("gpt-4o-mini") == price_for("gpt-4o-mini-2024-07-18") == price_for("openai/gpt-4o-mini") == GPT4O_MINI
    assert price_for("gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"] != GPT4O_MINI
    # A local or unknown model has no price: its dollars are "unpriced", not a made-up number.
    assert price_for("qwen2.5-coder-7b-instruct") is None and price_for("scripted") is None

    # The Variable infinisynth_prices (JSON model -> price) prices a local model and overrides the table.
    variable = {"qwen2.5-coder-7b-instruct": {"input": 0.05, "output": 0.1}, "gpt-4o-mini": {"input": 1, "output": 2}}
    monkeypatch.setenv("AIRFLOW_VAR_INFINISYNTH_PRICES", json.dumps(variable))
    local = price_for("qwen2.5-coder-7b-instruct")
    assert local is not None and (local.input, local.output, local.source) == (0.05, 0.1, "variable")
    assert price_for("gpt-4o-mini") == Price(input=1, output=2, source="variable")

    # The role's connection extra beats both, and reaches the role config.
    conn = {
        "host": "http://localhost:1/v1",
        "extra": {"model": "gpt-4o-mini", "price": {"input": 0.2, "output": 0.8, "batch_discount": 0.4}},
    }
    role = role_config("generator", lambda _: conn)
    price = role_price(role)
    assert price is not None and (price.input, price.output, price.batch_discount, price.source) == (0.2, 0.8, 0.4, "connection")
    assert "price" not in role.generation_config()  # a new price never invalidates cached answers

    monkeypatch.setenv("AIRFLOW_VAR_INFINISYNTH_PRICES", "{not json")
    with pytest.raises(ValueError, match="infinisynth_prices"):
        price_for("gpt-4o-mini")


def test_batch_requests_cost_the_batch_price_and_cached_answers_cost_nothing():
    meter = UsageMeter(prices={"generator": GPT4O_MINI, "judge": None})
    meter.record("generator", "write", prompt_tokens=1_000_000, completion_tokens=1_000_000)
    meter.record("generator", "batch", prompt_tokens=1_000_000, completion_tokens=1_000_000, batch=True)
    meter.record("generator", "batch2", prompt_tokens=1_000_000, completion_tokens=1_000_000)
    meter.record_batch("generator", "batch2", prompt_tokens=1_000_000, completion_tokens=1_000_000)
    meter.record("generator", "prompt_cached", prompt_tokens=1_000_000, cached_prompt_tokens=1_000_000)
    meter.record_cached("generator", "write")
    meter.record("judge", "score", prompt_tokens=500, completion_tokens=50)
    snap = meter.snapshot()
    assert snap["generator/write"]["dollars"] == pytest.approx(0.15 + 0.60)  # the cache hit added nothing
    assert snap["generator/write"]["cached_requests"] == 1
    assert snap["generator/batch"]["dollars"] == snap["generator/batch2"]["dollars"] == pytest.approx((0.15 + 0.60) / 2)
    assert snap["generator/batch2"]["batch_requests"] == 1
    assert snap["generator/prompt_cached"]["dollars"] == pytest.approx(0.075)
    assert snap["judge/score"]["dollars"] == 0 and snap["judge/score"]["unpriced_requests"] == 1
    table = meter.table()
    assert "unpriced" in table.splitlines()[-1] and "0.7500" in table

    # Dollars survive a snapshot round trip (checkpoints, XCom, commits) without the prices.
    merged = UsageMeter()
    merged.merge(snap)
    merged.merge(snap)
    assert merged.totals().dollars == pytest.approx(2 * meter.totals().dollars)


# -- dollars in the funnel and the manifest ------------------------------------------------------


def test_a_run_puts_dollars_beside_tokens_in_its_funnel_and_a_rerun_from_the_cache_costs_nothing(
    fresh_scripted, headline_prompt, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    fresh_scripted.script(ANSWER)
    ctx = context(fresh_scripted, f"file://{tmp_path / 'data'}", conn=connection(fresh_scripted, model="gpt-4o-mini-2024-07-18"))
    run_tiny(ctx)

    meta = ctx.partition("headline").manifest().meta
    usage = meta["funnel"]["usage"]["generator/headline"]
    expected = (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.60) / 1e6
    assert usage["requests"] == 5 and usage["prompt_tokens"] > 0
    assert usage["dollars"] == pytest.approx(expected, rel=1e-4) and expected > 0
    assert meta["funnel"]["dollars"] == pytest.approx(expected, rel=1e-4)
    assert ctx.store.rejected("tiny", "headline", DS).manifest().meta["funnel"]["dollars"] == meta["funnel"]["dollars"]
    published = next(r.getMessage() for r in caplog.records if "tiny.headline 2026-05-01 published" in r.getMessage())
    assert "dollars" in published and f"{expected:.4f}" in published
    shard_tables = [r.getMessage() for r in caplog.records if "model usage this attempt" in r.getMessage()]
    assert len(shard_tables) == 3 and all("dollars" in t for t in shard_tables)

    # The same date again: every answer comes from the response cache, which costs nothing.
    run_tiny(ctx)
    again = ctx.partition("headline").manifest().meta["funnel"]
    assert (again["usage"]["generator/headline"]["requests"], again["usage"]["generator/headline"]["cached_requests"]) == (0, 5)
    assert again["dollars"] == 0
    assert fresh_scripted.stats()["total"] == 5


def test_an_unknown_model_is_unpriced_in_the_funnel_not_free(fresh_scripted, headline_prompt, tmp_path):
    fresh_scripted.script(ANSWER)
    ctx = context(fresh_scripted, f"file://{tmp_path / 'data'}")  # model "scripted": no price anywhere
    run_tiny(ctx)
    funnel = [run["funnel"] for run in (ctx.partition("articles").manifest().meta, ctx.partition("headline").manifest().meta)]
    table = funnel_table(funnel).splitlines()
    assert table[0].split()[:9] == ["stage", "in", "passed", "out", "rejected", "pending", "tokens", "dollars", "top"]
    assert table[2].split()[7] == "-"  # the global step made no request
    assert table[3].split()[7] == "unpriced"
    assert table[-1].startswith("total") and "unpriced" in table[-1]


# -- progress lines ------------------------------------------------------------------------------


class _Client:
    def __init__(self, limit: int | None) -> None:
        self.config = type("Config", (), {"max_concurrency": 8})()
        if limit is not None:
            self.concurrency_now = limit


def test_a_progress_line_says_rows_rate_eta_tokens_dollars_and_concurrency():
    meter = UsageMeter(prices={"generator": GPT4O_MINI})
    meter.record("generator", "write", prompt_tokens=600_000, completion_tokens=400_000)
    started = time.monotonic() - 5.0  # 10 rows in 5 s: 2 rows/s, 30 rows left: 15 s
    line = progress_line("gen.write shard 2", 10, 40, [], 10, started, meter, _Client(3))
    assert line.startswith("gen.write shard 2: 10/40 rows (25%), 0 rejected, 0 pending")
    assert "2.0 rows/s" in line and "ETA 15s" in line
    assert "1,000,000 tokens" in line and f"${0.6 * 0.15 + 0.4 * 0.6:.4f} so far" in line
    assert line.endswith("concurrency 3")  # the adaptive limit when the client has one ...
    assert progress_line("x", 10, 40, [], 10, started, meter, _Client(None)).endswith("concurrency 8")  # ... else its maximum
    unpriced = UsageMeter()
    unpriced.record("generator", "write", prompt_tokens=10)
    assert "unpriced model" in progress_line("x", 40, 40, [], 40, started, unpriced)
    assert "ETA 0s" in progress_line("x", 40, 40, [], 40, started, unpriced)


def test_a_shard_logs_progress_lines_and_no_line_per_http_request(fresh_scripted, headline_prompt, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    fresh_scripted.script(ANSWER)
    ctx = context(fresh_scripted, f"file://{tmp_path / 'data'}", conn=connection(fresh_scripted, model="gpt-4o-mini", max_concurrency=3))
    shards = run_global_step(ctx, "articles")
    run_step_shard(ctx, "headline", shards[0])
    progress = [r.getMessage() for r in caplog.records if r.name == "infinisynth.runner"]
    assert progress and progress[-1].startswith("tiny.headline shard 0: 2/2 rows (100%)")
    assert "ETA 0s" in progress[-1] and "$0.0" in progress[-1] and progress[-1].endswith("concurrency 3")
    http = [r for r in caplog.records if r.name.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2", "openai")]
    assert http == []


# -- the projection ------------------------------------------------------------------------------


class TwelveArticles(GlobalStep):
    name = "articles"
    schema = ARTICLE_SCHEMA

    def run(self) -> StepOutput:
        rows = [
            {"id": f"a{n}", "parent_ids": [], "origin": "seed", "lang": None, "text": f"Article {n}: the council met about lane {n}."}
            for n in range(12)
        ]
        return StepOutput(pa.Table.from_pylist(rows, schema=ARTICLE_SCHEMA), len(rows))


HEADLINE = "tests.test_stage_contract:Headline"
TWO_STEPS = PipelineSpec(
    "tiny",
    TinySettings,
    (
        Step("articles", "tests.test_costs:TwelveArticles", "global"),
        Step("headline", HEADLINE, upstream=("articles",), settings={"max_words": "max_headline_words"}),
        Step("retitle", HEADLINE, upstream=("headline",), settings={"max_words": "max_headline_words"}),
    ),
)


def test_an_estimate_answers_a_sample_projects_the_whole_run_and_publishes_nothing(fresh_scripted, headline_prompt, tmp_path):
    fresh_scripted.script(ANSWER)
    root = f"file://{tmp_path / 'data'}"
    price = {"input": 100.0, "output": 300.0}  # dear enough that the sample's dollars are not rounded away
    conn = connection(fresh_scripted, price=price, max_concurrency=2, requests_per_minute=30)
    ctx = context(fresh_scripted, root, TWO_STEPS, conn, shard_size=4, estimate=True, estimate_sample=2)

    shards = run_global_step(ctx, "articles")
    assert [s["rows"] for s in shards] == [4, 4, 4]
    next_shards = commit_step(ctx, "headline", [run_step_shard(ctx, "headline", s) for s in shards])
    assert sum(s["rows"] for s in next_shards) == 6  # the steps after go on with the sample's answers
    commit_step(ctx, "retitle", [run_step_shard(ctx, "retitle", s) for s in next_shards])
    assert fresh_scripted.stats()["total"] == 12  # 2 rows of each of 3 shards, twice: the sample only

    store = store_for(root)
    report = store.read_json(store.side_path("tiny", "reports", DS, "estimate.json"))
    steps = {s["step"]: s for s in report["steps"]}
    for name in ("headline", "retitle"):
        step = steps[name]
        assert (step["sample_rows"], step["rows_in"], step["sample_calls"], step["calls"]) == (6, 12, 6, 12)
        assert step["tokens"] == 2 * step["sample_tokens"] > 0
        assert step["dollars"] == pytest.approx(2 * step["sample_dollars"], rel=1e-3) and step["dollars"] > 0
        # One call per row at 30 requests a minute is 0.5 rows/s per task: 3 tasks of 4 rows run at once.
        assert step["bound_by"] == "requests_per_minute" and step["wall_seconds"] == pytest.approx(8.0)
    assert report["calls"] == 24 and report["tokens"] == steps["headline"]["tokens"] + steps["retitle"]["tokens"]
    assert report["dollars"] == pytest.approx(steps["headline"]["dollars"] + steps["retitle"]["dollars"], abs=1e-3)
    assert report["wall_seconds"] == pytest.approx(16.0)
    # Nothing of the real tables was written: the night does not look finished.
    for stage in ("articles", "headline", "retitle"):
        assert not store.partition("tiny", stage, DS).exists()
    assert store.committed_dates("tiny", "headline") == []


def test_wall_time_is_bound_by_the_tightest_limit():
    limits = {"max_concurrency": 8, "requests_per_minute": None, "tokens_per_minute": None}
    # 8 rows in flight at 2 s each: 4 rows/s per task; 120 rows in shards of 50: 3 tasks at once.
    assert wall_time(120, 120, 120_000, 2.0, limits, 50) == {
        "wall_seconds": 12.5,
        "bound_by": "concurrency",
        "rows_per_second_per_task": 4.0,
        "tasks": 3,
        "parallel_tasks": 3,
    }
    # 1,000 tokens a row at 60,000 tokens a minute: 1 row/s; 10 tasks, 4 at a time: 3 waves of 50 s.
    tight = wall_time(500, 500, 500_000, 2.0, {**limits, "tokens_per_minute": 60_000}, 50)
    assert (tight["bound_by"], tight["wall_seconds"], tight["parallel_tasks"]) == ("tokens_per_minute", 150.0, 4)


# -- asset events --------------------------------------------------------------------------------

DAG_FILE = """
from airflow.sdk import Asset

from infinisynth.airflow_dag import pipeline_dag
from tests.test_stage_contract import SPEC

HEADLINES = Asset(name="tiny.headlines", uri="infinisynth://tiny/headline")
dag = pipeline_dag(SPEC, dag_id="tiny_costs", schedule=None, tags=["test"], outlets={"headline": [HEADLINES]})
"""


@pytest.mark.slow
def test_asset_events_carry_partition_rows_and_run_and_an_estimate_emits_none(fresh_scripted, tmp_path):
    from tests.test_stage_contract import PROMPT

    fresh_scripted.script(ANSWER)
    home = make_airflow_home(tmp_path / "airflow")
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "tiny_costs.py").write_text(DAG_FILE)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "test_headline.toml").write_text(PROMPT)
    root = f"file://{tmp_path / 'data'}"
    conn = {"conn_type": "openai", "host": fresh_scripted.base_url, "extra": {"model": "gpt-4o-mini"}}
    env = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "INFINISYNTH_PROMPTS_DIR": str(prompts),
        "INFINISYNTH_ROOT": root,
        "AIRFLOW_CONN_LLM_DEFAULT": json.dumps(conn),
    }

    output = home.dags_test("tiny_costs", DS, {}, env)
    assert "tiny.headline shard 0: 2/2 rows (100%)" in output and "ETA 0s" in output  # progress lines in the task log ...
    assert "HTTP Request" not in output and "/chat/completions" not in output  # ... and no line per HTTP request
    events = home.query("SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = 'tiny.headlines'")
    assert len(events) == 1
    extra = json.loads(events[0]["extra"])
    assert (extra["partition"], extra["rows"], extra["step"]) == (DS, 5, "headline")
    runs = home.query("SELECT run_id FROM dag_run WHERE dag_id = 'tiny_costs'")
    assert [extra["run_id"]] == [r["run_id"] for r in runs]

    # An estimate of another date: a projection in the reports, no partition, no asset event.
    output = home.dags_test("tiny_costs", "2026-05-02", {"estimate": True, "estimate_sample": 1}, env)
    assert "ESTIMATE tiny.headline 2026-05-02" in output
    store = store_for(root)
    report = store.read_json(store.side_path("tiny", "reports", "2026-05-02", "estimate.json"))
    assert report["calls"] == 5 and report["dollars"] > 0  # 1 row of each of 3 shards answered, 5 projected
    assert not store.partition("tiny", "headline", "2026-05-02").exists()
    assert len(home.query("SELECT e.id FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = 'tiny.headlines'")) == 1
    assert Path(tmp_path / "data" / "_estimate" / "tiny" / "headline" / "ds=2026-05-02").exists()


def test_an_estimate_of_a_batch_mode_role_answers_online_and_projects_the_batch_price(fresh_scripted, headline_prompt, tmp_path):
    fresh_scripted.script(ANSWER)
    root = f"file://{tmp_path / 'data'}"
    conn = connection(fresh_scripted, price={"input": 100.0, "output": 300.0, "batch_discount": 0.5}, mode="batch")
    ctx = context(fresh_scripted, root, TWO_STEPS, conn, shard_size=4, estimate=True, estimate_sample=2)
    shards = run_global_step(ctx, "articles")
    commit_step(ctx, "headline", [run_step_shard(ctx, "headline", s) for s in shards])

    assert fresh_scripted.stats()["total"] == 6  # the sample, answered at once: no batch to wait for
    store = store_for(root)
    step = store.read_json(store.side_path("tiny", "reports", DS, "estimate-headline.json"))
    assert step["mode"] == "batch" and step["calls"] == 12
    # Twice the sample's rows, at half the price: the sample's dollars.
    assert step["dollars"] == pytest.approx(step["sample_dollars"], rel=1e-3) and step["dollars"] > 0


def test_an_estimate_reads_other_pipelines_real_tables_and_writes_only_its_own_scratch(tmp_path):
    from infinisynth.estimate import home_store, scratch_store

    store = store_for(f"file://{tmp_path / 'data'}")
    scratch = scratch_store(store, "diagnosis")
    assert scratch.partition("diagnosis", "answer", DS).path.startswith(f"{tmp_path / 'data' / '_estimate'}/")
    assert scratch.partition("code_instruct", "holdout", DS).path == store.partition("code_instruct", "holdout", DS).path
    assert home_store(scratch) is store and scratch_store(scratch, "diagnosis") is scratch
