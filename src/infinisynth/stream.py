"""A fused chain streamed: rows flow through a mapped task's steps as each one finishes.

A mapped task runs its step and the steps fused after it (:meth:`PipelineSpec.chain`). Staged,
each step waits for the whole shard of the one before it: the endpoint idles while the slowest
rows of a step finish, and the lint gate runs only once every answer is in. Streamed, every step
of the chain is one asyncio task reading a :class:`RowPipe` that its predecessor fills: a row a
step passes is on its way to the next step while the rest of the shard is still in flight; a row
it rejects or leaves pending goes no further.

- **Model steps** keep the runner (:func:`infinisynth.runner.run_shard`): their own concurrency,
  client, usage meter and checkpoints, keyed by row id and cache key. A retried task re-streams the
  shard: rows an earlier attempt finished come back from each step's checkpoint with no new call,
  so they reach the next step at once and find its checkpoint too.
- **Batch steps** (the lint and test gates) take micro-batches of what has arrived (up to
  :data:`MICRO_BATCH_ROWS`, waiting at most :data:`MICRO_BATCH_SECONDS` for more) and check each in
  a worker thread with an event loop of its own, so this loop keeps serving model calls meanwhile.
  A gate's per-shard stats are computed over the whole shard at the end, as staged.
- **The accounting is the staged one's.** Each step writes its output, rejected and pending rows
  as its shard's files in the order a staged run writes them (its input's order), with the same
  :class:`~infinisynth.shards.ShardResult`; a row reaches the next step as it would read it back
  from this step's data file (the schema's columns and types), so both runs ask the same questions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from infinisynth.llm import LLMClient, ResponseCache, UsageMeter
from infinisynth.llm.prices import role_price
from infinisynth.runner import Checkpoint, Emit, ShardRun, run_shard, split_outcomes
from infinisynth.shards import AccountingError, write_outcomes
from infinisynth.spec import Step
from infinisynth.stages.base import BatchStage, Outcome, Passed, Row
from infinisynth.steps import RunContext, enabled, model_stage, role_of, stage_class

log = logging.getLogger(__name__)

# PyLint and ESLint take about 0.5 s of CPU to start: a micro-batch pays that once for many
# answers, so it waits long for more rows (the scheduler benchmark's linters took 71 s of CPU at
# 100 rows / 2 s, 46 s at 100 / 10 s, 18 s staged); the shard's last rows go at once, when the
# step before ends.
MICRO_BATCH_ROWS = 200
MICRO_BATCH_SECONDS = 20.0  # how long a started micro-batch waits for more rows


class RowPipe:
    """Rows from one step of a chain to the next: an unbounded queue its writer closes."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Row | None] = asyncio.Queue()

    def put(self, row: Row) -> None:
        self._queue.put_nowait(row)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[Row]:
        while (row := await self._queue.get()) is not None:
            yield row

    async def batches(self, size: int, seconds: float) -> AsyncIterator[list[Row]]:
        """The rows in batches: a batch starts with the next row and takes what arrives within
        ``seconds`` of it, up to ``size`` rows (all of them at once when they are already there)."""
        loop = asyncio.get_running_loop()
        while (first := await self._queue.get()) is not None:
            batch = [first]
            deadline = loop.time() + seconds
            while len(batch) < size:
                try:
                    async with asyncio.timeout_at(deadline):
                        row = await self._queue.get()
                except TimeoutError:
                    break
                if row is None:
                    yield batch
                    return
                batch.append(row)
            yield batch


class Forward:
    """What a step passes on to the next: each output row once (by id, as the staged data file
    keeps it), shaped as the next step would read it back from that file."""

    def __init__(self, pipe: RowPipe, schema: pa.Schema):
        self.pipe = pipe
        self.shape = shaper(pa.struct(list(schema)))
        self.seen: set[str] = set()

    def __call__(self, row: Row, outcome: Outcome) -> None:
        if not isinstance(outcome, Passed):
            return
        for out in outcome.rows:
            if out["id"] not in self.seen:
                self.seen.add(out["id"])
                self.pipe.put(self.shape(out))


