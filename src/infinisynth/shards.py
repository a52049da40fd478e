"""Run a model-calling stage over one shard of a partition, and commit a stage's shards.

The mapped Airflow task for shard N calls :func:`run_stage_shard`; it writes the shard's output
and rejected rows as data files that stay invisible until the reduce task calls
:func:`commit_stage`, which publishes every shard at once with the stage's funnel in the manifest.
What moves between the two through XCom is a :class:`ShardResult`: file names and counts.

Rows whose model call did not complete (transient rejections: 429s, 5xx, timeouts, dropped
connections, broken bodies, after the client's retries) are *pending*: neither published nor
rejected, counted and named in the shard result and the manifest. A shard with more of them than
its bound (``max_transient_share``) fails its task with :class:`TransientFailures` instead, so
Airflow retries it (the retry redoes exactly those rows) and the run goes red if they stay lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from infinisynth.llm import LLMClient, ResponseCache, RoleConfig, UsageMeter
from infinisynth.llm.prices import role_price
from infinisynth.llm.usage import dollars_text, format_table, sum_usage
from infinisynth.records import REJECTED_SCHEMA, content_id
from infinisynth.runner import Checkpoint, ShardRun, run_shard, split_outcomes
from infinisynth.stages.base import BatchStage, Passed, Stage
from infinisynth.storage import DataFile, Store

if TYPE_CHECKING:
    from infinisynth.llm.batch import BatchCollector

log = logging.getLogger(__name__)

StageFactory = Callable[[LLMClient], Stage]

MAX_PENDING_IDS = 200  # pending row ids a shard result names (the count is always exact)
ROWS_FINISHED = "stage rows finished:"  # the log line benchmarks/bench_code_pipeline_scheduler.py reads


@dataclass
class ShardResult:
    shard: int
    rows_in: int
    output: dict[str, Any]  # DataFile as a dict
    rejected: dict[str, Any] | None = None  # no file: nothing rejected in this shard
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    resumed: int = 0
    stats: dict[str, Any] = field(default_factory=dict)  # a batch step's own counts (e.g. per language)
    passed: int | None = None  # inputs that passed (None: not counted, e.g. a global step's extra shards)
    pending: int = 0  # inputs whose model call did not complete: neither published nor rejected
    pending_by_reason: dict[str, int] = field(default_factory=dict)
    pending_ids: list[str] = field(default_factory=list)  # the first MAX_PENDING_IDS of them
    pending_errors: dict[str, str] = field(default_factory=dict)  # the last error's detail per reason
    processed: int = 0  # rows this attempt processed (not resumed from a checkpoint)
    row_seconds: float = 0.0  # their summed wall time, each from its start to its outcome
    elapsed: float = 0.0  # the attempt's wall time over the shard
    estimate: dict[str, Any] = field(default_factory=dict)  # an estimate run's sample: see infinisynth.estimate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AccountingError(RuntimeError):
    """Rows went missing between a stage's input and its output, rejected and pending rows."""


class TransientFailures(RuntimeError):
    """Too many rows of a shard lost their model call to transient failures: the task fails, so
    Airflow retries it (only those rows are redone), and the run fails if they stay lost."""


