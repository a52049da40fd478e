"""Fused chains stream (issue 16): a row moves on to the next step of its mapped task as soon as
its step passes it, with the staged run's files, results and checkpoints.

The stages here answer without a model: each row takes a number of event-loop turns that grows
with its index (``asyncio.sleep(0)``), so the order in which rows finish is fixed by the row, not
by the clock, and a staged run and a streamed one can be told apart from the order of events.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from infinisynth import stream
from infinisynth.settings import role_config, store_for
from infinisynth.spec import PipelineSettings, PipelineSpec, Step
from infinisynth.stages.base import BatchStage, ModelStage, Outcome, Passed, Rejected, Row
from infinisynth.steps import RunContext, ShardRef, commit_step, run_step_shard

DS = "2026-03-05"
ROWS = 8
NOWHERE = {"host": "http://127.0.0.1:9/v1", "extra": {"model": "stub", "max_concurrency": 16, "max_retries": 0}}

SOURCE_SCHEMA = pa.schema([("id", pa.string()), ("turns", pa.int64())])
DRAFT_SCHEMA = pa.schema([*SOURCE_SCHEMA, ("draft", pa.string()), ("provenance", pa.string())])
FINAL_SCHEMA = pa.schema([*DRAFT_SCHEMA, ("final", pa.string())])
CHECKED_SCHEMA = pa.schema([*FINAL_SCHEMA, ("checked", pa.bool_())])

EVENTS: list[tuple[str, str]] = []  # (step, row id) as each row finishes, across one test
CRASH_ON: set[str] = set()  # row ids the final step raises on (a crash mid-chain)
BATCHES: list[int] = []  # the sizes of the gate's micro-batches


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class Draft(ModelStage):
    """Row ``r3`` is rejected; ``r1`` makes two rows; the others one."""

    name = "draft"
    schema = DRAFT_SCHEMA

    async def process(self, row: Row) -> Outcome:
        await turns(10 * row["turns"])
        EVENTS.append(("draft", row["id"]))
        if row["id"] == "r3":
            return Rejected("too_dull", "nothing to draft")
        copies = 2 if row["id"] == "r1" else 1
        return Passed([self.annotate({**row, "id": f"{row['id']}.{n}"}, draft=f"draft {n}") for n in range(copies)])


class Final(ModelStage):
    """Row ``r5.0``'s call does not complete (pending); ``r6.0`` is rejected."""

    name = "final"
    schema = FINAL_SCHEMA

    async def process(self, row: Row) -> Outcome:
        await turns(2)
        if row["id"] in CRASH_ON:
            raise RuntimeError(f"the worker died on {row['id']}")
        EVENTS.append(("final", row["id"]))
        if row["id"] == "r5.0":
            return Rejected("server_error", "503 after the retries")
        if row["id"] == "r6.0":
            return Rejected("too_short", "one word")
        return Passed([self.annotate(row, final=row["draft"].upper())])


class Check(BatchStage):
    """A gate: rows whose draft ends in ``1`` fail; its stats count rows in and failed."""

    name = "check"
    schema = CHECKED_SCHEMA

    async def process_batch(self, rows: Sequence[Row]) -> list[Outcome]:
        BATCHES.append(len(rows))
        return [Rejected("odd", "ends in 1") if row["draft"].endswith("1") else Passed([{**row, "checked": True}]) for row in rows]

    def shard_stats(self, rows: Sequence[Row], outcomes: Sequence[Outcome]) -> dict[str, Any]:
        return {"in": len(rows), "failed": sum(isinstance(o, Rejected) for o in outcomes)}

    @classmethod
    def commit_meta(cls, ctx: Any, shard_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"check_totals": {key: sum(s[key] for s in shard_stats) for key in ("in", "failed")}}


class StreamSettings(PipelineSettings):
    max_transient_share: float = 1.0  # the pending row is reported, not retried