def shaper(datatype: pa.DataType) -> Callable[[Any], Any]:
    """A value as Arrow gives it back once written as ``datatype``: a row keeps exactly its
    schema's fields (missing ones None), numbers take the field's type, lists are lists. A Python
    function, as an Arrow round trip per row cost about 0.5 ms of the event loop's time."""
    if pa.types.is_struct(datatype):
        fields = [(field.name, shaper(field.type)) for field in datatype]
        return lambda value: None if value is None else {name: shape(value.get(name)) for name, shape in fields}
    if pa.types.is_list(datatype) or pa.types.is_large_list(datatype):
        item = shaper(datatype.value_type)
        return lambda value: None if value is None else [item(v) for v in value]
    if pa.types.is_floating(datatype):
        return lambda value: None if value is None else float(value)
    if pa.types.is_integer(datatype):
        return lambda value: None if value is None else int(value)
    if pa.types.is_string(datatype) or pa.types.is_large_string(datatype) or pa.types.is_boolean(datatype):
        return lambda value: value
    return lambda value: pa.array([value], datatype).to_pylist()[0]  # any other type: Arrow itself


def keep(row: Row, outcome: Outcome) -> None:
    """The last step's outcomes go nowhere but its files."""


@dataclass
class StreamedStep:
    """One step's run over the shard, before its files are written."""

    step: Step
    schema: pa.Schema
    run: ShardRun
    gate: BatchStage | None = None  # a batch step: its shard stats go into the result


def stream_chains(ctx: RunContext, chains: list[list[Step]], shard: int, rows: list[Row], cache: ResponseCache | None) -> dict[str, Any]:
    """Run ``chains`` (a mapped task's chain and those beside it) side by side over one shard's
    ``rows``, each streamed; ``{step: ShardResult}`` of every step."""
    streamed = asyncio.run(_stream_all(ctx, chains, shard, rows, cache))
    results: dict[str, Any] = {}
    for chain_steps in streamed:
        results.update(write_chain(ctx, shard, chain_steps))
    return results


async def _stream_all(
    ctx: RunContext, chains: list[list[Step]], shard: int, rows: list[Row], cache: ResponseCache | None
) -> list[list[StreamedStep]]:
    # Gates are built first: one that cannot run (no sandbox) fails the task before any model call.
    gates = {
        step.name: stage_class(step).from_context(ctx).for_micro_batches() for chain in chains for step in chain if step.kind == "batch"
    }
    runs = [_stream(ctx, chain, gates, shard, rows, cache) for chain in chains]
    tasks = [task for run in runs for task in run]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        # One step failed: stop the others, each saving the checkpoints of the rows it finished.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return [[task.result() for task in run] for run in runs]


def _stream(
    ctx: RunContext, chain: list[Step], gates: dict[str, BatchStage], shard: int, rows: list[Row], cache: ResponseCache | None
) -> list[asyncio.Task[StreamedStep]]:
    """One asyncio task per step of ``chain``, each reading the pipe its predecessor fills."""
    pipes = [RowPipe() for _ in chain]
    for row in rows:
        pipes[0].put(row)
    pipes[0].close()
    tasks = []
    for position, step in enumerate(chain):
        last = position + 1 == len(chain)
        emit = keep if last else Forward(pipes[position + 1], stage_class(step).schema)
        if step.name in gates:
            work = _batch_step(step, gates[step.name], pipes[position], emit)
        else:
            work = _model_step(ctx, step, shard, pipes[position], emit, cache)
        tasks.append(asyncio.create_task(_closing(work, None if last else pipes[position + 1])))
    return tasks


async def _closing(work: Any, downstream: RowPipe | None) -> StreamedStep:
    """Run one step, then tell the next one that no more rows are coming."""
    streamed: StreamedStep = await work
    if downstream is not None:
        downstream.close()
    return streamed