def run_stage_shard(
    store: Store,
    pipeline: str,
    stage_name: str,
    ds: str,
    shard: int,
    rows: Sequence[dict[str, Any]],
    role: RoleConfig,
    make_stage: StageFactory,
    *,
    cache: ResponseCache | None = None,
    max_transient_share: float | None = None,
) -> ShardResult:
    """Run ``make_stage(client)`` over ``rows``; write (uncommitted) output and rejected files.

    ``cache``: the response cache the client reads and fills (None: every call goes to the model).
    ``max_transient_share``: the share of rows that may stay pending; above it, this raises
    :class:`TransientFailures` before writing anything (None: no bound, the caller decides).
    """
    usage = UsageMeter(prices={role.role: role_price(role)})
    checkpoint = Checkpoint(store, store.work_dir(pipeline, stage_name, ds, shard))
    label = f"{pipeline}.{stage_name} shard {shard}"

    async def go(config: RoleConfig = role, collector: BatchCollector | None = None) -> tuple[Stage, ShardRun]:
        nonlocal usage
        if collector is not None:  # batch mode: each pass its own meter (the checkpoint holds earlier passes')
            usage = UsageMeter(prices=usage.prices)
        async with LLMClient(config, usage, cache) as client:
            client.collector = collector
            stage = make_stage(client)
            run = await run_shard(stage, rows, usage=usage, checkpoint=checkpoint, concurrency=config.max_concurrency, label=label)
            return stage, run

    if not rows:  # nothing to ask (e.g. seeds without problems): no client, no event loop, no checkpoint
        stage, run = make_stage(LLMClient(role)), ShardRun(outcomes=[])
    elif role.mode == "batch":
        stage, run = _run_batched(store, checkpoint.directory, rows, role, make_stage, go, label)
    else:
        stage, run = asyncio.run(go())
    if rows:
        log.info("%s.%s shard %d model usage this attempt:\n%s", pipeline, stage_name, shard, usage.table())
    result = write_outcomes(store, pipeline, stage_name, ds, shard, run, stage.schema, max_transient_share)
    result.processed, result.row_seconds, result.elapsed = run.processed, round(run.row_seconds, 3), round(run.elapsed, 3)
    return result


def _run_batched(
    store: Store,
    work_dir: str,
    rows: Sequence[dict[str, Any]],
    role: RoleConfig,
    make_stage: StageFactory,
    go: Callable[..., Coroutine[Any, Any, tuple[Stage, ShardRun]]],
    label: str,
) -> tuple[Stage, ShardRun]:
    """A shard of a role in batch mode (:mod:`infinisynth.llm.batch`): the last batch read in (or
    :class:`~infinisynth.llm.batch.BatchPending` while it runs), a pass with its answers, and the
    requests that pass still needs sent as the next batch (:class:`BatchPending` again), or online
    once the shard has had ``batch_max_rounds`` batches."""
    from infinisynth.llm.batch import ShardBatches

    probe = make_stage(LLMClient(role))  # only for its fingerprint: the batches of this stage version
    key = content_id(role.base_url, role.model, sorted({probe.cache_key(row) for row in rows}))
    batches = ShardBatches(store, posixpath.join(work_dir, "batch", key), role, label)
    asyncio.run(batches.settle())
    # Collecting sends nothing, so the role's request and token rates do not apply to it.
    collecting = role.model_copy(update={"requests_per_minute": None, "tokens_per_minute": None})
    collector = batches.collector()
    stage, run = asyncio.run(go(collecting, collector))
    batches.served()  # failures reported once as pending (the next attempt asks again), answers counted once
    if not collector.wanted:
        return stage, run
    if batches.rounds() < role.batch_max_rounds:
        raise asyncio.run(batches.submit(collector.wanted))
    log.warning(
        "%s: %d requests still unanswered after %d provider batches (batch_max_rounds); sending them online",
        label,
        len(collector.wanted),
        batches.rounds(),
    )
    return asyncio.run(go(role, batches.collector(online=True)))


