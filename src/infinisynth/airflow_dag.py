"""A declared pipeline (:mod:`infinisynth.spec`) as Airflow tasks: one call in a DAG file.

For each step, in order:

- a **global** step is one task; when its first upstream is a mapped step, that task commits the
  mapped step first (one task fewer than a separate commit);
- a **model** step is a task mapped over its input shards, in the ``llm`` pool, then a commit
  task (``commit_<step>``) unless a global step commits it;
- a **batch** step is mapped the same way outside the ``llm`` pool (it calls no model), two shards
  at a time, since one batch already uses every core of a worker.

A mapped step whose role is in batch mode defers while its provider batch runs
(:class:`ShardTaskOperator`: no worker slot held; the trigger polls the batch in the triggerer).

A finishing task returns the shards of the mapped steps whose inputs it completes (they read the
same upstream steps), and those steps expand over that list. Light on purpose: DAG files call
this at parse time; task bodies import the library only when they run.

Every task body turns an :class:`~infinisynth.errors.InputError` (a malformed seed file, an
unknown language, invalid Params ...) into Airflow's ``AirflowFailException``: the task fails at
once, naming the input and the problem, instead of retrying what cannot succeed.
"""

from __future__ import annotations

import gc
import json
import logging
import resource
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk import DAG, task
from airflow.sdk.bases.decorator import task_decorator_factory

from infinisynth.spec import PipelineSpec, params_from_settings

MAP_INDEX = "{{ task.op_kwargs['shard']['stage'] }} shard {{ task.op_kwargs['shard']['shard'] }}"
MODEL_TASK: dict[str, Any] = {"pool": "llm", "max_active_tis_per_dagrun": 4, "map_index_template": MAP_INDEX}
BATCH_TASK: dict[str, Any] = {"max_active_tis_per_dagrun": 2, "map_index_template": MAP_INDEX}
REDUCE: dict[str, Any] = {"trigger_rule": "none_failed"}  # an empty upstream (no shards) still commits

log = logging.getLogger(__name__)


def pipeline_dag(
    spec: PipelineSpec,
    *,
    dag_id: str,
    schedule: Any,
    tags: Sequence[str],
    doc_md: str | None = None,
    outlets: Mapping[str, Sequence[Any]] | None = None,
    start: Any = None,
) -> DAG:
    """The pipeline's DAG: its tasks from the spec, its Params from the settings model, and the
    project's conventions (no catchup, one run at a time, two retries). ``start``: a TaskFlow task
    that begins each run and whose output every task gets (see :func:`build_tasks`)."""
    with DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        doc_md=doc_md,
        tags=list(tags),
        default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
        params=params_from_settings(spec.settings),
    ) as dag:
        build_tasks(spec, outlets, run=start() if start is not None else None)
    return dag


class ShardTaskOperator(_PythonDecoratedOperator):
    """The operator of mapped model and batch steps: a TaskFlow task that can wait for a provider
    batch (a role in batch mode, :mod:`infinisynth.llm.batch`) without holding a worker slot. Its
    body defers (:func:`deferring`) to a :class:`~infinisynth.llm.batch_trigger.BatchTrigger`; when
    the trigger fires, Airflow calls :meth:`resume_step`, which runs the body again: the shard
    finds its batch in its work folder and goes on from there."""

    custom_operator_name = "@shard_task"

    def resume_step(self, context: Any, event: Any = None) -> Any:
        return self.execute(context)


def shard_task(**kwargs: Any) -> Any:
    """``@task`` for mapped steps, with :class:`ShardTaskOperator`."""
    return task_decorator_factory(decorated_operator_class=ShardTaskOperator, **kwargs)


@contextmanager
def deferring() -> Iterator[None]:
    """Turn :class:`~infinisynth.llm.batch.BatchPending` (a shard's requests are in a provider
    batch that has not ended) into a deferral to the triggerer; the task resumes in
    :meth:`ShardTaskOperator.resume_step`."""
    from infinisynth.llm.batch import BatchPending

    try:
        yield
    except BatchPending as pending:
        from airflow.sdk.exceptions import TaskDeferred

        from infinisynth.llm.batch_trigger import BatchTrigger

        trigger = BatchTrigger(**pending.trigger_kwargs())
        timeout = timedelta(seconds=pending.timeout_seconds())
        raise TaskDeferred(trigger=trigger, method_name="resume_step", timeout=timeout) from None