async def _model_step(ctx: RunContext, step: Step, shard: int, source: RowPipe, emit: Emit, cache: ResponseCache | None) -> StreamedStep:
    cls = stage_class(step)
    rows = _prepared(cls, source, enabled(ctx, step))
    first = await anext(rows, None)
    if first is None:  # nothing reached this step (or it is switched off): no client, no checkpoint
        return StreamedStep(step, cls.schema, ShardRun(outcomes=[]))
    role = ctx.role(role_of(step, cls))
    usage = UsageMeter(prices={role.role: role_price(role)})
    checkpoint = Checkpoint(ctx.store, ctx.store.work_dir(ctx.spec.name, step.name, ctx.ds, shard))
    label = f"{ctx.spec.name}.{step.name} shard {shard}"
    async with LLMClient(role, usage, cache) as client:
        stage = model_stage(ctx, step)(client)
        run = await run_shard(
            stage, _starting_with(first, rows), usage=usage, checkpoint=checkpoint, concurrency=role.max_concurrency, label=label, emit=emit
        )
    log.info("%s model usage this attempt:\n%s", label, usage.table())
    return StreamedStep(step, stage.schema, run)


async def _prepared(cls: Any, source: RowPipe, on: bool) -> AsyncIterator[Row]:
    """The rows a model step takes from its input (``prepare_rows``, row by row); a switched-off
    step drains its input and takes none, as staged."""
    async for row in source:
        if on:
            for prepared in cls.prepare_rows([row]):
                yield prepared


async def _starting_with(first: Row, rest: AsyncIterator[Row]) -> AsyncIterator[Row]:
    yield first
    async for row in rest:
        yield row


async def _batch_step(step: Step, gate: BatchStage, source: RowPipe, emit: Emit) -> StreamedStep:
    run = ShardRun(outcomes=[])
    async for batch in source.batches(MICRO_BATCH_ROWS, MICRO_BATCH_SECONDS):
        # The gate's own loop in a worker thread: its parsing and process handling leave this
        # loop free for the model calls still in flight.
        judged = await asyncio.to_thread(asyncio.run, gate.process_batch(batch))
        if len(judged) != len(batch):
            raise AccountingError(f"{step.name}: {len(judged)} outcomes for a micro-batch of {len(batch)} rows")
        run.done(list(zip(batch, judged)))
        for row, outcome in zip(batch, judged):
            emit(row, outcome)
    return StreamedStep(step, gate.schema, run, gate=gate)


def write_chain(ctx: RunContext, shard: int, streamed: list[StreamedStep]) -> dict[str, Any]:
    """Each step's shard files and result, in chain order. A step's outcomes are put in its input's
    order (its predecessor's output file), so the files are the staged run's. A model step with
    too many pending rows raises :class:`~infinisynth.shards.TransientFailures` here, as staged;
    the steps after it have saved their checkpoints for the retry."""
    results: dict[str, Any] = {}
    upstream_order: dict[str, int] | None = None  # the previous step's output ids, in file order
    for item in streamed:
        run = item.run
        if upstream_order is not None:
            order = upstream_order
            run.outcomes.sort(key=lambda pair: order.get(pair[0]["id"], len(order)))
        share = None if item.gate is not None else ctx.settings.max_transient_share
        result = write_outcomes(ctx.store, ctx.spec.name, item.step.name, ctx.ds, shard, run, item.schema, share)
        if item.gate is not None:
            result.stats = item.gate.shard_stats([row for row, _ in run.outcomes], [outcome for _, outcome in run.outcomes])
        else:
            result.processed, result.row_seconds, result.elapsed = run.processed, round(run.row_seconds, 3), round(run.elapsed, 3)
        results[item.step.name] = result.to_dict()
        outputs, _ = split_outcomes(item.step.name, run)
        upstream_order = {row["id"]: n for n, row in enumerate(outputs)}
    return results
