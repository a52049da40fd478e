"""Run a model-calling stage over one shard: bounded concurrency, progress, checkpoints, outcomes.

Every input row ends in exactly one outcome: :class:`Passed` (one or more output rows) or
:class:`Rejected` (a reason). Final outcomes are saved to the shard's checkpoint as they
complete, keyed by the row's id *and* the stage's cache key (prompt version, model, settings), so a
killed or retried task pays only for rows that had not finished, and a changed prompt or model
never reuses an old answer. Transient rejections (the model call did not complete:
:attr:`Rejected.transient`) are never saved: a retried task does exactly those rows again. Rows
still transient when the shard ends are its *pending* rows (:attr:`ShardRun.pending`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from infinisynth.llm import LLMRejection, UsageMeter
from infinisynth.records import REJECTED_SCHEMA, canonical_json
from infinisynth.stages.base import Outcome, Passed, Rejected, Stage, rejected_row
from infinisynth.storage import Store, is_local

log = logging.getLogger(__name__)


_CHECKPOINT_SCHEMA = pa.schema([("key", pa.string()), ("outcome", pa.string())])


class Checkpoint:
    """Final outcomes of one shard, appended in small Parquet chunks under the work dir."""

    def __init__(self, store: Store, directory: str):
        self.store = store
        self.directory = directory

    def load(self) -> tuple[dict[str, Outcome], dict[str, dict[str, Any]]]:
        """Final outcomes by key, and the token usage the earlier attempts spent on them.

        A transient rejection (saved by an older version) is not an outcome: its row is done again.
        """
        outcomes: dict[str, Outcome] = {}
        usage = UsageMeter()
        try:
            paths = sorted(self.store.fs.ls(self.directory, detail=False))
        except FileNotFoundError:
            return outcomes, {}
        for path in paths:
            if not path.endswith(".parquet"):
                continue
            try:
                with self.store.fs.open(path, "rb") as fh:
                    table = pq.read_table(fh)
            except (pa.ArrowInvalid, OSError) as exc:
                # A chunk cut short by a kill is worth nothing; its rows are simply done again.
                log.warning("ignoring unreadable checkpoint chunk %s (%s)", path, exc)
                continue
            meta = table.schema.metadata or {}
            if b"usage" in meta:
                usage.merge(json.loads(meta[b"usage"]))
            for key, text in zip(table.column("key").to_pylist(), table.column("outcome").to_pylist()):
                outcome = _outcome_from_json(text)
                if not (isinstance(outcome, Rejected) and outcome.transient):
                    outcomes[key] = outcome
        return outcomes, usage.snapshot()

    def save(self, done: Sequence[tuple[str, Outcome]], usage: dict[str, dict[str, Any]]) -> None:
        if not done:
            return
        table = pa.table(
            {"key": [k for k, _ in done], "outcome": [_outcome_to_json(o) for _, o in done]},
            schema=_CHECKPOINT_SCHEMA.with_metadata({"usage": json.dumps(usage)}),
        )
        self.store.fs.makedirs(self.directory, exist_ok=True)
        name = f"chunk-{time.time_ns()}-{uuid.uuid4().hex[:6]}.parquet"
        tmp = posixpath.join(self.directory, f".{name}.tmp")
        final = posixpath.join(self.directory, name)
        with self.store.fs.open(tmp if is_local(self.store.fs) else final, "wb") as fh:
            pq.write_table(table, fh)
        if is_local(self.store.fs):
            self.store.fs.mv(tmp, final)

    def clear(self) -> None:
        if self.store.fs.exists(self.directory):
            self.store.fs.rm(self.directory, recursive=True)


@dataclass
class ShardRun:
    """Outcomes in input order, plus what the run cost and how much came from the checkpoint."""

    outcomes: list[tuple[dict[str, Any], Outcome]]
    resumed: int = 0
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    processed: int = 0  # rows processed by this attempt (not from the checkpoint)
    row_seconds: float = 0.0  # their summed wall time, one row from its start to its outcome
    elapsed: float = 0.0  # this attempt's wall time
    first_done: float | None = None  # when its first and last outcomes were known (time.time())
    last_done: float | None = None

    def done(self, outcomes: Sequence[tuple[dict[str, Any], Outcome]]) -> None:
        """Record ``outcomes`` as known now."""
        self.outcomes.extend(outcomes)
        now = time.time()
        self.first_done = self.first_done or now
        self.last_done = now

    @property
    def pending(self) -> list[tuple[dict[str, Any], Rejected]]:
        """Rows whose model call did not complete (transient rejections), in input order."""
        return [(row, o) for row, o in self.outcomes if isinstance(o, Rejected) and o.transient]


Emit = Callable[[dict[str, Any], Outcome], None]


async def run_shard(
    stage: Stage,
    rows: Sequence[dict[str, Any]] | AsyncIterable[dict[str, Any]],
    *,
    usage: UsageMeter,
    checkpoint: Checkpoint | None = None,
    concurrency: int = 16,
    flush_rows: int = 25,
    flush_seconds: float = 10.0,
    label: str = "",
    progress_seconds: float = 15.0,
    emit: Emit | None = None,
) -> ShardRun:
    """Process ``rows`` with at most ``concurrency`` in flight; checkpoint final outcomes as they finish.

    ``rows`` is a shard's list, or a stream of rows that arrive while earlier ones are in flight
    (the upstream step of a fused chain, :mod:`infinisynth.stream`). ``emit(row, outcome)`` hears
    every outcome as soon as it is known, a checkpointed one included."""
    label = label or stage.name
    quiet_http_logs()
    saved, earlier_usage = checkpoint.load() if checkpoint else ({}, {})
    received: list[tuple[str, dict[str, Any]]] = []  # (key, row) in arrival order
    results: dict[str, Outcome] = {}
    resumed = 0
    first_done = last_done = None  # when the first and the last outcome were known

    unsaved: list[tuple[str, Outcome]] = []  # final outcomes not yet in the checkpoint
    usage_at_flush = usage.snapshot()
    last_flush = last_report = time.monotonic()
    started = time.monotonic()
    finished = 0
    row_seconds = 0.0
    client = getattr(stage, "client", None)  # its concurrency limit goes in the progress line

    def flush(force: bool = False) -> None:
        nonlocal unsaved, usage_at_flush, last_flush
        if checkpoint is None or not unsaved:
            return
        if not force and len(unsaved) < flush_rows and time.monotonic() - last_flush < flush_seconds:
            return
        now_usage = usage.snapshot()
        checkpoint.save(unsaved, _usage_delta(now_usage, usage_at_flush))
        unsaved, usage_at_flush, last_flush = [], now_usage, time.monotonic()

    def report() -> str:
        return progress_line(label, len(results), len(received), results.values(), finished, started, usage, client)

    def settle(key: str, row: dict[str, Any], outcome: Outcome) -> None:
        nonlocal first_done, last_done
        results[key] = outcome
        last_done = time.time()
        first_done = first_done or last_done
        if emit is not None:
            emit(row, outcome)

    async def one(key: str, row: dict[str, Any]) -> None:
        nonlocal finished, last_report, row_seconds
        began = time.monotonic()
        outcome = await _guarded(stage.process, row)
        row_seconds += time.monotonic() - began
        if not (isinstance(outcome, Rejected) and outcome.transient):  # a transient one is redone, not kept
            unsaved.append((key, outcome))
        finished += 1
        settle(key, row, outcome)
        flush()
        if time.monotonic() - last_report >= progress_seconds:
            last_report = time.monotonic()
            log.info("%s", report())

    # A bounded window of tasks, not one per row: memory stays flat on large shards.
    running: set[asyncio.Task[None]] = set()
    try:
        async for row in _as_stream(rows):
            key = f"{row['id']}:{stage.cache_key(row)}"
            received.append((key, row))
            if key in saved:  # finished by an earlier attempt: no new call
                resumed += 1
                settle(key, row, saved[key])
                continue
            running.add(asyncio.create_task(one(key, row)))
            if len(running) >= concurrency:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
        if running:
            for returned in await asyncio.gather(*running, return_exceptions=True):
                if isinstance(returned, BaseException):
                    raise returned
    except BaseException:
        for task in running:  # the shard failed or its chain was stopped: nobody waits for these rows
            task.cancel()
        raise
    finally:
        flush(force=True)  # whatever finished survives a crash of the rest

    if resumed:
        log.info("%s: resumed %d of %d rows from an earlier attempt", label, resumed, len(received))
    log.info("%s", report())
    total_usage = UsageMeter()
    total_usage.merge(earlier_usage)
    total_usage.merge(usage.snapshot())
    return ShardRun(
        outcomes=[(row, results[key]) for key, row in received],
        resumed=resumed,
        usage=total_usage.snapshot(),
        processed=finished,
        row_seconds=row_seconds,
        elapsed=time.monotonic() - started,
        first_done=first_done,
        last_done=last_done,
    )


async def _as_stream(rows: Sequence[dict[str, Any]] | AsyncIterable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
    else:
        for row in rows:
            yield row


# Loggers that write one line per HTTP request (or retry) at INFO: a task log keeps progress lines
# and warnings, not thousands of "HTTP Request: POST ..." lines. A level someone set stays.
HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai")


def quiet_http_logs() -> None:
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


async def _guarded(process: Callable[[dict[str, Any]], Awaitable[Outcome]], row: dict[str, Any]) -> Outcome:
    try:
        return await process(row)
    except LLMRejection as rejection:
        return Rejected(rejection.reason, rejection.detail, rejection.raw_answer)


def split_outcomes(stage: str, run: ShardRun) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(output rows, rejected rows) of a shard, in input order, outputs deduplicated by id.

    Only final rejections are rejected rows; pending rows (:attr:`ShardRun.pending`) are in neither.
    """
    outputs: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row, outcome in run.outcomes:
        if isinstance(outcome, Rejected):
            if not outcome.transient:
                rejects.append(rejected_row(stage, row, outcome))
            continue
        for out in outcome.rows:
            if out["id"] not in seen:
                seen.add(out["id"])
                outputs.append(out)
    return outputs, rejects


