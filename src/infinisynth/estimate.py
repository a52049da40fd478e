"""A projection before spending: the run's calls, tokens, dollars and wall time, from a sample.

A run with the ``estimate`` setting on (a Param of every pipeline) runs the whole DAG, but:

- **its tables live apart**: the run's store is ``{root}/_estimate`` (:func:`scratch_store`), so
  nothing it commits is a partition of the real tables, and its publishing tasks emit no asset
  event: the night does not look finished, and a real run of the date later starts from scratch;
- **each model step answers a sample**: its mapped task (:func:`sample_step_shard`) sends only
  the first ``estimate_sample`` rows of its shard to the model, without the response cache (so the
  sample measures what a run pays for), and the steps after it go on with the sample's output;
- **the rest is extrapolated**: every row carries a *scale*, the number of rows of the full run
  it stands for. A global step's first table has scale 1; a model step's sampled row stands for
  ``scale x shard rows / sample rows``, and so do its outputs; a global or batch step passes its
  input's scale on (linear in its input: a selection of a fixed size is over-projected).
  A step's commit adds up its shards (:func:`project_step`): calls, tokens, dollars at the role's
  price, and the wall time at the role's limits (see :func:`wall_time`). A role in batch mode
  answers its sample online; its dollars are projected at the batch price, its wall time as if
  online (a provider batch takes up to its completion window).

Each model step's projection is logged and written to ``{root}/{pipeline}/reports/ds=.../``
(``estimate-{step}.json``), and ``estimate.json`` there sums every step projected so far.
Not projected: model calls a global step makes itself (it runs, unsampled, on the sample's rows).
"""

from __future__ import annotations

import copy
import logging
import math
import posixpath
import time
from collections.abc import Sequence
from typing import Any

from infinisynth.llm.prices import Price, describe, role_price
from infinisynth.llm.usage import format_table, sum_usage
from infinisynth.storage import Partition, Store

log = logging.getLogger(__name__)

SCRATCH = "_estimate"
REPORT_AREA = "reports"
SUMMARY = "estimate.json"
# Mapped model tasks of one run that call a model at once (airflow_dag.MODEL_TASK's
# max_active_tis_per_dagrun; the llm pool may allow fewer).
PARALLEL_TASKS = 4


class ScratchStore(Store):
    """The store of an estimate run: ``{root}/_estimate`` on the same filesystem. ``home`` is the
    real store: where the projection report goes, and where the tables of *other* pipelines are
    read from (the diagnosis loop reads code_instruct's held-out slice); ``pipeline`` is the run's."""

    home: Store
    pipeline: str | None

    def partition(self, pipeline: str, stage: str, ds: str) -> Partition:
        return super().partition(pipeline, stage, ds) if self._own(pipeline) else self.home.partition(pipeline, stage, ds)

    def rejected(self, pipeline: str, stage: str, ds: str) -> Partition:
        return super().rejected(pipeline, stage, ds) if self._own(pipeline) else self.home.rejected(pipeline, stage, ds)

    def committed_dates(self, pipeline: str, stage: str, *, before: str | None = None, at_or_before: str | None = None) -> list[str]:
        if self._own(pipeline):
            return super().committed_dates(pipeline, stage, before=before, at_or_before=at_or_before)
        return self.home.committed_dates(pipeline, stage, before=before, at_or_before=at_or_before)

    def _own(self, pipeline: str) -> bool:
        return self.pipeline is None or pipeline == self.pipeline


def scratch_store(store: Store, pipeline: str | None = None) -> Store:
    """``store``'s scratch twin for an estimate run of ``pipeline`` (None: every pipeline's tables)."""
    if isinstance(store, ScratchStore):
        return store
    scratch = copy.copy(store)
    scratch.__class__ = ScratchStore
    scratch.root_url = f"{store.root_url}/{SCRATCH}"
    scratch.root = posixpath.join(store.root, SCRATCH)
    assert isinstance(scratch, ScratchStore)
    scratch.home = store
    scratch.pipeline = pipeline
    return scratch


