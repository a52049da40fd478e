"""Run a model-calling stage over one shard of a partition, and commit a stage's shards.

The mapped Airflow task for shard N calls :func:`run_stage_shard`; it writes the shard's output
and rejected rows as data files that stay invisible until the reduce task calls
:func:`commit_stage`, which publishes every shard at once with the stage's funnel in the manifest.
What moves between the two through XCom is a :class:`ShardResult`: file names and counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from infinisynth.llm import LLMClient, RoleConfig, UsageMeter
from infinisynth.llm.usage import format_table
from infinisynth.records import REJECTED_SCHEMA
from infinisynth.runner import Checkpoint, ShardRun, run_shard, split_outcomes
from infinisynth.stages.base import BatchStage, Stage
from infinisynth.storage import DataFile, Store

log = logging.getLogger(__name__)

StageFactory = Callable[[LLMClient], Stage]


@dataclass
class ShardResult:
    shard: int
    rows_in: int
    output: dict[str, Any]  # DataFile as a dict
    rejected: dict[str, Any] | None = None  # no file: nothing rejected in this shard
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    resumed: int = 0
    stats: dict[str, Any] = field(default_factory=dict)  # a batch step's own counts (e.g. per language)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AccountingError(RuntimeError):
    """Rows went missing between a stage's input and its output plus rejected tables."""


def run_stage_shard(
    store: Store,
    pipeline: str,
    stage_name: str,
    ds: str,
    shard: int,
    rows: Sequence[dict[str, Any]],
    role: RoleConfig,
    make_stage: StageFactory,
) -> ShardResult:
    """Run ``make_stage(client)`` over ``rows``; write (uncommitted) output and rejected files."""
    usage = UsageMeter()
    checkpoint = Checkpoint(store, store.work_dir(pipeline, stage_name, ds, shard))

    async def go() -> tuple[Stage, ShardRun]:
        async with LLMClient(role, usage) as client:
            stage = make_stage(client)
            run = await run_shard(
                stage,
                rows,
                usage=usage,
                checkpoint=checkpoint,
                concurrency=role.max_concurrency,
                label=f"{pipeline}.{stage_name} shard {shard}",
            )
            return stage, run

    stage, run = asyncio.run(go())
    result = _write_outcomes(store, pipeline, stage_name, ds, shard, run, stage.schema)
    log.info("%s.%s shard %d model usage this attempt:\n%s", pipeline, stage_name, shard, usage.table())
    return result


def _write_outcomes(store: Store, pipeline: str, stage_name: str, ds: str, shard: int, run: ShardRun, schema: pa.Schema) -> ShardResult:
    """A shard's output and rejected rows as data files nobody sees until the stage commits."""
    outputs, rejects = split_outcomes(stage_name, run)
    output_file = store.partition(pipeline, stage_name, ds).write_table(shard, pa.Table.from_pylist(outputs, schema=schema), schema)
    rejected_file = store.rejected(pipeline, stage_name, ds).write_table(
        shard, pa.Table.from_pylist(rejects, schema=REJECTED_SCHEMA), REJECTED_SCHEMA
    )
    by_reason = dict(Counter(r["reason"] for r in rejects))
    log.info(
        "%s.%s shard %d: %d in, %d out, %d rejected %s",
        pipeline,
        stage_name,
        shard,
        len(run.outcomes),
        len(outputs),
        len(rejects),
        by_reason or "",
    )
    return ShardResult(
        shard=shard,
        rows_in=len(run.outcomes),
        output=output_file.to_dict(),
        rejected=rejected_file.to_dict(),
        rejected_by_reason=by_reason,
        usage=run.usage,
        resumed=run.resumed,
    )


def run_batch_shard(store: Store, pipeline: str, ds: str, shard: int, rows: Sequence[dict[str, Any]], stage: BatchStage) -> ShardResult:
    """Run a batch step over one shard in one call; write (uncommitted) output and rejected files."""
    outcomes = asyncio.run(stage.process_batch(rows))
    if len(outcomes) != len(rows):
        raise AccountingError(f"{pipeline}.{stage.name} shard {shard}: {len(outcomes)} outcomes for {len(rows)} rows")
    run = ShardRun(outcomes=list(zip(rows, outcomes)))
    result = _write_outcomes(store, pipeline, stage.name, ds, shard, run, stage.schema)
    result.stats = stage.shard_stats(rows, outcomes)
    return result


