"""The deficiency-diagnosis loop (Infinity Instruct Subject, Mechanism 3): the run's start, its
global steps and its report.

The loop is declared in :mod:`infinisynth.specs.deficiency_diagnosis` (settings and steps). A run
starts by resolving its settings once, naming its target model and claiming its iteration
(:func:`start`); every step then runs in that iteration's context (:func:`run_context`), so its
tables live under ``{root}/diagnosis/{stage}/ds={date}.iter{NNNN}/`` and two iterations on one day
never overwrite each other.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from datetime import UTC
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from infinisynth.diagnosis import aggregate as agg
from infinisynth.diagnosis import iterations
from infinisynth.diagnosis import report as rpt
from infinisynth.diagnosis.benchmarks import benchmark_prompts
from infinisynth.diagnosis.diagnosis_set import DIAGNOSIS_SET_SCHEMA, holdout_set, refuse_benchmarks, user_set
from infinisynth.diagnosis.leakage import LeakageSettings
from infinisynth.diagnosis.targeted import DEFICIENCY_TARGET_TYPE, PLAN_SCHEMA, TARGETED_SCHEMA, plan_targets, screen_leakage
from infinisynth.llm import RoleConfig
from infinisynth.records import canonical_json
from infinisynth.settings import ConnectionLookup, role_config, store_for
from infinisynth.shards import funnel_table
from infinisynth.spec import PipelineSpec
from infinisynth.specs.deficiency_diagnosis import HOLDOUT_SOURCE, PIPELINE, SPEC, DiagnosisSettings, ModelRegistration
from infinisynth.spill import Spill, SpilledTable
from infinisynth.stages.base import GlobalStep, StepOutput
from infinisynth.stages.publish import DATASET_SCHEMA, SFT_DEFAULTS, chat_batches
from infinisynth.steps import RunContext, night_funnel
from infinisynth.storage import Store

log = logging.getLogger(__name__)

SET_STAGE = "diagnosis_set"
VERDICT_STAGE = "verdict"
GROUPS_STAGE = "deficiencies"
TARGETED_STAGE = "targeted"
VERIFY_STAGE = "verify"
TESTED_STAGE = "execute"  # the test gate after the lint gate: what is published
DATASET_STAGE = "dataset"
# Keys an asset event's extra must never carry: it is stored in Airflow's database and shown in the UI.
SECRET_KEYS = ("api_key", "apikey", "password", "secret", "token", "key")

DIAGNOSIS_DATASET_SCHEMA = pa.schema(
    [*DATASET_SCHEMA, pa.field("deficiency", DEFICIENCY_TARGET_TYPE, nullable=False), pa.field("iteration", pa.int32(), nullable=False)]
)

__all__ = ["PIPELINE", "SPEC", "DiagnosisSettings", "ModelRegistration"]


def leakage_settings(settings: DiagnosisSettings) -> LeakageSettings:
    return LeakageSettings(
        max_cosine=settings.leakage_max_cosine, max_ngram_overlap=settings.leakage_max_ngram_overlap, ngram=settings.leakage_ngram
    )


# -- a run's settings --------------------------------------------------------------------------

# An asset-triggered run has no conf: it gets the DAG's Param defaults, overridden by this Airflow
# Variable (a JSON object keyed by Param name), overridden in turn by a run's own conf.
SETTINGS_VARIABLE = "deficiency_diagnosis_settings"
# Which model to diagnose is per run (the event, or a manual run's conf), never a standing setting.
PER_RUN_SETTINGS = ("target_base_url", "target_model")


def run_settings(params: dict[str, Any], conf: dict[str, Any] | None, standing: Any) -> dict[str, Any]:
    """The settings this run uses: Param defaults < the settings Variable < the run's conf.

    ``params`` is Airflow's (defaults already merged with the conf), ``conf`` the run's own conf,
    ``standing`` the Variable's value (None when unset). Checked as the Params would be.
    """
    if standing is None:
        standing = {}
    if not isinstance(standing, dict):
        raise ValueError(f"Variable {SETTINGS_VARIABLE} must hold a JSON object keyed by Param name, not {type(standing).__name__}")
    unknown = sorted(set(standing) - set(params))
    if unknown:
        raise ValueError(
            f"Variable {SETTINGS_VARIABLE} names unknown setting(s) {unknown}; the settings are the DAG's Params: {sorted(params)}"
        )
    per_run = sorted(set(standing) & set(PER_RUN_SETTINGS))
    if per_run:
        raise ValueError(
            f"Variable {SETTINGS_VARIABLE} sets {per_run}: the model to diagnose comes from its registration event or a run's conf"
        )
    merged = {**params, **standing, **(conf or {})}
    DiagnosisSettings(**merged)  # the same checks as the Params' (types, ranges), before any work
    return merged


def settings_of(run: dict[str, Any]) -> DiagnosisSettings:
    """The settings ``start`` resolved for this run (carried in ``run``, so a retried task or a
    changed Variable never mixes two sets of settings in one iteration)."""
    return DiagnosisSettings(**run["settings"])


# -- the target model ---------------------------------------------------------------------------


def resolve_target(
    settings: DiagnosisSettings, triggering: list[dict[str, Any]], latest: dict[str, Any] | None
) -> tuple[dict[str, Any], str, str | None]:
    """(target endpoint, trigger kind, event description) for this run.

    An asset-triggered run diagnoses the model its (latest) triggering event names; a manual run
    the one its Params name; a manual run without them the latest registered model (read from the
    asset's events, exactly what the scheduler would have handed over).
    """
    if triggering:
        event, trigger = triggering[-1], "asset_event"
    elif settings.target_base_url or settings.target_model:
        if not (settings.target_base_url and settings.target_model):
            raise ValueError("a manual run names both target_base_url and target_model (or neither, to use the latest registration)")
        target = {"base_url": settings.target_base_url, "model": settings.target_model, "conn_id": settings.target_conn_id or None}
        return target, "params", None
    elif latest is not None:
        event, trigger = latest, "latest_registration"
    else:
        raise ValueError("no target model: register one (the register_model DAG) or pass target_base_url and target_model")
    extra = dict(event.get("extra") or {})
    secret = [k for k in extra if k.lower() in SECRET_KEYS or "key" in k.lower() and k.lower() != "conn_id"]
    if secret:
        raise ValueError(
            f"the registration event carries secret-looking field(s) {secret}: keys belong in a connection (conn_id), never in an event"
        )
    missing = [k for k in ("base_url", "model") if not extra.get(k)]
    if missing:
        raise ValueError(f"the registration event's extra lacks {missing}; it has {sorted(extra)}")
    target = {
        "base_url": str(extra["base_url"]),
        "model": str(extra["model"]),
        "conn_id": extra.get("conn_id") or settings.target_conn_id or None,
    }
    return target, trigger, canonical_json({k: event.get(k) for k in ("id", "timestamp", "source_dag_id", "source_run_id")})


def target_role(target: dict[str, Any], lookup: ConnectionLookup, settings: DiagnosisSettings) -> RoleConfig:
    """The target's endpoint from the run; its key (and limits) from its connection, if any.

    Never ``llm_default``: its key must not travel to an endpoint somebody registered.
    """
    conn_id = target.get("conn_id") or "llm_target"
    conn = lookup(conn_id)
    if conn is None and target.get("conn_id"):
        raise LookupError(f"the target's connection {conn_id!r} does not exist")
    values: dict[str, Any] = {k: v for k, v in dict((conn or {}).get("extra") or {}).items() if k not in ("base_url", "model")}
    if conn and conn.get("password"):
        values["api_key"] = conn["password"]
    values.update(role="target", base_url=target["base_url"], model=target["model"], temperature=settings.target_temperature)
    if settings.target_max_tokens:
        values["max_tokens"] = settings.target_max_tokens
    return RoleConfig(**values)


def registration_extra(params: dict[str, Any]) -> dict[str, Any]:
    """The asset event's extra for a model registration: endpoint, model id, optional connection
    id for its key and a free-form name. Refuses anything that looks like a secret."""
    extra = {k: params.get(k) for k in ("base_url", "model", "conn_id", "name") if params.get(k)}
    settings = DiagnosisSettings()
    target, _, _ = resolve_target(settings, [{"extra": extra}], None)  # the same checks a run applies
    return {**extra, **{k: v for k, v in target.items() if v}}


# -- the run: its start and its context ----------------------------------------------------------


def begin(
    params: dict[str, Any],
    conf: dict[str, Any] | None,
    standing: Any,
    triggering: list[dict[str, Any]],
    latest: Callable[[], dict[str, Any] | None],
    *,
    run_id: str,
    date: str,
    lookup: ConnectionLookup,
) -> dict[str, Any]:
    """A run's start: its settings (resolved once: Param defaults < the settings Variable < the
    run's conf), its target (the triggering event's, the Params', else the latest registration's)
    and its iteration. The returned ``run`` travels to every task, so a retried task or a changed
    Variable never mixes two sets of settings in one iteration."""
    values = run_settings(params, conf, standing)
    settings = DiagnosisSettings(**values)
    needs_latest = not triggering and not (settings.target_base_url or settings.target_model)
    target, trigger, event = resolve_target(settings, triggering, latest() if needs_latest else None)
    store = store_for(settings.storage_root or None, lookup)
    if settings.estimate:  # a projection run claims its iteration apart from the real ones
        from infinisynth.estimate import scratch_store

        store = scratch_store(store, PIPELINE)
    run = start(store, run_id=run_id, date=date, target=target, trigger=trigger, event=event, settings=settings)
    return {**run, "settings": values}


def start(
    store: Store, *, run_id: str, date: str, target: dict[str, Any], trigger: str, event: str | None, settings: DiagnosisSettings
) -> dict[str, Any]:
    """Claim this run's iteration (a retried start keeps its claim); the ``run`` every task gets."""
    it = iterations.claim(store, run_id=run_id, date=date, target=target, trigger=trigger, event=event, source=settings.diagnosis_source)
    log.info(
        "iteration %d (%s) diagnoses %s at %s; previous iteration: %s",
        it["iteration"],
        it["partition"],
        target["model"],
        target["base_url"],
        it["previous_iteration"] or "none",
    )
    return {"partition": it["partition"], "iteration": it["iteration"], "target": target}