def spec(*steps: Step) -> PipelineSpec:
    source = Step("source", "tests.test_streaming:Check", "global")  # never run: the shard is written by hand
    return PipelineSpec("streamtest", StreamSettings, (source, *steps))


SPEC = spec(
    Step("draft", "tests.test_streaming:Draft", upstream=("source",)),
    Step("final", "tests.test_streaming:Final", upstream=("draft",), fused=True),
    Step("check", "tests.test_streaming:Check", "batch", upstream=("final",), fused=True),
)


@pytest.fixture(autouse=True)
def clean_slate():
    EVENTS.clear()
    CRASH_ON.clear()
    BATCHES.clear()


def context(root: Path, **settings: Any) -> RunContext:
    store = store_for(f"file://{root}")
    return RunContext(SPEC, store, DS, StreamSettings(**settings), roles=lambda role: role_config(role, lambda _: NOWHERE))


def source_shard(ctx: RunContext) -> dict[str, Any]:
    rows = [{"id": f"r{i}", "turns": i} for i in range(ROWS)]
    written = ctx.partition("source").write_table(0, pa.Table.from_pylist(rows, schema=SOURCE_SCHEMA), SOURCE_SCHEMA)
    return ShardRef(stage="source", shard=0, file=written.name, rows=len(rows)).model_dump()


def run(ctx: RunContext) -> dict[str, Any]:
    return run_step_shard(ctx, "draft", source_shard(ctx))


def files(ctx: RunContext, results: dict[str, Any]) -> dict[str, Any]:
    """Each step's output and rejected rows as written, in file order."""
    return {
        step: {
            "out": ctx.partition(step).read_file(result["output"]["name"]).to_pylist(),
            "rejected": ctx.store.rejected(ctx.spec.name, step, DS).read_file(result["rejected"]["name"]).to_pylist(),
        }
        for step, result in results.items()
    }


ACCOUNTING = ("rows_in", "passed", "resumed", "rejected_by_reason", "pending", "pending_by_reason", "pending_ids", "stats", "usage")


def test_streamed_chain_writes_what_the_staged_chain_writes_while_rows_move_on_early(tmp_path):
    staged_ctx = context(tmp_path / "staged", stream_chains=False)
    staged = run(staged_ctx)
    staged_events = list(EVENTS)
    EVENTS.clear()
    streamed_ctx = context(tmp_path / "streamed")
    streamed = run(streamed_ctx)

    assert files(streamed_ctx, streamed) == files(staged_ctx, staged)
    for step in ("draft", "final", "check"):
        assert {k: streamed[step][k] for k in ACCOUNTING} == {k: staged[step][k] for k in ACCOUNTING}, step
    assert (streamed["final"]["pending"], streamed["final"]["pending_ids"]) == (1, ["r5.0"])
    assert streamed["check"]["stats"] == {"in": 6, "failed": 1}  # r1.1 fails the gate

    # Staged, every draft finishes before the first final; streamed, finals of early rows come
    # before the last draft.
    last_draft = max(i for i, (step, _) in enumerate(EVENTS) if step == "draft")
    first_final = min(i for i, (step, _) in enumerate(EVENTS) if step == "final")
    assert first_final < last_draft
    staged_last_draft = max(i for i, (step, _) in enumerate(staged_events) if step == "draft")
    assert all(i > staged_last_draft for i, (step, _) in enumerate(staged_events) if step == "final")


def test_the_gate_takes_micro_batches_whose_stats_add_up_to_the_shard(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "MICRO_BATCH_ROWS", 3)
    ctx = context(tmp_path)
    results = [run(ctx)]

    assert sum(BATCHES) == 6 and max(BATCHES) <= 3 and len(BATCHES) >= 2
    assert results[0]["check"]["stats"] == {"in": 6, "failed": 1}
    commit_step(ctx, "draft", results)  # the head commits its fused steps, the gate's stats as manifest keys
    assert ctx.partition("check").manifest().meta["check_totals"] == {"in": 6, "failed": 1}
    funnel = {step: ctx.partition(step).manifest().meta["funnel"] for step in ("draft", "final", "check")}
    assert [(f["rows_in"], f["inputs_passed"], f["rejected"], f["pending"]) for f in funnel.values()] == [
        (8, 7, 1, 0),
        (8, 6, 1, 1),
        (6, 5, 1, 0),
    ]


