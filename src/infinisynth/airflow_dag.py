"""A declared pipeline (:mod:`infinisynth.spec`) as Airflow tasks: one call in a DAG file.

For each step, in order:

- a **global** step is one task; when its first upstream is a mapped step, that task commits the
  mapped step first (one task fewer than a separate commit);
- a **model** step is a task mapped over its input shards, in the ``llm`` pool, then a commit
  task (``commit_<step>``) unless a global step commits it;
- a **batch** step is mapped the same way outside the ``llm`` pool (it calls no model), two shards
  at a time, since one batch already uses every core of a worker.

A finishing task returns the shards of the mapped steps whose inputs it completes (they read the
same upstream steps), and those steps expand over that list. Light on purpose: DAG files call
this at parse time; task bodies import the library only when they run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import task

from infinisynth.spec import PipelineSpec

MAP_INDEX = "{{ task.op_kwargs['shard']['stage'] }} shard {{ task.op_kwargs['shard']['shard'] }}"
MODEL_TASK: dict[str, Any] = {"pool": "llm", "max_active_tis_per_dagrun": 4, "map_index_template": MAP_INDEX}
BATCH_TASK: dict[str, Any] = {"max_active_tis_per_dagrun": 2, "map_index_template": MAP_INDEX}
REDUCE: dict[str, Any] = {"trigger_rule": "none_failed"}  # an empty upstream (no shards) still commits


def context(spec: PipelineSpec, params: Mapping[str, Any], ds: str) -> Any:
    """The run's context inside a task: its store, settings and Airflow's connections."""
    from infinisynth.airflow_env import connection_lookup, run_role, run_store
    from infinisynth.steps import RunContext

    return RunContext(spec, run_store(dict(params)), ds, spec.settings(**params), roles=run_role, lookup=connection_lookup)


def build_tasks(spec: PipelineSpec, outlets: Mapping[str, Sequence[Any]] | None = None) -> dict[str, Any]:
    """Add the pipeline's tasks to the DAG being defined; returns each step's finishing task."""
    outlets = outlets or {}

    @task(**REDUCE)
    def global_step(step: str, upstream_results: list[dict] | None = None, params=None, ds=None) -> list[dict]:
        from infinisynth.steps import run_global_step

        return run_global_step(context(spec, params, ds), step, None if upstream_results is None else list(upstream_results))

    @task(**MODEL_TASK)
    def model_step(step: str, shard: dict, params=None, ds=None) -> dict:
        from infinisynth.steps import run_step_shard

        return run_step_shard(context(spec, params, ds), step, shard)

    @task(**BATCH_TASK)
    def batch_step(step: str, shard: dict, params=None, ds=None) -> dict:
        from infinisynth.steps import run_step_shard

        return run_step_shard(context(spec, params, ds), step, shard)

    @task(**REDUCE)
    def commit(step: str, results: list[dict], params=None, ds=None) -> list[dict]:
        from infinisynth.steps import commit_step

        return commit_step(context(spec, params, ds), step, list(results))

    finished: dict[str, Any] = {}  # step -> the task after which its partition is committed
    mapped: dict[str, Any] = {}
    for step in spec.steps:
        if not step.mapped:
            first = spec.step(step.upstream[0]) if step.upstream else None
            absorbs = first is not None and first.mapped and spec.committed_by(first.name) == step
            done = global_step.override(task_id=step.task_id, outlets=list(outlets.get(step.name, ())))(
                step=step.name, upstream_results=mapped[first.name] if absorbs and first else None
            )
            if absorbs and first:
                finished[first.name] = done
            for name in step.upstream[1:] if absorbs else step.upstream:
                finished[name] >> done
        else:
            source = finished[step.upstream[-1]]
            kind = model_step if step.kind == "model" else batch_step
            done = kind.override(task_id=step.task_id).partial(step=step.name).expand(shard=source)
            for name in step.upstream[:-1]:
                finished[name] >> done
            mapped[step.name] = done
            if spec.committed_by(step.name) is None:
                done = commit.override(task_id=f"commit_{step.name}", outlets=list(outlets.get(step.name, ())))(
                    step=step.name, results=done
                )
        finished[step.name] = done
    return finished