def run_context(spec: PipelineSpec, params: dict[str, Any], ds: str, run: dict[str, Any], lookup: ConnectionLookup) -> RunContext:
    """An iteration's context: its partition, the settings its start resolved, the target's endpoint."""
    settings = DiagnosisSettings(**run["settings"])

    def roles(role: str) -> RoleConfig:
        return target_role(run["target"], lookup, settings) if role == "target" else role_config(role, lookup)

    store = store_for(settings.storage_root or None, lookup)
    return RunContext(
        spec, store, run["partition"], settings, roles=roles, lookup=lookup, run=run, commit_meta={"iteration": run["iteration"]}
    )


# -- global steps -------------------------------------------------------------------------------


class DiagnosisSet(GlobalStep):
    """The iteration's diagnosis set: code_instruct's held-out slice or the user's file, refused
    when it overlaps an evaluation benchmark."""

    name = SET_STAGE
    schema = DIAGNOSIS_SET_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: DiagnosisSettings = ctx.settings
        source = settings.diagnosis_source
        if source == HOLDOUT_SOURCE:
            date = ctx.ds.split(".iter")[0]
            table, rejected = holdout_set(ctx.store, date, settings.holdout_pipeline, settings.max_diagnosis_rows)
        else:
            table, rejected = user_set(source, settings.max_diagnosis_rows)
        if table.num_rows == 0:
            raise ValueError(f"diagnosis set {source}: no usable rows ({len(rejected)} rejected: {Counter(r['reason'] for r in rejected)})")
        if settings.benchmarks:
            refuse_benchmarks(table, leakage_settings(settings), source, settings.benchmarks)
        it = iterations.load(ctx.store, ctx.ds)
        it["diagnosis_rows"] = table.num_rows
        iterations.save(ctx.store, it)
        log.info("diagnosis set: %d prompts from %s (%d rejected)", table.num_rows, source, len(rejected))
        return StepOutput(table, table.num_rows + len(rejected), rejected=rejected, meta={"source": source})


