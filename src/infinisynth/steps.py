"""Run and commit the steps of a declared pipeline (:mod:`infinisynth.spec`): the task bodies.

A mapped task runs one shard of a model or batch step (:func:`run_step_shard`); the step's commit
(:func:`commit_step`, or the global step that reads it) publishes every shard at once through
:func:`infinisynth.shards.commit_stage`, and hands the steps it feeds their shards (a list of
:class:`ShardRef`). A global step (:func:`run_global_step`) reads whole partitions and
writes one stage's table, sharded for the next mapped task. XCom carries only shard references
and counts.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from infinisynth.llm import ResponseCache, RoleConfig
from infinisynth.llm.cache import prune_if_due
from infinisynth.records import REJECTED_SCHEMA
from infinisynth.settings import ConnectionLookup, env_connection, role_config
from infinisynth.shards import ShardResult, commit_stage, run_batch_shard, run_stage_shard
from infinisynth.spec import PipelineSpec, Step
from infinisynth.stages.base import ModelStage, StepOutput
from infinisynth.storage import Partition, Store

log = logging.getLogger(__name__)

RoleResolver = Callable[[str], RoleConfig]


class ShardRef(BaseModel):
    """One data file of a committed stage, as a mapped task's input (what XCom carries)."""

    stage: str
    shard: int
    file: str
    rows: int


@dataclass
class RunContext:
    """Where a run's steps read and write, and how they reach models and services."""

    spec: PipelineSpec
    store: Store
    ds: str  # the partition key: the logical date (the diagnosis loop adds its iteration)
    settings: Any  # the pipeline's settings model (a PipelineSettings subclass)
    roles: RoleResolver | None = None
    lookup: ConnectionLookup = env_connection
    run: dict[str, Any] | None = None  # what the run's start task resolved (the diagnosis loop's iteration)
    commit_meta: dict[str, Any] = field(default_factory=dict)  # manifest keys every commit of the run carries

    def __post_init__(self) -> None:
        if getattr(self.settings, "estimate", False):  # a projection run: its tables live apart (infinisynth.estimate)
            from infinisynth.estimate import scratch_store

            self.store = scratch_store(self.store, self.spec.name)

    def role(self, name: str) -> RoleConfig:
        resolve = self.roles or (lambda role: role_config(role, self.lookup))
        return resolve(name).with_overrides(**self.settings.role_overrides(name))

    def partition(self, stage: str) -> Partition:
        return self.store.partition(self.spec.name, stage, self.ds)


def context_hook(spec: PipelineSpec) -> Callable[..., RunContext]:
    """The spec's own context builder: ``(spec, params, ds, run, lookup) -> RunContext``."""
    module, _, name = (spec.context or "").partition(":")
    hook: Callable[..., RunContext] = getattr(importlib.import_module(module), name)
    return hook


def stage_class(step: Step) -> Any:
    module, _, name = step.stage.partition(":")
    return getattr(importlib.import_module(module), name)


def stage_settings(step: Step, cls: Any, settings: BaseModel) -> BaseModel:
    """The stage's own settings, taken from the pipeline's (``step.settings`` renames fields)."""
    values = {}
    for name in cls.Settings.model_fields:
        source = step.settings.get(name, name)
        if source in type(settings).model_fields:
            values[name] = getattr(settings, source)
    return cls.Settings(**values)


def role_of(step: Step, cls: Any) -> str:
    return step.role or cls.role


def model_stage(ctx: RunContext, step: Step) -> Callable[[Any], ModelStage]:
    """A factory of the step's stage around an LLM client."""
    cls = stage_class(step)
    settings = stage_settings(step, cls, ctx.settings)
    return lambda client: cls(client, settings, name=step.name)


def enabled(ctx: RunContext, step: Step) -> bool:
    return step.runs(ctx.settings)


def response_cache(ctx: RunContext) -> ResponseCache | None:
    """The run's response cache (``{root}/_cache/llm``), unless the ``response_cache`` setting is off."""
    return ResponseCache(ctx.store) if ctx.settings.response_cache else None


# -- mapped steps -------------------------------------------------------------------------------