def commit_stage(
    store: Store,
    pipeline: str,
    stage_name: str,
    ds: str,
    schema: pa.Schema,
    shard_results: Sequence[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    inputs_passed: int | None = None,
) -> dict[str, Any]:
    """Publish all shards of a stage at once; return (and record) the stage's funnel entry.

    Checks the invariant before publishing: every input row is either behind an output row or in
    the rejected table.
    """
    results = [ShardResult(**r) for r in shard_results]
    if not results:  # nothing was mapped (an empty upstream): publish an empty table, not nothing
        empty = store.partition(pipeline, stage_name, ds).write_table(0, schema.empty_table(), schema)
        no_rejects = store.rejected(pipeline, stage_name, ds).write_table(0, REJECTED_SCHEMA.empty_table(), REJECTED_SCHEMA)
        results = [ShardResult(shard=0, rows_in=0, output=empty.to_dict(), rejected=no_rejects.to_dict())]
    rows_in = sum(r.rows_in for r in results)
    rejected = sum(r.rejected["rows"] for r in results if r.rejected)
    out = sum(r.output["rows"] for r in results)
    by_reason: Counter[str] = Counter()
    usage = UsageMeter()
    for r in results:
        by_reason.update(r.rejected_by_reason)
        usage.merge(r.usage)
    if sum(by_reason.values()) != rejected:
        raise AccountingError(f"{pipeline}.{stage_name} {ds}: rejected rows and their reasons disagree")
    if rejected > rows_in:
        raise AccountingError(f"{pipeline}.{stage_name} {ds}: {rejected} rejected of {rows_in} input rows")
    passed = rows_in - rejected if inputs_passed is None else inputs_passed  # a selection passes only some
    if passed + rejected > rows_in:
        raise AccountingError(f"{pipeline}.{stage_name} {ds}: {passed} passed and {rejected} rejected of {rows_in} input rows")
    funnel = {
        "stage": stage_name,
        "rows_in": rows_in,
        "inputs_passed": passed,
        "rows_out": out,
        "rejected": rejected,
        "rejected_by_reason": dict(by_reason.most_common()),
        "resumed_rows": sum(r.resumed for r in results),
        "usage": usage.snapshot(),
    }
    manifest_meta = {"pipeline": pipeline, "stage": stage_name, "ds": ds, "funnel": funnel, **(meta or {})}
    store.rejected(pipeline, stage_name, ds).commit(
        [DataFile.from_dict(r.rejected) for r in results if r.rejected], REJECTED_SCHEMA, manifest_meta
    )
    store.partition(pipeline, stage_name, ds).commit([DataFile.from_dict(r.output) for r in results], schema, manifest_meta)
    # Checkpoints only matter until the stage is published.
    work = store.work_dir(pipeline, stage_name, ds, 0).rsplit("/", 1)[0]
    if store.fs.exists(work):
        store.fs.rm(work, recursive=True)
    log.info("%s.%s %s published\n%s", pipeline, stage_name, ds, funnel_table([funnel]))
    return funnel


def funnel_table(funnel: Sequence[dict[str, Any]]) -> str:
    """Stages as rows: in, passed, out, rejected (top reasons), tokens."""
    rows: list[tuple[Any, ...]] = [("stage", "in", "passed", "out", "rejected", "tokens", "top reject reasons")]
    for entry in funnel:
        tokens = sum(u.get("total_tokens", 0) for u in entry.get("usage", {}).values())
        reasons = ", ".join(f"{k}={v}" for k, v in list(entry.get("rejected_by_reason", {}).items())[:3])
        rows.append(
            (entry["stage"], entry["rows_in"], entry["inputs_passed"], entry["rows_out"], entry["rejected"], tokens, reasons or "-")
        )
    return format_table(rows)