class AggregateDeficiencies(GlobalStep):
    """Group and rank the deficiencies, record accuracy and ranking, plan the targeted rows."""

    name = "targets"
    schema = PLAN_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: DiagnosisSettings = ctx.settings
        iteration = ctx.commit_meta["iteration"]
        verdicts = ctx.partition(VERDICT_STAGE).read()
        groups = agg.deficiency_groups(verdicts, settings.merge_similarity)
        score = agg.accuracy(verdicts)
        checks = agg.check_counts(verdicts)
        ctx.partition(GROUPS_STAGE).write_and_commit(
            groups, meta={"pipeline": PIPELINE, "stage": GROUPS_STAGE, "iteration": iteration, **score, **checks}, schema=agg.GROUP_SCHEMA
        )
        it = iterations.load(ctx.store, ctx.ds)
        it.update(score)
        it.update(checks)
        ranking = [
            {k: g[k] for k in ("rank", "group_id", "skill", "knowledge_area", "error_type", "failures", "weight", "share")}
            for g in groups.to_pylist()[:20]
        ]
        it["ranking_json"] = canonical_json(ranking)
        iterations.save(ctx.store, it)
        plan = plan_targets(groups, cap=settings.max_targeted, top_groups=settings.top_groups, iteration=iteration)
        accuracy = "-" if score["accuracy"] is None else f"{100 * score['accuracy']:.1f}%"
        log.info(
            "iteration %d: accuracy %s (%d of %d judged; %d decided by the reference check, which overruled the oracle on %d)\n%s",
            iteration,
            accuracy,
            score["correct"],
            score["judged"],
            checks["reference_checked"],
            checks["oracle_overruled"],
            rpt.ranking_table(groups),
        )
        log.info("targeted plan: %d instructions over the top %d groups", plan.num_rows, min(settings.top_groups, groups.num_rows))
        return StepOutput(plan, verdicts.num_rows, meta={"cap": settings.max_targeted, "top_groups": settings.top_groups})