def rejected_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA)


def progress_line(
    label: str, done: int, total: int, outcomes: Any, finished: int, started: float, usage: UsageMeter, client: Any = None
) -> str:
    """One progress line of a shard: rows done/total, rejected and pending, rate, ETA, tokens,
    dollars so far (this attempt) and the role's concurrency limit, e.g.
    ``gen.reverse shard 3: 40/200 rows (20%), 2 rejected, 0 pending, 3.1 rows/s, ETA 52s,
    18,204 tokens, $0.0121 so far, 5 answers from the response cache, concurrency 8``.

    The rate counts the rows this attempt processed (not those resumed from a checkpoint). The
    concurrency is the client's current limit (``concurrency_now`` when it adapts one, else its
    ``max_concurrency``); omitted without a client."""
    rejections = [o for o in outcomes if isinstance(o, Rejected)]
    pending = sum(o.transient for o in rejections)
    elapsed = max(time.monotonic() - started, 1e-9)
    rate = finished / elapsed
    left = total - done
    eta = "ETA 0s" if not left else (f"ETA {_duration(left / rate)}" if rate > 0 else "ETA unknown")
    totals = usage.totals()
    dollars = f"${totals.dollars:.4f} so far" if totals.priced else "unpriced model"
    line = (
        f"{label}: {done}/{total} rows ({100.0 * done / max(total, 1):.0f}%), {len(rejections) - pending} rejected, "
        f"{pending} pending (call did not complete), {rate:.1f} rows/s, {eta}, {totals.total_tokens:,} tokens, {dollars}, "
        f"{totals.cached_requests} answers from the response cache"
    )
    limit = getattr(client, "concurrency_now", None)
    if limit is None:
        limit = getattr(getattr(client, "config", None), "max_concurrency", None)
    return line if limit is None else f"{line}, concurrency {limit}"


def _duration(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h07m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _usage_delta(now: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    delta = {}
    for key, values in now.items():
        prior = before.get(key, {})
        delta[key] = {k: v - prior.get(k, 0) for k, v in values.items() if k != "total_tokens"}
    return delta


def _outcome_to_json(outcome: Outcome) -> str:
    if isinstance(outcome, Passed):
        return canonical_json({"passed": outcome.rows})
    return canonical_json({"rejected": asdict(outcome)})


def _outcome_from_json(text: str) -> Outcome:
    body = json.loads(text)
    if "passed" in body:
        return Passed(body["passed"])
    return Rejected(**body["rejected"])