def run_step_shard(ctx: RunContext, step_name: str, shard: dict[str, Any]) -> dict[str, Any]:
    """One shard of a model or batch step and the steps fused after it (the body of every mapped
    task): ``{step: ShardResult}``. Rows stream through the chain (:func:`streams`); staged, a
    fused step reads the shard its predecessor just wrote.

    Model calls go through the run's response cache. A model step whose share of pending rows
    (calls that did not complete) exceeds ``max_transient_share`` raises
    :class:`~infinisynth.shards.TransientFailures`: the task fails and Airflow retries it."""
    if getattr(ctx.settings, "estimate", False):  # answer a sample, project the rest
        from infinisynth.estimate import sample_step_shard

        return sample_step_shard(ctx, step_name, shard)
    ref = ShardRef(**shard)
    rows = ctx.partition(ref.stage).read_file(ref.file).to_pylist()
    results: dict[str, Any] = {}
    cache = response_cache(ctx)
    own, *beside = ctx.spec.chains(step_name)  # its own chain, then any beside it, over the same rows
    chains = [own, *(chain for chain in beside if any(enabled(ctx, step) for step in chain))]  # switched off: nothing written
    try:
        if streams(ctx, chains, rows):
            from infinisynth.stream import stream_chains

            return stream_chains(ctx, chains, ref.shard, rows, cache)
        for chain in chains:
            results.update(run_chain(ctx, chain, ref.shard, rows, cache))
    finally:
        if cache is not None:
            cache.close()
    return results


def run_chain(ctx: RunContext, chain: list[Step], shard: int, rows: list[dict[str, Any]], cache: ResponseCache | None) -> dict[str, Any]:
    """One chain over a shard's rows, staged: each step over the whole shard, then the next.
    ``{step: ShardResult}``."""
    results: dict[str, Any] = {}
    for position, step in enumerate(chain):
        cls = stage_class(step)
        if step.kind == "batch":
            result = run_batch_shard(ctx.store, ctx.spec.name, ctx.ds, shard, rows, cls.from_context(ctx))
        else:
            todo = cls.prepare_rows(rows) if enabled(ctx, step) else []  # switched off: the shard maps to nothing
            result = run_stage_shard(
                ctx.store,
                ctx.spec.name,
                step.name,
                ctx.ds,
                shard,
                todo,
                ctx.role(role_of(step, cls)),
                model_stage(ctx, step),
                cache=cache,
                max_transient_share=ctx.settings.max_transient_share,
            )
        results[step.name] = result.to_dict()
        if position + 1 < len(chain):  # the next fused step reads this shard's own, not yet committed, data file
            rows = ctx.partition(step.name).read_file(result.output["name"]).to_pylist()
    return results


def streams(ctx: RunContext, chains: list[list[Step]], rows: list[dict[str, Any]]) -> bool:
    """Whether a mapped task streams its chains (:mod:`infinisynth.stream`): a chain of several
    steps or several chains side by side, with rows, the ``stream_chains`` setting on, and no role
    in batch mode (a provider batch answers a whole shard at once: its chain runs staged)."""
    steps = [step for chain in chains for step in chain]
    if len(steps) < 2 or not rows or not getattr(ctx.settings, "stream_chains", True):
        return False
    models = [step for step in steps if step.kind == "model"]
    return all(ctx.role(role_of(step, stage_class(step))).mode != "batch" for step in models)