def test_a_retry_after_a_crash_mid_chain_asks_nothing_twice(tmp_path):
    ctx = context(tmp_path)
    CRASH_ON.add("r6.0")
    with pytest.raises(RuntimeError, match="the worker died on r6.0"):
        run(ctx)
    first = Counter(EVENTS)
    assert first[("final", "r0.0")] == 1  # the crash came after rows of both steps had finished

    EVENTS.clear()
    CRASH_ON.clear()
    results = run(ctx)

    # Every row of every step was answered once over the two attempts: what the first finished
    # came back from each step's checkpoint. Only the pending row (its call did not complete) is
    # asked again, as it must be.
    both = first + Counter(EVENTS)
    assert both.pop(("final", "r5.0")) == 2
    assert set(both.values()) == {1}
    assert len(both) == ROWS + 7  # 8 drafts, and finals of the 8 rows they made but the pending one
    assert results["draft"]["resumed"] == sum(step == "draft" for step, _ in first)
    assert results["final"]["resumed"] == sum(step == "final" and row != "r5.0" for step, row in first)  # pending is redone
    assert results["draft"]["processed"] + results["draft"]["resumed"] == ROWS


def test_chain_validation_allows_batch_steps_and_keeps_a_chain_a_line():
    with pytest.raises(ValueError, match="chain is a line"):
        spec(
            Step("draft", "tests.test_streaming:Draft", upstream=("source",)),
            Step("final", "tests.test_streaming:Final", upstream=("draft",), fused=True),
            Step("check", "tests.test_streaming:Check", "batch", upstream=("draft",), fused=True),
        )
    with pytest.raises(ValueError, match="exactly one upstream"):
        spec(Step("draft", "tests.test_streaming:Draft", upstream=("source",), fused=True))
    assert [s.name for s in SPEC.chain("draft")] == ["draft", "final", "check"]
    assert SPEC.head("check") == "draft"
    with pytest.raises(ValueError, match="beside names"):  # a step beside another reads the same shards
        spec(
            Step("draft", "tests.test_streaming:Draft", upstream=("source",)),
            Step("final", "tests.test_streaming:Final", upstream=("draft",), beside="draft"),
        )


def test_the_code_pipeline_streams_two_chains():
    from infinisynth.specs.code_instruct import SPEC as CODE

    assert [s.name for s in CODE.chain("reverse")] == ["reverse", "keywords"]
    assert [s.name for s in CODE.chain("quality")] == ["quality", "respond", "verify", "write_tests", "execute"]
    assert CODE.absorbed(CODE.step("combinations")) == ("reverse",)  # the graph build commits reverse and keywords
    assert CODE.absorbed(CODE.step("dataset")) == ("quality",)  # publishing commits the whole answer chain
    # seed-problem scoring runs beside reverse construction: in its tasks, committed with it
    assert [[s.name for s in chain] for chain in CODE.chains("reverse")] == [["reverse", "keywords"], ["seed_quality"]]
    assert CODE.head("seed_quality") == "reverse" and CODE.feeds("seeds") == [CODE.step("reverse")]


def test_a_forwarded_row_is_the_row_read_back_from_the_data_file():
    from infinisynth.stages.execute import EXECUTED_SCHEMA

    row = {
        "id": "p1",
        "parent_ids": ("s1", "s0"),  # a tuple comes back a list
        "quality_mean": 7,  # an int in a double column comes back a float
        "quality_scores": {"specificity": 8, "complexity": 6.5},  # missing struct fields come back None
        "lint_findings": [{"block": 1, "tool": "pylint", "rule": "undefined-variable", "line": 2, "message": "x"}],
        "scratch": "not a column",  # dropped
    }
    shaped = stream.shaper(pa.struct(list(EXECUTED_SCHEMA)))(row)
    read_back = pa.Table.from_pylist([row], schema=EXECUTED_SCHEMA).to_pylist()[0]
    assert shaped == read_back
    assert [type(shaped[k]) for k in ("parent_ids", "quality_mean")] == [list, float]