def home_store(store: Store) -> Store:
    return store.home if isinstance(store, ScratchStore) else store


def report_path(store: Store, pipeline: str, ds: str, name: str = SUMMARY) -> str:
    return home_store(store).side_path(pipeline, REPORT_AREA, ds, name)


# -- the mapped task -----------------------------------------------------------------------------


def sample_step_shard(ctx: Any, step_name: str, shard: dict[str, Any]) -> dict[str, Any]:
    """:func:`infinisynth.steps.run_step_shard` of an estimate run: the head step (and each step
    fused after it) answers the first ``estimate_sample`` rows; each result says what they stand for."""
    from infinisynth.shards import run_batch_shard, run_stage_shard
    from infinisynth.steps import ShardRef, enabled, model_stage, role_of, stage_class

    ref = ShardRef(**shard)
    rows = ctx.partition(ref.stage).read_file(ref.file).to_pylist()
    scale = stage_scale(ctx, ref.stage)
    sample_size = int(ctx.settings.estimate_sample)
    results: dict[str, Any] = {}
    shard_rows, shard_scale = rows, scale
    for chain in ctx.spec.chains(step_name):  # its own chain, then any beside it, over the same rows
        rows, scale = shard_rows, shard_scale
        for position, step in enumerate(chain):
            cls = stage_class(step)
            if step.kind == "batch":  # no model calls: the whole (already sampled) shard
                result = run_batch_shard(ctx.store, ctx.spec.name, ctx.ds, ref.shard, rows, cls.from_context(ctx))
                result.estimate = {"kind": "batch", "factor": scale, "rows": len(rows), "sample": len(rows)}
            else:
                todo = cls.prepare_rows(rows) if enabled(ctx, step) else []
                sample = todo[:sample_size]
                factor = scale * len(todo) / len(sample) if sample else scale
                role = ctx.role(role_of(step, cls))
                batch = getattr(role, "mode", "online") == "batch"
                if batch:  # the sample is answered at once; the projection prices the run at the batch price
                    role = role.with_overrides(mode="online")
                result = run_stage_shard(ctx.store, ctx.spec.name, step.name, ctx.ds, ref.shard, sample, role, model_stage(ctx, step))
                price = role_price(role)
                result.estimate = {
                    "kind": "model",
                    "factor": factor,  # full-run rows one sampled row stands for
                    "rows": len(todo),
                    "sample": len(sample),
                    "scale_in": scale,
                    "role": role.role,
                    "model": role.model,
                    "price": describe(price),
                    "priced": price is not None,
                    "price_per_million": price.model_dump() if price is not None else None,
                    "batch": batch,
                    "max_concurrency": role.max_concurrency,
                    "requests_per_minute": role.requests_per_minute,
                    "tokens_per_minute": role.tokens_per_minute,
                    "shard_size": getattr(ctx.settings, "shard_size", None),
                }
                scale = factor
            results[step.name] = result.to_dict()
            if position + 1 < len(chain):
                rows = ctx.partition(step.name).read_file(result.output["name"]).to_pylist()
    return results


def stage_scale(ctx: Any, stage: str) -> float:
    """Full-run rows one row of ``stage``'s (estimate) partition stands for: its projection's
    ``scale_out``, else (a global step) its first upstream's, else 1."""
    partition = ctx.partition(stage)
    if partition.exists():
        projected = partition.manifest().meta.get("funnel", {}).get("estimate")
        if projected and projected.get("scale_out"):
            return float(projected["scale_out"])
    try:
        step = ctx.spec.step(stage)
    except KeyError:
        return 1.0
    return stage_scale(ctx, step.upstream[0]) if step.upstream else 1.0


# -- the commit ----------------------------------------------------------------------------------


