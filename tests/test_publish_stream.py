"""The code pipeline's publish step streams its input: the dataset, held-out and below-threshold
partitions it commits hold exactly the rows, in the order, that splitting the whole answered
partition at once gives (the step before it streamed), and a spilled table answers slices as a
table would."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from infinisynth.holdout import split_holdout
from infinisynth.pipelines.code_instruct import SPEC, CodeInstructSettings, split_threshold
from infinisynth.quality_dimensions import DIMENSIONS
from infinisynth.spill import Spill, SpilledTable
from infinisynth.stages.execute import EXECUTED_SCHEMA
from infinisynth.stages.publish import to_chat_rows
from infinisynth.steps import RunContext, run_global_step
from infinisynth.storage import Store

DS = "2026-02-03"


def answered_rows(n: int, seed: int = 7) -> list[dict]:
    """Answered problems as the test gate commits them: scores around the thresholds, a few unscored."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        mean = None if i % 97 == 0 else round(rng.uniform(4.0, 9.0), 2)
        rows.append(
            {
                "id": f"p{i:06d}",
                "parent_ids": [f"s{i // 3}"],
                "origin": rng.choice(["reverse", "backfeed"]),
                "lang": rng.choice(["python", "javascript", "go"]),
                "problem": f"Write a function number {i} that folds {rng.randrange(10**6)} values.",
                "seed": None,
                "combination": None,
                "variant": 0,
                "provenance": "{}",
                "quality_scores": None if mean is None else {d: mean for d in DIMENSIONS},
                "quality_mean": mean,
                "complexity": rng.uniform(1, 10),
                "quality_samples": 3,
                "response": f"```python\ndef f{i}(xs):\n    return sum(xs) * {rng.random()}\n```",
                "lint_passed": True,
                "lint_reason": "ok",
                "lint_languages": ["python"],
                "lint_tools": [],
                "lint_findings": [],
                "tests": None,
                "test_verdict": None,
                "test_detail": None,
                "test_seconds": None,
            }
        )
    return rows


def funnel_entry(stage: str, rows: int) -> dict:
    return {"stage": stage, "rows_in": rows, "inputs_passed": rows, "rows_out": rows, "rejected": 0}


def whole_partition_publish(answered: pa.Table, holdout_fraction: float, threshold: float) -> dict[str, list[dict]]:
    """What the step committed when it held the whole night: one split over one table."""
    dataset, held_out = split_holdout(to_chat_rows(answered), holdout_fraction)
    scores = dataset.column("quality_mean").to_pylist()
    keep = pa.array([s is None or s >= threshold for s in scores])
    return {
        "dataset": dataset.filter(keep).to_pylist(),
        "holdout": held_out.to_pylist(),
        "below_threshold": dataset.filter(pc.invert(keep)).to_pylist(),
    }


def test_streamed_publish_commits_the_rows_of_the_whole_partition_split_in_its_order(tmp_path: Path) -> None:
    settings = CodeInstructSettings(quality_threshold=6.0, answer_threshold=5.0, holdout_fraction=0.1, shard_size=37)
    ctx = RunContext(SPEC, Store(f"file://{tmp_path / 'data'}"), DS, settings)
    answered = pa.Table.from_pylist(answered_rows(9_500), schema=EXECUTED_SCHEMA)  # many read batches
    partition = ctx.partition("execute")
    files = [partition.write_table(n, answered.slice(offset, 50), EXECUTED_SCHEMA) for n, offset in enumerate(range(0, 9_500, 50))]
    partition.commit(files, EXECUTED_SCHEMA, {"funnel": funnel_entry("execute", 9_500)})
    verified = {"funnel": funnel_entry("verify", 9_500), "discard_by_language": {}}
    ctx.partition("verify").write_and_commit(pa.table({"id": pa.array([], pa.string())}), meta=verified)

    run_global_step(ctx, "dataset")

    expected = whole_partition_publish(answered, 0.1, 6.0)
    for stage, rows in expected.items():
        assert ctx.partition(stage).read().to_pylist() == rows, stage
    assert all(len(expected[stage]) > 500 for stage in expected)  # every side of both splits is exercised
    manifest = ctx.partition("dataset").manifest()
    assert manifest.meta["held_out"]["rows"] == len(expected["holdout"])
    assert manifest.meta["below_threshold"] == len(expected["below_threshold"])
    assert {f.rows for f in manifest.files} == {37, len(expected["dataset"]) % 37}  # sharded for the next task as before
    assert ctx.partition("holdout").manifest().meta["rows_total"] == 9_500


def test_threshold_split_publishes_unscored_rows_and_keeps_the_rest_below() -> None:
    chat = pa.table({"id": ["a", "b", "c", "d", "e"], "quality_mean": [6.0, 5.99, None, 9.0, float("nan")]})
    kept, below = split_threshold(chat, 6.0)
    assert kept.column("id").to_pylist() == ["a", "c", "d"]
    assert below.column("id").to_pylist() == ["b", "e"]


@pytest.mark.parametrize("row_group_rows", [3, 8, 4096])
def test_a_spilled_table_slices_like_the_table_it_spilled(tmp_path: Path, row_group_rows: int) -> None:
    schema = pa.schema([pa.field("n", pa.int64()), pa.field("text", pa.string())])
    spills = [Spill(str(tmp_path), schema, row_group_rows=row_group_rows) for _ in range(2)]
    parts = [
        pa.table({"n": list(range(start, start + size)), "text": [str(i) for i in range(size)]}, schema=schema)
        for start, size in ((0, 10), (10, 7), (17, 0), (17, 11))
    ]
    for n, part in enumerate(parts):
        spills[n // 2].write(part)  # several writes per spill, one of them empty
    whole, spilled = pa.concat_tables(parts), SpilledTable(spills, schema)

    assert spilled.num_rows == whole.num_rows == 28
    for offset, length in ((0, 28), (0, 5), (5, 5), (9, 4), (16, 3), (17, 50), (27, 1), (28, 5)):
        rows = pa.Table.from_batches(list(spilled.slice(offset, length).to_batches(max_chunksize=4)), schema=schema)
        assert rows.to_pylist() == whole.slice(offset, length).to_pylist(), (offset, length)