class ScreenLeakage(GlobalStep):
    """Reject targeted instructions too close to a diagnosis prompt or a benchmark problem."""

    name = "leakage"
    schema = TARGETED_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: DiagnosisSettings = ctx.settings
        targeted = ctx.partition(TARGETED_STAGE).read()
        diagnosis = ctx.partition(SET_STAGE).read(columns=["id", "prompt"])
        protected = [("diagnosis", i, p) for i, p in zip(diagnosis.column("id").to_pylist(), diagnosis.column("prompt").to_pylist())]
        if settings.benchmarks:
            protected += [("benchmark", i, p) for i, p in benchmark_prompts(settings.benchmarks)]
        leakage = leakage_settings(settings)
        kept, rejected = screen_leakage(targeted, protected, leakage)
        log.info(
            "leakage screen: %d of %d targeted instructions kept; rejected %s",
            len(kept),
            targeted.num_rows,
            dict(Counter(r["reason"] for r in rejected)),
        )
        table = pa.Table.from_pylist(kept, schema=TARGETED_SCHEMA)
        return StepOutput(table, targeted.num_rows, rejected=rejected, meta={"leakage": leakage.model_dump()})


class Publish(GlobalStep):
    """The targeted chat rows (origin diagnosis + the deficiency), then the iteration row and the report."""

    name = DATASET_STAGE
    schema = DIAGNOSIS_DATASET_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        targets = ctx.partition(TARGETED_STAGE).read(columns=["id", "deficiency", "iteration"])
        self._scratch = tempfile.TemporaryDirectory(prefix="infinisynth-publish-")  # lives as long as the step: the commit reads it
        dataset = Spill(self._scratch.name, DIAGNOSIS_DATASET_SCHEMA, row_group_rows=ctx.settings.shard_size)
        for chat in chat_batches(ctx.partition(TESTED_STAGE)):  # a batch at a time, in stored order
            dataset.write(with_targets(chat, targets))
        self.funnel = night_funnel(ctx)
        return StepOutput(
            SpilledTable([dataset], DIAGNOSIS_DATASET_SCHEMA).as_table(),
            dataset.rows,
            meta={"funnel": self.funnel, "sft": SFT_DEFAULTS},
        )

    def after_commit(self, funnel: dict[str, Any]) -> None:
        ctx: RunContext = self.ctx
        it = iterations.load(ctx.store, ctx.ds)
        it.update(status="complete", targeted_published=funnel["rows_out"], finished_at=_now())
        iterations.save(ctx.store, it)
        history = iterations.history(ctx.store)
        groups = ctx.partition(GROUPS_STAGE).read()
        text = rpt.render(it, groups, history, funnel_table(self.funnel))
        url = rpt.write(ctx.store, ctx.ds, text, rpt.plot_png(history))
        log.info("%s\n(report: %s)", text, url)


def with_targets(chat: pa.Table, targets: pa.Table) -> pa.Table:
    """Chat rows with the deficiency and iteration of the targeted instruction each answers (its
    first parent); an answer to no targeted instruction of the iteration is an error."""
    position = pc.index_in(pc.list_element(chat.column("parent_ids"), 0), value_set=targets.column("id"))
    if position.null_count:
        unknown = chat.filter(pc.is_null(position)).column("parent_ids").to_pylist()[0]
        raise KeyError(f"answered row of {unknown[0]!r}, which is no targeted instruction of this iteration")
    return chat.append_column("deficiency", targets.column("deficiency").take(position)).append_column(
        "iteration", targets.column("iteration").take(position)
    )


def _now() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="seconds")