def test_provenance_is_the_staged_one(tmp_path):
    ctx = context(tmp_path)
    results = run(ctx)
    final = ctx.partition("final").read_file(results["final"]["output"]["name"]).to_pylist()
    assert all(set(json.loads(row["provenance"])) == {"draft", "final"} for row in final)


# -- the code pipeline, staged and streamed, through `airflow dags test` ---------------------------

CODE_TABLES = ("reverse", "keywords", "quality", "respond", "verify", "write_tests", "execute", "dataset", "holdout")
CODE_REJECTED = ("reverse", "keywords", "backfeed", "quality", "respond", "verify", "write_tests", "execute")


@pytest.fixture(scope="module")
def server():
    from tests.support.servers import scripted_openai

    with scripted_openai() as handle:
        yield handle


def code_run(airflow_home, server, directory: Path, stream_chains: bool) -> dict[str, Any]:
    """One night of the code pipeline (the scripted answers of tests/test_code_instruct_dag.py):
    every table's rows by id, every rejected table's ids and reasons, and the funnel."""
    from tests.support.fixtures import connection_env
    from tests.test_code_instruct_dag import GOOD_ANSWERS, write_seed_file

    server.reset()
    server.script(
        [
            {"match": "BROKEN_marker", "actions": [{"content": "{this is not json"}]},
            {"match": "def add_2(", "actions": [{"json": {"problem": "NOCODE_MARK: return the largest value in a list, or None."}}]},
            {"match": ["NOCODE_MARK", "Solve the following programming problem"], "actions": [{"content": "Just loop."}]},
            *GOOD_ANSWERS,
        ]
    )
    directory.mkdir()
    root = f"file://{directory / 'data'}"
    env = {**connection_env(server.base_url, max_invalid_retries=1), "INFINISYNTH_ROOT": root}
    conf = {
        "seed_source": str(write_seed_file(directory)),
        "max_seeds": 100,
        "shard_size": 3,
        "holdout_fraction": 0.3,
        "stream_chains": stream_chains,
    }
    airflow_home.dags_test("code_instruct", "2026-01-05", conf, env)

    store = store_for(root)
    tables = {
        name: sorted(store.partition("code_instruct", name, "2026-01-05").read().to_pylist(), key=lambda r: r["id"]) for name in CODE_TABLES
    }
    rejected = {
        name: sorted((r["id"], r["reason"]) for r in store.rejected("code_instruct", name, "2026-01-05").read().to_pylist())
        for name in CODE_REJECTED
    }
    funnel = store.partition("code_instruct", "dataset", "2026-01-05").manifest().meta["funnel"]
    return {"tables": tables, "rejected": rejected, "funnel": funnel}


@pytest.mark.slow
def test_the_code_pipeline_publishes_the_same_dataset_streamed_as_staged(airflow_home, server, tmp_path):
    staged = code_run(airflow_home, server, tmp_path / "staged", stream_chains=False)
    streamed = code_run(airflow_home, server, tmp_path / "streamed", stream_chains=True)

    assert streamed["tables"]["dataset"] and streamed["rejected"]["verify"] == staged["rejected"]["verify"] != []
    for name in CODE_TABLES:
        assert [r["id"] for r in streamed["tables"][name]] == [r["id"] for r in staged["tables"][name]], name
        assert streamed["tables"][name] == staged["tables"][name], name
    assert streamed["rejected"] == staged["rejected"]
    assert streamed["funnel"] == staged["funnel"]  # per step: in, passed, out, rejected by reason, pending, requests, tokens