def write_outcomes(
    store: Store,
    pipeline: str,
    stage_name: str,
    ds: str,
    shard: int,
    run: ShardRun,
    schema: pa.Schema,
    max_transient_share: float | None = None,
) -> ShardResult:
    """A shard's output and rejected rows as data files nobody sees until the stage commits; its
    pending rows counted and named (or :class:`TransientFailures` when there are too many)."""
    pending = run.pending
    pending_by_reason = dict(Counter(o.reason for _, o in pending).most_common())
    pending_errors = {o.reason: o.detail for _, o in pending}  # the last one per reason
    label = f"{pipeline}.{stage_name} shard {shard}"
    rows_in = len(run.outcomes)
    if pending and max_transient_share is not None and len(pending) > max_transient_share * rows_in:
        raise TransientFailures(
            f"{label}: {len(pending)} of {rows_in} rows ({len(pending) / rows_in:.0%}) got no answer "
            f"({_counts(pending_by_reason)}), more than max_transient_share={max_transient_share:g} allows; "
            f"last errors: {'; '.join(f'{reason}: {detail}' for reason, detail in pending_errors.items())}. "
            f"Nothing of them was saved: a retry of this task redoes exactly these rows "
            f"(e.g. {', '.join(str(row['id']) for row, _ in pending[:5])})."
        )
    if run.last_done is not None:  # for a timeline of the night: when this step's rows finished, per shard
        finished = {"step": stage_name, "shard": shard, "rows": rows_in, "first": run.first_done, "last": run.last_done}
        log.info("%s %s", ROWS_FINISHED, json.dumps(finished))
    outputs, rejects = split_outcomes(stage_name, run)
    output_file = store.partition(pipeline, stage_name, ds).write_table(shard, pa.Table.from_pylist(outputs, schema=schema), schema)
    rejected_file = store.rejected(pipeline, stage_name, ds).write_table(
        shard, pa.Table.from_pylist(rejects, schema=REJECTED_SCHEMA), REJECTED_SCHEMA
    )
    by_reason = dict(Counter(r["reason"] for r in rejects))
    log.info("%s: %d in, %d out, %d rejected %s", label, rows_in, len(outputs), len(rejects), by_reason or "")
    if pending:
        log.warning(
            "%s: %d rows got no answer (%s), pending: neither published nor rejected. Last errors: %s",
            label,
            len(pending),
            _counts(pending_by_reason),
            pending_errors,
        )
    return ShardResult(
        shard=shard,
        rows_in=rows_in,
        output=output_file.to_dict(),
        rejected=rejected_file.to_dict(),
        rejected_by_reason=by_reason,
        usage=run.usage,
        resumed=run.resumed,
        passed=sum(isinstance(o, Passed) for _, o in run.outcomes),
        pending=len(pending),
        pending_by_reason=pending_by_reason,
        pending_ids=[str(row["id"]) for row, _ in pending[:MAX_PENDING_IDS]],
        pending_errors=pending_errors,
    )