def commit_step(ctx: RunContext, step_name: str, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Publish every shard of a mapped step (and of the steps fused after it or beside it); hand out
    the shards of the steps it feeds. A switched-off step writes no partition."""
    chain = ctx.spec.task_steps(step_name)
    for step in chain:
        if not enabled(ctx, step):
            continue
        cls = stage_class(step)
        shard_results = [r[step.name] for r in results]
        if step.kind == "batch":
            meta = cls.commit_meta(ctx, [r.get("stats") or {} for r in shard_results])
        else:
            role = ctx.role(role_of(step, cls))
            meta = {"prompt_versions": cls.prompt_versions(), "roles": {role.role: role.public_dict()}}
        commit_stage(ctx.store, ctx.spec.name, step.name, ctx.ds, cls.schema, shard_results, meta={**ctx.commit_meta, **meta})
    if ctx.settings.response_cache and any(step.kind == "model" and enabled(ctx, step) for step in chain):
        prune_if_due(ctx.store, ctx.settings.response_cache_max_gb)  # at most once a day, whoever commits
    return handout(ctx, ctx.spec.chain(step_name)[-1].name)


def handout(ctx: RunContext, step_name: str) -> list[dict[str, Any]]:
    """The shards of the mapped steps whose inputs are complete once ``step_name`` is (none when
    every one of them is switched off); switched-off upstream steps contribute none."""
    fed = ctx.spec.feeds(step_name)
    if not any(enabled(ctx, step) for step in fed):
        return []
    upstream = [name for name in fed[0].upstream if enabled(ctx, ctx.spec.step(name))]
    return shards_of(ctx.store, ctx.spec.name, ctx.ds, *upstream)


# -- global steps -------------------------------------------------------------------------------


def run_global_step(
    ctx: RunContext, step_name: str, upstream_results: Mapping[str, Sequence[dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    """Commit the mapped steps this one absorbs (their shard results by step), run it, write its table."""
    step = ctx.spec.step(step_name)
    for name, results in (upstream_results or {}).items():
        commit_step(ctx, name, results)
    cls = stage_class(step)
    global_step = cls(ctx)
    output: StepOutput = global_step.run()
    global_step.after_commit(write_stage(ctx, step.name, output, cls.schema))
    return handout(ctx, step_name)


def write_stage(ctx: RunContext, stage: str, output: StepOutput, schema: pa.Schema) -> dict[str, Any]:
    """A global step's table as shards of ``shard_size`` rows (an empty table still commits, with its
    schema) and its rejected rows, published through the one commit with the step's funnel."""
    partition = ctx.partition(stage)
    size = int(getattr(ctx.settings, "shard_size", 0) or max(output.table.num_rows, 1))
    offsets = range(0, output.table.num_rows, size) or [0]
    files = [partition.write_table(n, output.table.slice(offset, size), schema) for n, offset in enumerate(offsets)]
    rejects = output.rejected if isinstance(output.rejected, pa.Table) else pa.Table.from_pylist(output.rejected, schema=REJECTED_SCHEMA)
    rejected = ctx.store.rejected(ctx.spec.name, stage, ctx.ds).write_table(0, rejects, REJECTED_SCHEMA)
    by_reason = Counter(rejects.column("reason").to_pylist())
    first = ShardResult(
        shard=0, rows_in=output.rows_in, output=files[0].to_dict(), rejected=rejected.to_dict(), rejected_by_reason=dict(by_reason)
    )
    rest = [ShardResult(shard=n, rows_in=0, output=f.to_dict()) for n, f in enumerate(files[1:], 1)]
    results = [r.to_dict() for r in (first, *rest)]
    return commit_stage(
        ctx.store, ctx.spec.name, stage, ctx.ds, schema, results, meta={**ctx.commit_meta, **output.meta}, inputs_passed=output.passed
    )


def shards_of(store: Store, pipeline: str, ds: str, *stages: str) -> list[dict[str, Any]]:
    """The non-empty data files of committed stages, numbered as one list of shards. A stage that
    was never committed (switched off this run) has none."""
    shards: list[dict[str, Any]] = []
    for stage in stages:
        partition = store.partition(pipeline, stage, ds)
        if not partition.exists():
            continue
        for data_file in partition.manifest().files:
            if data_file.rows:
                shards.append(ShardRef(stage=stage, shard=len(shards), file=data_file.name, rows=data_file.rows).model_dump())
    return shards


def night_funnel(ctx: RunContext) -> list[dict[str, Any]]:
    """Every committed step's funnel entry, in the pipeline's order."""
    entries = []
    for step in ctx.spec.steps:
        partition = ctx.partition(step.name)
        if step.in_funnel and enabled(ctx, step) and partition.exists():
            meta = partition.manifest().meta
            entries.append({**meta["funnel"], **{k: meta[k] for k in step.funnel_meta if k in meta}})
    return entries


__all__ = ["RunContext", "ShardRef", "commit_step", "night_funnel", "run_global_step", "run_step_shard", "shards_of", "write_stage"]