def project_step(stage: str, shard_results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A step's projection from its shards' sampled results (``ShardResult`` dicts with ``estimate``)."""
    shards = [r for r in shard_results if r.get("estimate")]
    model = [r for r in shards if r["estimate"]["kind"] == "model"]
    out_rows = sum(r["output"]["rows"] for r in shards)
    weighted_out = sum(r["output"]["rows"] * r["estimate"]["factor"] for r in shards)
    factors = [r["estimate"]["factor"] for r in shards] or [1.0]
    scale_out = weighted_out / out_rows if out_rows else sum(factors) / len(factors)
    entry: dict[str, Any] = {
        "step": stage,
        "kind": "model" if model else "batch",
        "sample_rows": sum(r["estimate"]["sample"] for r in shards),
        "rows_in": round(sum(r["estimate"]["rows"] * r["estimate"].get("scale_in", r["estimate"]["factor"]) for r in shards)),
        "rows_out": round(weighted_out),
        "scale_out": scale_out,
    }
    if not model:
        return entry
    first = model[0]["estimate"]
    sampled = sum_usage(u for r in model for u in r["usage"].values())
    projected = _scaled_sum([(u, r["estimate"]["factor"]) for r in model for u in r["usage"].values()])
    processed = sum(r.get("processed", 0) for r in model)
    latency = sum(r.get("row_seconds", 0.0) for r in model) / processed if processed else None
    rows_in = entry["rows_in"]
    entry.update(
        role=first["role"],
        model=first["model"],
        price=first["price"],
        calls=round(projected["requests"]),
        failed_calls=round(projected["failed_requests"]),
        prompt_tokens=round(projected["prompt_tokens"]),
        completion_tokens=round(projected["completion_tokens"]),
        tokens=round(projected["prompt_tokens"] + projected["completion_tokens"]),
        dollars=round(_dollars(projected, first), 4) if first["priced"] else None,
        mode="batch" if first.get("batch") else "online",
        sample_calls=sampled.requests,
        sample_tokens=sampled.total_tokens,
        sample_dollars=round(sampled.dollars, 6),
        latency_s_per_row=round(latency, 3) if latency is not None else None,
    )
    shard_size = first.get("shard_size") or max(math.ceil(rows_in / max(len(model), 1)), 1)
    entry.update(wall_time(rows_in, projected["requests"], entry["tokens"], latency, first, shard_size))
    return entry


def _dollars(projected: dict[str, float], first: dict[str, Any]) -> float:
    """The projected dollars: as sampled, or at the batch price for a role in batch mode."""
    if not first.get("batch") or not first.get("price_per_million"):
        return projected["dollars"]
    price = Price.model_validate(first["price_per_million"])
    tokens = {"prompt_tokens": round(projected["prompt_tokens"]), "completion_tokens": round(projected["completion_tokens"])}
    return price.dollars(**tokens, batch=True)


def _scaled_sum(entries: Sequence[tuple[dict[str, Any], float]]) -> dict[str, float]:
    """Usage counters times the rows each sample stands for, summed (as floats: no rounding per shard)."""
    keys = ("requests", "failed_requests", "prompt_tokens", "completion_tokens", "dollars")
    return {key: sum(float(u.get(key, 0) or 0) * factor for u, factor in entries) for key in keys}


def wall_time(rows: float, calls: float, tokens: float, latency: float | None, limits: dict[str, Any], shard_size: int) -> dict[str, Any]:
    """How long the step's mapped tasks take at the role's limits. One task keeps at most
    ``max_concurrency`` rows in flight, each taking the sampled mean ``latency``, and its client
    sends at most ``requests_per_minute`` and ``tokens_per_minute``; so a task does
    ``min(C / latency, rpm / 60 / calls per row, tpm / 60 / tokens per row)`` rows a second.
    ``ceil(rows / shard_size)`` tasks run, at most :data:`PARALLEL_TASKS` at a time."""
    if not rows or latency is None:
        return {"wall_seconds": 0.0, "bound_by": None, "parallel_tasks": 0}
    rates = {"concurrency": limits["max_concurrency"] / max(latency, 1e-3)}
    if limits.get("requests_per_minute") and calls:
        rates["requests_per_minute"] = limits["requests_per_minute"] / 60 / (calls / rows)
    if limits.get("tokens_per_minute") and tokens:
        rates["tokens_per_minute"] = limits["tokens_per_minute"] / 60 / (tokens / rows)
    bound = min(rates, key=lambda name: rates[name])
    tasks = max(math.ceil(rows / shard_size), 1)
    parallel = min(tasks, PARALLEL_TASKS)
    # Tasks run in waves of `parallel`, each over up to shard_size rows.
    per_task = min(rows, shard_size) / rates[bound]
    return {
        "wall_seconds": round(math.ceil(tasks / parallel) * per_task, 1),
        "bound_by": bound,
        "rows_per_second_per_task": round(rates[bound], 3),
        "tasks": tasks,
        "parallel_tasks": parallel,
    }


def record_projection(store: Store, pipeline: str, ds: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Write a step's projection and the run's summary (every step projected so far) to the real
    store's reports folder; log both. Returns the summary."""
    home = home_store(store)
    entry = {**entry, "projected_at": time.time()}  # steps are listed in the order they committed
    home.write_json(report_path(store, pipeline, ds, f"estimate-{entry['step']}.json"), entry)
    folder = posixpath.dirname(report_path(store, pipeline, ds))
    home.fs.invalidate_cache(folder)
    steps = [home.read_json(path) for path in home.fs.glob(posixpath.join(folder, "estimate-*.json"))]
    steps.sort(key=lambda s: (s.get("projected_at", 0), s["step"]))
    model_steps = [s for s in steps if s.get("kind") == "model"]
    summary = {
        "pipeline": pipeline,
        "ds": ds,
        "note": "projected from a sample: each model step answered estimate_sample rows per shard without the response "
        "cache; calls, tokens and dollars scale with the rows each sampled row stands for; wall_seconds adds the model "
        "steps as if one ran after the other (global and batch steps not counted)",
        "steps": steps,
        "calls": sum(s["calls"] for s in model_steps),
        "tokens": sum(s["tokens"] for s in model_steps),
        "dollars": round(sum(s["dollars"] or 0.0 for s in model_steps), 4),
        "unpriced_steps": [s["step"] for s in model_steps if s["dollars"] is None],
        "wall_seconds": round(sum(s["wall_seconds"] for s in model_steps), 1),
    }
    home.write_json(report_path(store, pipeline, ds), summary)
    log.warning(
        "ESTIMATE %s.%s %s (nothing published): %s\n%s\nso far: %d calls, %d tokens, $%.4f%s, %s model time -> %s",
        pipeline,
        entry["step"],
        ds,
        "projected from a sample",
        projection_table(model_steps),
        summary["calls"],
        summary["tokens"],
        summary["dollars"],
        f" (+ unpriced: {', '.join(summary['unpriced_steps'])})" if summary["unpriced_steps"] else "",
        _hms(summary["wall_seconds"]),
        home.url(report_path(store, pipeline, ds)),
    )
    return summary


def projection_table(steps: Sequence[dict[str, Any]]) -> str:
    rows: list[tuple[Any, ...]] = [("step", "role", "model", "sample", "rows", "calls", "tokens", "dollars", "wall time", "bound by")]
    for s in steps:
        money = "unpriced" if s["dollars"] is None else f"{s['dollars']:.4f}"
        rows.append(
            (
                s["step"],
                s["role"],
                s["model"],
                s["sample_rows"],
                s["rows_in"],
                s["calls"],
                s["tokens"],
                money,
                _hms(s["wall_seconds"]),
                s["bound_by"] or "-",
            )
        )
    return format_table(rows)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