@contextmanager
def failing_fast() -> Iterator[None]:
    """Turn an ``InputError`` into ``AirflowFailException``, which Airflow does not retry: the
    same input would fail the same way on every try."""
    from airflow.sdk.exceptions import AirflowFailException

    from infinisynth.errors import InputError

    try:
        yield
    except InputError as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


@contextmanager
def footprint(step: str) -> Iterator[None]:
    """Log what a task body cost as one ``task footprint: {json}`` line: wall and CPU seconds (its
    own, and its children's: the lint gate's linter processes), peak RSS of the task process and of
    its largest child, and garbage-collection pauses (a full collection stalls the client's event
    loop). ``benchmarks/bench_code_pipeline_scheduler.py`` reads these lines from the task logs."""
    pauses: list[tuple[int, float]] = []
    began: list[float] = []

    def timing(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[:] = [time.perf_counter()]
        elif began:
            pauses.append((info["generation"], time.perf_counter() - began.pop()))

    import psutil

    # The task process's own start-up before the body: fork, DAG parse, Airflow's task runner.
    startup = time.time() - psutil.Process().create_time()
    wall = time.perf_counter()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    gc.callbacks.append(timing)
    try:
        yield
    finally:
        gc.callbacks.remove(timing)
        own_after, children_after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        full = [seconds for generation, seconds in pauses if generation == 2]
        figures = {
            "step": step,
            "startup_s": round(startup, 3),
            "wall_s": round(time.perf_counter() - wall, 3),
            "cpu_s": round(own_after.ru_utime + own_after.ru_stime - own.ru_utime - own.ru_stime, 3),
            "children_cpu_s": round(children_after.ru_utime + children_after.ru_stime - children.ru_utime - children.ru_stime, 3),
            "peak_rss_mb": round(own_after.ru_maxrss / 1024, 1),
            "children_peak_rss_mb": round(children_after.ru_maxrss / 1024, 1),
            "gc_collections": len(pauses),
            "gc_full": len(full),
            "gc_s": round(sum(seconds for _, seconds in pauses), 3),
            "gc_max_pause_s": round(max((seconds for _, seconds in pauses), default=0.0), 3),
            "gc_pauses_over_100ms": sum(seconds > 0.1 for _, seconds in pauses),
            "gc_frozen": gc.get_freeze_count(),
        }
        log.info("task footprint: %s", json.dumps(figures))


def settle() -> None:
    """Freeze what the task process holds once the library is imported (modules, classes, schemas:
    most of its objects) so full garbage collections skip it: they scanned it over and over, in
    pauses of up to 0.7 s that stalled the client's event loop (measured by :func:`footprint`).
    Airflow froze what its task runner held before the fork; this adds the library's share.
    Collection is off while the body imports the library (a full one ran over the imports) and
    back on from here."""
    gc.freeze()
    gc.enable()


def switched_off(spec: PipelineSpec, step: str, params: Mapping[str, Any] | None) -> bool:
    """Whether the run's settings switch off every step a mapped task of ``step`` runs (its chain
    and those beside it): then its shard maps to nothing and the task ends before loading the
    library (Airflow still creates the task instances: a step's shards are the same list as its
    siblings')."""
    if spec.context:  # the settings come from the spec's own hook, with the run
        return False
    try:
        settings = spec.settings(**dict(params or {}))
    except ValueError:  # invalid Params: the task's full path says so
        return False
    return not any(s.runs(settings) for s in spec.task_steps(step))


def context(spec: PipelineSpec, params: Mapping[str, Any], ds: str, run: dict[str, Any] | None = None) -> Any:
    """The run's context inside a task: its store, partition, settings and Airflow's connections.
    Params the settings model refuses are an ``InputError``."""
    from pydantic import ValidationError

    from infinisynth.airflow_env import connection_lookup, run_role, run_store
    from infinisynth.errors import InputError
    from infinisynth.steps import RunContext, context_hook

    if spec.context:
        return context_hook(spec)(spec, dict(params), ds, run, connection_lookup)
    try:
        settings = spec.settings(**params)
    except ValidationError as exc:
        raise InputError(f"the run's Params are not valid {spec.name} settings: {exc}") from exc
    return RunContext(spec, run_store(dict(params)), ds, settings, roles=run_role, lookup=connection_lookup)


def announce(ctx: Any, step: str, ti: Any, outlet_events: Any, run_id: str | None) -> None:
    """The task's asset events carry what it published: ``{"pipeline", "step", "partition",
    "rows", "run_id", "url"}`` in their ``extra``. An estimate run published nothing: its task
    drops its outlets, so it emits no asset event (and triggers no downstream DAG)."""
    outlets = list(getattr(getattr(ti, "task", None), "outlets", None) or [])
    if not outlets or outlet_events is None:
        return
    if getattr(ctx.settings, "estimate", False):
        ti.task.outlets = []
        return
    partition = ctx.partition(step)
    rows = partition.manifest().rows if partition.exists() else 0
    extra = {"pipeline": ctx.spec.name, "step": step, "partition": ctx.ds, "rows": rows, "run_id": run_id, "url": partition.url}
    for asset in outlets:
        outlet_events[asset].extra = extra


def build_tasks(spec: PipelineSpec, outlets: Mapping[str, Sequence[Any]] | None = None, run: Any = None) -> dict[str, Any]:
    """Add the pipeline's tasks to the DAG being defined; returns each step's finishing task.

    ``run``: the output of a task that starts each run (e.g. the diagnosis loop's iteration claim);
    every task gets it, and the spec's context hook reads it."""
    outlets = outlets or {}

    @task(**REDUCE)
    def global_step(
        step: str,
        upstream_results: dict[str, list[dict]] | None = None,
        run=None,
        params=None,
        ds=None,
        ti=None,
        outlet_events=None,
        run_id=None,
    ) -> list[dict]:
        with footprint(step):
            gc.disable()  # no full collection over the imports: settle() freezes them
            from infinisynth.steps import run_global_step

            settle()
            results = {name: list(r) for name, r in (upstream_results or {}).items()}
            with failing_fast():
                ctx = context(spec, params, ds, run)
                shards = run_global_step(ctx, step, results)
            announce(ctx, step, ti, outlet_events, run_id)
            return shards

    def run_shard(step: str, shard: dict, run, params, ds) -> dict:
        """One mapped shard of a model or batch step (the two differ only in pool and slots)."""
        with footprint(step):
            if switched_off(spec, step, params):
                return {}  # its commit skips switched-off steps: nothing to load, ask or write
            gc.disable()  # no full collection over the imports: settle() freezes them
            from infinisynth.steps import run_step_shard

            settle()
            with failing_fast(), deferring():
                return run_step_shard(context(spec, params, ds, run), step, shard)

    @shard_task(**MODEL_TASK)
    def model_step(step: str, shard: dict, run=None, params=None, ds=None) -> dict:
        return run_shard(step, shard, run, params, ds)

    @shard_task(**BATCH_TASK)
    def batch_step(step: str, shard: dict, run=None, params=None, ds=None) -> dict:
        return run_shard(step, shard, run, params, ds)

    @task(**REDUCE)
    def commit(step: str, results: list[dict], run=None, params=None, ds=None, ti=None, outlet_events=None, run_id=None) -> list[dict]:
        with footprint(f"commit {step}"):
            gc.disable()  # no full collection over the imports: settle() freezes them
            from infinisynth.steps import commit_step

            settle()
            with failing_fast():
                ctx = context(spec, params, ds, run)
                shards = commit_step(ctx, step, list(results))
            announce(ctx, step, ti, outlet_events, run_id)
            return shards

    finished: dict[str, Any] = {}  # step -> the task after which its partition is committed
    mapped: dict[str, Any] = {}  # mapped step -> its mapped task (whose results its commit reads)
    for step in spec.steps:
        if step.fused or step.beside:
            continue  # runs and commits with the head of its chain, or beside another step
        if not step.mapped:
            absorbed = spec.absorbed(step)
            done = global_step.override(task_id=step.task_id, outlets=list(outlets.get(step.name, ())))(
                step=step.name, upstream_results={name: mapped[name] for name in absorbed} or None, run=run
            )
            for name in absorbed:
                for fused in spec.task_steps(name):
                    finished[fused.name] = done
            for name in step.upstream:
                if spec.head(name) not in absorbed:
                    finished[name] >> done
            finished[step.name] = done
            continue
        source = finished[step.upstream[-1]]
        kind = model_step if step.kind == "model" else batch_step
        done = kind.override(task_id=step.task_id).partial(step=step.name, run=run).expand(shard=source)
        for name in step.upstream[:-1]:
            finished[name] >> done
        mapped[step.name] = done
        chain = spec.task_steps(step.name)
        if spec.committed_by(step.name) is None:
            task_id = step.commit_task or f"commit_{step.name}"
            done = commit.override(task_id=task_id, outlets=list(outlets.get(step.name, ())))(step=step.name, results=done, run=run)
            for fused in chain:
                finished[fused.name] = done
    return finished
