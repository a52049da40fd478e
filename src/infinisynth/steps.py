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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from infinisynth.llm import RoleConfig
from infinisynth.records import REJECTED_SCHEMA
from infinisynth.settings import ConnectionLookup, env_connection, role_config
from infinisynth.shards import ShardResult, commit_stage, run_batch_shard, run_stage_shard
from infinisynth.spec import PipelineSpec, Step
from infinisynth.stages.base import ModelStage, StepOutput
from infinisynth.storage import Store

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

    def role(self, name: str) -> RoleConfig:
        resolve = self.roles or (lambda role: role_config(role, self.lookup))
        return resolve(name).with_overrides(**self.settings.role_overrides(name))

    def partition(self, stage: str) -> Any:
        return self.store.partition(self.spec.name, stage, self.ds)


def stage_class(step: Step) -> Any:
    module, _, name = step.stage.partition(":")
    return getattr(importlib.import_module(module), name)


def stage_settings(step: Step, cls: Any, settings: BaseModel) -> BaseModel:
    """The stage's own settings, taken from the pipeline's (``step.settings`` renames fields)."""
    values = {}
    for field in cls.Settings.model_fields:
        source = step.settings.get(field, field)
        if source in type(settings).model_fields:
            values[field] = getattr(settings, source)
    return cls.Settings(**values)


def role_of(step: Step, cls: Any) -> str:
    return step.role or cls.role


def model_stage(ctx: RunContext, step: Step) -> Callable[[Any], ModelStage]:
    """A factory of the step's stage around an LLM client."""
    cls = stage_class(step)
    settings = stage_settings(step, cls, ctx.settings)
    return lambda client: cls(client, settings, name=step.name)


def enabled(ctx: RunContext, step: Step) -> bool:
    return step.enabled_by is None or bool(getattr(ctx.settings, step.enabled_by))


# -- mapped steps -------------------------------------------------------------------------------


def run_step_shard(ctx: RunContext, step_name: str, shard: dict[str, Any]) -> dict[str, Any]:
    """One shard of a model or batch step (the body of every mapped task)."""
    step = ctx.spec.step(step_name)
    ref = ShardRef(**shard)
    rows = ctx.partition(ref.stage).read_file(ref.file).to_pylist()
    cls = stage_class(step)
    if step.kind == "batch":
        return run_batch_shard(ctx.store, ctx.spec.name, ctx.ds, ref.shard, rows, cls.from_context(ctx)).to_dict()
    rows = cls.prepare_rows(rows) if enabled(ctx, step) else []  # switched off: the shard maps to nothing
    role = ctx.role(role_of(step, cls))
    return run_stage_shard(ctx.store, ctx.spec.name, step.name, ctx.ds, ref.shard, rows, role, model_stage(ctx, step)).to_dict()


def commit_step(ctx: RunContext, step_name: str, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Publish every shard of a mapped step; hand out the shards of the steps it feeds."""
    step = ctx.spec.step(step_name)
    cls = stage_class(step)
    if step.kind == "batch":
        meta = cls.commit_meta(ctx, [r.get("stats") or {} for r in results])
    else:
        role = ctx.role(role_of(step, cls))
        meta = {"prompt_versions": cls.prompt_versions(), "roles": {role.role: role.public_dict()}}
    commit_stage(ctx.store, ctx.spec.name, step.name, ctx.ds, cls.schema, list(results), meta=meta)
    return handout(ctx, step_name)


def handout(ctx: RunContext, step_name: str) -> list[dict[str, Any]]:
    """The shards of the mapped steps whose inputs are complete once ``step_name`` is."""
    fed = ctx.spec.feeds(step_name)
    return shards_of(ctx.store, ctx.spec.name, ctx.ds, *fed[0].upstream) if fed else []


# -- global steps -------------------------------------------------------------------------------


def run_global_step(ctx: RunContext, step_name: str, upstream_results: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Commit the mapped step this one reads (if its results are given), run it, write its table."""
    step = ctx.spec.step(step_name)
    if upstream_results is not None and step.upstream:
        commit_step(ctx, step.upstream[0], upstream_results)
    cls = stage_class(step)
    output: StepOutput = cls(ctx).run()
    write_stage(ctx, step.name, output, cls.schema)
    return handout(ctx, step_name)


def write_stage(ctx: RunContext, stage: str, output: StepOutput, schema: pa.Schema) -> dict[str, Any]:
    """A global step's table as shards of ``shard_size`` rows (an empty table still commits, with its
    schema) and its rejected rows, published through the one commit with the step's funnel."""
    partition = ctx.partition(stage)
    size = int(getattr(ctx.settings, "shard_size", 0) or max(output.table.num_rows, 1))
    offsets = range(0, output.table.num_rows, size) or [0]
    files = [partition.write_table(n, output.table.slice(offset, size), schema) for n, offset in enumerate(offsets)]
    rejected = ctx.store.rejected(ctx.spec.name, stage, ctx.ds).write_table(
        0, pa.Table.from_pylist(output.rejected, schema=REJECTED_SCHEMA), REJECTED_SCHEMA
    )
    by_reason = Counter(row["reason"] for row in output.rejected)
    first = ShardResult(
        shard=0, rows_in=output.rows_in, output=files[0].to_dict(), rejected=rejected.to_dict(), rejected_by_reason=dict(by_reason)
    )
    rest = [ShardResult(shard=n, rows_in=0, output=f.to_dict()) for n, f in enumerate(files[1:], 1)]
    results = [r.to_dict() for r in (first, *rest)]
    return commit_stage(ctx.store, ctx.spec.name, stage, ctx.ds, schema, results, meta=output.meta)


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
        if step.in_funnel and partition.exists():
            meta = partition.manifest().meta
            entries.append({**meta["funnel"], **{k: meta[k] for k in step.funnel_meta if k in meta}})
    return entries


__all__ = ["RunContext", "ShardRef", "commit_step", "night_funnel", "run_global_step", "run_step_shard", "shards_of", "write_stage"]