def _counts(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{reason}={n}" for reason, n in by_reason.items())


def run_batch_shard(store: Store, pipeline: str, ds: str, shard: int, rows: Sequence[dict[str, Any]], stage: BatchStage) -> ShardResult:
    """Run a batch step over one shard in one call; write (uncommitted) output and rejected files."""
    outcomes = asyncio.run(stage.process_batch(rows))
    if len(outcomes) != len(rows):
        raise AccountingError(f"{pipeline}.{stage.name} shard {shard}: {len(outcomes)} outcomes for {len(rows)} rows")
    run = ShardRun(outcomes=[])
    if rows:
        run.done(list(zip(rows, outcomes)))
    result = write_outcomes(store, pipeline, stage.name, ds, shard, run, stage.schema)
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

    Checks the invariant before publishing: every input row is behind an output row, in the
    rejected table, or pending (its model call did not complete; named in the manifest's
    ``pending_rows``): in = passed + rejected + pending.
    """
    results = [ShardResult(**r) for r in shard_results]
    if not results:  # nothing was mapped (an empty upstream): publish an empty table, not nothing
        empty = store.partition(pipeline, stage_name, ds).write_table(0, schema.empty_table(), schema)
        no_rejects = store.rejected(pipeline, stage_name, ds).write_table(0, REJECTED_SCHEMA.empty_table(), REJECTED_SCHEMA)
        results = [ShardResult(shard=0, rows_in=0, output=empty.to_dict(), rejected=no_rejects.to_dict(), passed=0)]
    where = f"{pipeline}.{stage_name} {ds}"
    rows_in = sum(r.rows_in for r in results)
    rejected = sum(r.rejected["rows"] for r in results if r.rejected)
    pending = sum(r.pending for r in results)
    out = sum(r.output["rows"] for r in results)
    by_reason: Counter[str] = Counter()
    pending_by_reason: Counter[str] = Counter()
    usage = UsageMeter()
    for r in results:
        by_reason.update(r.rejected_by_reason)
        pending_by_reason.update(r.pending_by_reason)
        usage.merge(r.usage)
    if sum(by_reason.values()) != rejected:
        raise AccountingError(f"{where}: rejected rows and their reasons disagree")
    if sum(pending_by_reason.values()) != pending:
        raise AccountingError(f"{where}: pending rows and their reasons disagree")
    if rejected + pending > rows_in:
        raise AccountingError(f"{where}: {rejected} rejected and {pending} pending of {rows_in} input rows")
    counted = [r.passed for r in results if r.rows_in]
    if inputs_passed is not None:  # a selection passes only some
        passed = inputs_passed
    elif counted and all(n is not None for n in counted):
        passed = sum(n or 0 for n in counted)
        if passed + rejected + pending != rows_in:
            raise AccountingError(f"{where}: {passed} passed + {rejected} rejected + {pending} pending != {rows_in} input rows")
    else:
        passed = rows_in - rejected - pending
    if passed + rejected + pending > rows_in:
        raise AccountingError(f"{where}: {passed} passed, {rejected} rejected and {pending} pending of {rows_in} input rows")
    funnel = {
        "stage": stage_name,
        "rows_in": rows_in,
        "inputs_passed": passed,
        "rows_out": out,
        "rejected": rejected,
        "rejected_by_reason": dict(by_reason.most_common()),
        "pending": pending,
        "pending_by_reason": dict(pending_by_reason.most_common()),
        "resumed_rows": sum(r.resumed for r in results),
        "usage": usage.snapshot(),  # per role/stage: requests, tokens, dollars (+ unpriced_requests)
        "dollars": round(usage.totals().dollars, 6),
    }
    if any(r.estimate for r in results):  # an estimate run: the step's projection goes beside its funnel
        from infinisynth.estimate import project_step, record_projection

        funnel["estimate"] = project_step(stage_name, [r.to_dict() for r in results])
    manifest_meta = {"pipeline": pipeline, "stage": stage_name, "ds": ds, "funnel": funnel, **(meta or {})}
    if pending:
        manifest_meta["pending_rows"] = {
            "ids": [i for r in results for i in r.pending_ids],  # at most MAX_PENDING_IDS per shard
            "last_error": {reason: detail for r in results for reason, detail in r.pending_errors.items()},
        }
    store.rejected(pipeline, stage_name, ds).commit(
        [DataFile.from_dict(r.rejected) for r in results if r.rejected], REJECTED_SCHEMA, manifest_meta
    )
    store.partition(pipeline, stage_name, ds).commit([DataFile.from_dict(r.output) for r in results], schema, manifest_meta)
    # Checkpoints only matter until the stage is published.
    work = store.work_dir(pipeline, stage_name, ds, 0).rsplit("/", 1)[0]
    if store.fs.exists(work):
        store.fs.rm(work, recursive=True)
    log.info("%s published\n%s", where, funnel_table([funnel]))
    if "estimate" in funnel:
        record_projection(store, pipeline, ds, funnel["estimate"])
    if rows_in and rejected == rows_in:
        log.warning("%s: every one of its %d input rows was rejected (%s)", where, rows_in, _counts(funnel["rejected_by_reason"]))
    if pending:
        log.warning(
            "%s: %d of %d input rows got no answer (%s): neither published nor rejected; a re-run of the date redoes them",
            where,
            pending,
            rows_in,
            _counts(funnel["pending_by_reason"]),
        )
    return funnel


def funnel_table(funnel: Sequence[dict[str, Any]]) -> str:
    """Stages as rows: in, passed, out, rejected, pending, tokens, dollars, top reasons (pending ones
    marked). Dollars are ``-`` for a step that made no model request, ``unpriced`` for a model with
    no known price."""
    rows: list[tuple[Any, ...]] = [("stage", "in", "passed", "out", "rejected", "pending", "tokens", "dollars", "top reject reasons")]
    for entry in funnel:
        usage = sum_usage(entry.get("usage", {}).values())
        tokens = usage.total_tokens
        reasons = [f"{k}={v}" for k, v in list(entry.get("rejected_by_reason", {}).items())[:3]]
        reasons += [f"{k}={v} (pending)" for k, v in list(entry.get("pending_by_reason", {}).items())[:2]]
        rows.append(
            (
                entry["stage"],
                entry["rows_in"],
                entry["inputs_passed"],
                entry["rows_out"],
                entry["rejected"],
                entry.get("pending", 0),
                tokens,
                dollars_text(usage) if usage.requests or usage.cached_requests else "-",
                ", ".join(reasons) or "-",
            )
        )
    if len(funnel) > 1:  # the night's model bill in one line
        night = sum_usage(u for entry in funnel for u in entry.get("usage", {}).values())
        money = dollars_text(night) if night.requests or night.cached_requests else "-"
        rows.append(("total", "", "", "", "", "", night.total_tokens, money, ""))
    return format_table(rows)
