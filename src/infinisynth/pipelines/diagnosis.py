"""The deficiency-diagnosis loop (Infinity Instruct Subject, Mechanism 3) as task bodies for
``dags/deficiency_diagnosis.py``.

    start (target model, iteration number, diagnosis set) -> answer (target) -> verdict (oracle)
      -> aggregate (groups, ranking, accuracy, plan) -> targeted (generator) -> leakage screen
      -> quality (judge) -> respond (generator) -> verify (static lint gate)
      -> publish (dataset, iteration row, report)

Every table of an iteration lives under ``{root}/diagnosis/{stage}/ds={date}.iter{NNNN}/`` (the
iteration's *partition*), so two iterations on one day never overwrite each other. Task bodies
take plain values (the ``run`` dict: partition, iteration, target endpoint) and return paths and
counts.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from infinisynth.diagnosis import aggregate as agg
from infinisynth.diagnosis import iterations
from infinisynth.diagnosis import report as rpt
from infinisynth.diagnosis.benchmarks import benchmark_prompts
from infinisynth.diagnosis.diagnose import ANSWER_SCHEMA, VERDICT_SCHEMA, OracleVerdict, TargetAnswer
from infinisynth.diagnosis.diagnosis_set import DIAGNOSIS_SET_SCHEMA, HOLDOUT_SOURCE, holdout_set, refuse_benchmarks, user_set
from infinisynth.diagnosis.leakage import LeakageSettings
from infinisynth.diagnosis.targeted import (
    DEFICIENCY_TARGET_TYPE,
    PLAN_SCHEMA,
    TARGETED_SCHEMA,
    TargetedSynthesis,
    plan_targets,
    screen_leakage,
)
from infinisynth.llm import LLMClient, RoleConfig
from infinisynth.prompts import load_prompt
from infinisynth.records import REJECTED_SCHEMA, canonical_json
from infinisynth.runner import Stage
from infinisynth.settings import ConnectionLookup, lint_service_url, role_config
from infinisynth.shards import ShardResult, commit_stage, funnel_table, run_stage_shard
from infinisynth.stages import verify
from infinisynth.stages.problems import ProblemChecks
from infinisynth.stages.publish import DATASET_SCHEMA, SFT_DEFAULTS, to_chat_rows
from infinisynth.stages.quality import SCORED_SCHEMA, QualityAssessment, QualitySettings
from infinisynth.stages.respond import RESPONSE_SCHEMA, ResponseGeneration
from infinisynth.storage import Store

log = logging.getLogger(__name__)

PIPELINE = iterations.PIPELINE
SET_STAGE = "diagnosis_set"
ANSWER_STAGE = "answer"
VERDICT_STAGE = "verdict"
GROUPS_STAGE = "deficiencies"
PLAN_STAGE = "targets"
TARGETED_STAGE = "targeted"
LEAKAGE_STAGE = "leakage"
QUALITY_STAGE = "quality"
RESPOND_STAGE = "respond"
VERIFY_STAGE = "verify"
DATASET_STAGE = "dataset"
FUNNEL_STAGES = (SET_STAGE, ANSWER_STAGE, VERDICT_STAGE, TARGETED_STAGE, LEAKAGE_STAGE, QUALITY_STAGE, RESPOND_STAGE, VERIFY_STAGE)

PROMPTS = {
    ANSWER_STAGE: "diagnosis_answer",
    VERDICT_STAGE: "diagnosis_oracle",
    TARGETED_STAGE: "diagnosis_targeted",
    QUALITY_STAGE: "quality_assessment",
    RESPOND_STAGE: "response",
}
ROLES = {ANSWER_STAGE: "target", VERDICT_STAGE: "oracle", TARGETED_STAGE: "generator", QUALITY_STAGE: "judge", RESPOND_STAGE: "generator"}
SCHEMAS = {
    ANSWER_STAGE: ANSWER_SCHEMA,
    VERDICT_STAGE: VERDICT_SCHEMA,
    TARGETED_STAGE: TARGETED_SCHEMA,
    QUALITY_STAGE: SCORED_SCHEMA,
    RESPOND_STAGE: RESPONSE_SCHEMA,
}
# Keys an asset event's extra must never carry: it is stored in Airflow's database and shown in the UI.
SECRET_KEYS = ("api_key", "apikey", "password", "secret", "token", "key")

DIAGNOSIS_DATASET_SCHEMA = pa.schema(
    [*DATASET_SCHEMA, pa.field("deficiency", DEFICIENCY_TARGET_TYPE, nullable=False), pa.field("iteration", pa.int32(), nullable=False)]
)


class DiagnosisSettings(BaseModel):
    """A run's settings: the DAG's Params, validated once."""

    model_config = ConfigDict(extra="ignore")

    target_base_url: str = ""  # manual runs: the model under diagnosis (else the asset event's)
    target_model: str = ""
    target_conn_id: str = ""  # connection holding the target's API key (default llm_target)
    target_max_tokens: int | None = Field(None, gt=0)
    target_temperature: float = Field(0.0, ge=0, le=2)  # greedy: the model's best answer
    diagnosis_source: str = HOLDOUT_SOURCE  # 'holdout' or a Parquet/JSONL path with prompt + reference
    holdout_pipeline: str = "code_instruct"
    max_diagnosis_rows: int = Field(200, gt=0)
    shard_size: int = Field(50, gt=0)
    benchmarks: list[str] = Field(default_factory=lambda: ["humaneval"])
    merge_similarity: float = Field(0.91, ge=0, le=1)
    top_groups: int = Field(5, ge=1)
    max_targeted: int = Field(50, ge=0)  # the cap on targeted instructions per iteration
    leakage_max_cosine: float = Field(0.80, ge=0, le=1)
    leakage_max_ngram_overlap: float = Field(0.50, ge=0, le=1)
    leakage_ngram: int = Field(5, ge=1, le=20)
    quality_samples: int = Field(3, ge=1)
    quality_threshold: float = Field(6.0, ge=1, le=10)
    min_problem_chars: int = Field(40, ge=1)
    oracle_model: str = ""
    generator_model: str = ""
    judge_model: str = ""
    lint_gate: bool = True  # the same static gate as code_instruct: error-level findings discard a pair
    lint_max_code_bytes: int = Field(256 * 1024, gt=0)
    lint_timeout_scale: float = Field(1.0, gt=0)

    @property
    def leakage(self) -> LeakageSettings:
        return LeakageSettings(
            max_cosine=self.leakage_max_cosine, max_ngram_overlap=self.leakage_max_ngram_overlap, ngram=self.leakage_ngram
        )

    def role_overrides(self, role: str) -> dict[str, Any]:
        return {"model": {"oracle": self.oracle_model, "generator": self.generator_model, "judge": self.judge_model}.get(role) or None}


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


def stage_role(stage: str, run: dict[str, Any], lookup: ConnectionLookup, settings: DiagnosisSettings) -> RoleConfig:
    role = ROLES[stage]
    if role == "target":
        return target_role(run["target"], lookup, settings)
    return role_config(role, lookup, **settings.role_overrides(role))


# -- start: the iteration and its diagnosis set ---------------------------------------------------


def start(
    store: Store, *, run_id: str, date: str, target: dict[str, Any], trigger: str, event: str | None, settings: DiagnosisSettings
) -> dict[str, Any]:
    """Claim the iteration, load and check the diagnosis set, write it in shards."""
    source = settings.diagnosis_source
    if source == HOLDOUT_SOURCE:
        table, rejected = holdout_set(store, date, settings.holdout_pipeline, settings.max_diagnosis_rows)
    else:
        table, rejected = user_set(source, settings.max_diagnosis_rows)
    if table.num_rows == 0:
        raise ValueError(f"diagnosis set {source}: no usable rows ({len(rejected)} rejected: {Counter(r['reason'] for r in rejected)})")
    if settings.benchmarks:
        refuse_benchmarks(table, settings.leakage, source, settings.benchmarks)
    it = iterations.claim(store, run_id=run_id, date=date, target=target, trigger=trigger, event=event, source=source)
    it["diagnosis_rows"] = table.num_rows
    iterations.save(store, it)
    run = {"partition": it["partition"], "iteration": it["iteration"], "target": target}
    _write_stage(store, run["partition"], SET_STAGE, table, DIAGNOSIS_SET_SCHEMA, rejected, settings.shard_size, {"source": source})
    log.info(
        "iteration %d (%s) diagnoses %s at %s on %d prompts from %s; previous iteration: %s",
        it["iteration"],
        it["partition"],
        target["model"],
        target["base_url"],
        table.num_rows,
        source,
        it["previous_iteration"] or "none",
    )
    return run


# -- mapped model stages -----------------------------------------------------------------------


def run_model_stage(
    store: Store, run: dict[str, Any], stage: str, shard: dict[str, Any], lookup: ConnectionLookup, settings: DiagnosisSettings
) -> dict[str, Any]:
    rows = store.partition(PIPELINE, shard["stage"], run["partition"]).read_file(shard["file"]).to_pylist()
    role = stage_role(stage, run, lookup, settings)
    return run_stage_shard(store, PIPELINE, stage, run["partition"], shard["shard"], rows, role, _stage_factory(stage, settings)).to_dict()


def _stage_factory(stage: str, settings: DiagnosisSettings) -> Callable[[LLMClient], Stage]:
    prompt = load_prompt(PROMPTS[stage])
    if stage == ANSWER_STAGE:
        return lambda client: TargetAnswer(client, prompt)
    if stage == VERDICT_STAGE:
        return lambda client: OracleVerdict(client, prompt)
    if stage == TARGETED_STAGE:
        checks = ProblemChecks(min_chars=settings.min_problem_chars)
        return lambda client: TargetedSynthesis(client, prompt, checks)
    if stage == QUALITY_STAGE:
        quality = QualitySettings(samples=settings.quality_samples, threshold=settings.quality_threshold)
        return lambda client: QualityAssessment(client, prompt, quality)
    if stage == RESPOND_STAGE:
        return lambda client: ResponseGeneration(client, prompt)
    raise ValueError(f"{stage!r} is not a model-calling stage of {PIPELINE}")


def commit(
    store: Store,
    run: dict[str, Any],
    stage: str,
    shard_results: list[dict[str, Any]],
    lookup: ConnectionLookup,
    settings: DiagnosisSettings,
) -> dict[str, Any]:
    role = stage_role(stage, run, lookup, settings)
    meta = {
        "iteration": run["iteration"],
        "prompt_versions": {PROMPTS[stage]: load_prompt(PROMPTS[stage]).version},
        "roles": {role.role: role.public_dict()},
    }
    return commit_stage(store, PIPELINE, stage, run["partition"], SCHEMAS[stage], shard_results, meta=meta)


# -- aggregation and the plan -------------------------------------------------------------------


def aggregate(store: Store, run: dict[str, Any], settings: DiagnosisSettings) -> list[dict[str, Any]]:
    """Group and rank the deficiencies, record accuracy and ranking, plan the targeted rows."""
    partition = run["partition"]
    verdicts = store.partition(PIPELINE, VERDICT_STAGE, partition).read()
    groups = agg.deficiency_groups(verdicts, settings.merge_similarity)
    score = agg.accuracy(verdicts)
    store.partition(PIPELINE, GROUPS_STAGE, partition).write_and_commit(
        groups, meta={"pipeline": PIPELINE, "stage": GROUPS_STAGE, "iteration": run["iteration"], **score}, schema=agg.GROUP_SCHEMA
    )
    it = iterations.load(store, partition)
    it.update(score)
    it["ranking_json"] = canonical_json(
        [
            {k: g[k] for k in ("rank", "group_id", "skill", "knowledge_area", "error_type", "failures", "weight", "share")}
            for g in groups.to_pylist()[:20]
        ]
    )
    iterations.save(store, it)
    plan = plan_targets(groups, cap=settings.max_targeted, top_groups=settings.top_groups, iteration=run["iteration"])
    _write_stage(
        store,
        partition,
        PLAN_STAGE,
        plan,
        PLAN_SCHEMA,
        [],
        settings.shard_size,
        {"cap": settings.max_targeted, "top_groups": settings.top_groups},
    )
    accuracy = "-" if score["accuracy"] is None else f"{100 * score['accuracy']:.1f}%"
    log.info(
        "iteration %d: accuracy %s (%d of %d judged)\n%s",
        run["iteration"],
        accuracy,
        score["correct"],
        score["judged"],
        rpt.ranking_table(groups),
    )
    log.info("targeted plan: %d instructions over the top %d groups", plan.num_rows, min(settings.top_groups, groups.num_rows))
    return shards_of(store, partition, PLAN_STAGE)


# -- the leakage screen -------------------------------------------------------------------------


def screen(store: Store, run: dict[str, Any], settings: DiagnosisSettings) -> list[dict[str, Any]]:
    """Reject targeted instructions too close to a diagnosis prompt or a benchmark problem."""
    partition = run["partition"]
    targeted = store.partition(PIPELINE, TARGETED_STAGE, partition).read()
    diagnosis = store.partition(PIPELINE, SET_STAGE, partition).read(columns=["id", "prompt"])
    protected = [("diagnosis", i, p) for i, p in zip(diagnosis.column("id").to_pylist(), diagnosis.column("prompt").to_pylist())]
    if settings.benchmarks:
        protected += [("benchmark", i, p) for i, p in benchmark_prompts(settings.benchmarks)]
    kept, rejected = screen_leakage(targeted, protected, settings.leakage)
    _write_stage(
        store,
        partition,
        LEAKAGE_STAGE,
        pa.Table.from_pylist(kept, schema=TARGETED_SCHEMA),
        TARGETED_SCHEMA,
        rejected,
        settings.shard_size,
        {"leakage": settings.leakage.model_dump()},
        rows_in=targeted.num_rows,
    )
    log.info(
        "leakage screen: %d of %d targeted instructions kept; rejected %s",
        len(kept),
        targeted.num_rows,
        dict(Counter(r["reason"] for r in rejected)),
    )
    return shards_of(store, partition, LEAKAGE_STAGE)


# -- publishing ---------------------------------------------------------------------------------


def _gate(settings: DiagnosisSettings, lookup: ConnectionLookup) -> verify.Gate:
    return verify.make_gate(lookup, max_code_bytes=settings.lint_max_code_bytes, timeout_scale=settings.lint_timeout_scale)


def run_verify(
    store: Store, run: dict[str, Any], shard: dict[str, Any], lookup: ConnectionLookup, settings: DiagnosisSettings
) -> dict[str, Any]:
    """One shard of answered targeted instructions through the static lint gate."""
    partition = run["partition"]
    rows = store.partition(PIPELINE, shard["stage"], partition).read_file(shard["file"]).to_pylist()
    stage = verify.StaticVerification(_gate(settings, lookup), verify.VerifySettings(enabled=settings.lint_gate))
    return verify.run_verify_shard(store, PIPELINE, partition, shard["shard"], rows, stage)


def commit_verify(
    store: Store, run: dict[str, Any], shard_results: list[dict[str, Any]], lookup: ConnectionLookup, settings: DiagnosisSettings
) -> dict[str, Any]:
    where = lint_service_url(lookup) or "in-process"
    return verify.commit_verified(
        store, PIPELINE, run["partition"], shard_results, _gate(settings, lookup), enabled=settings.lint_gate, where=where
    )


def publish(store: Store, run: dict[str, Any], settings: DiagnosisSettings, answered_stage: str = VERIFY_STAGE) -> dict[str, Any]:
    """The targeted chat rows (origin diagnosis + the deficiency), the iteration row, the report."""
    partition = run["partition"]
    answered = store.partition(PIPELINE, answered_stage, partition).read()
    targets = {
        r["id"]: r for r in store.partition(PIPELINE, TARGETED_STAGE, partition).read(columns=["id", "deficiency", "iteration"]).to_pylist()
    }
    chat = to_chat_rows(answered).to_pylist()
    for row in chat:
        target = targets[row["parent_ids"][0]]
        row["deficiency"], row["iteration"] = target["deficiency"], target["iteration"]
    dataset = pa.Table.from_pylist(chat, schema=DIAGNOSIS_DATASET_SCHEMA)
    funnel = iteration_funnel(store, partition)
    meta = {"pipeline": PIPELINE, "stage": DATASET_STAGE, "iteration": run["iteration"], "funnel": funnel, "sft": SFT_DEFAULTS}
    store.partition(PIPELINE, DATASET_STAGE, partition).write_and_commit(dataset, meta=meta, schema=DIAGNOSIS_DATASET_SCHEMA)

    it = iterations.load(store, partition)
    it.update(status="complete", targeted_published=dataset.num_rows, finished_at=_now())
    iterations.save(store, it)
    history = iterations.history(store)
    groups = store.partition(PIPELINE, GROUPS_STAGE, partition).read()
    text = rpt.render(it, groups, history, funnel_table(funnel))
    url = rpt.write(store, partition, text, rpt.plot_png(history))
    log.info("%s\n(report: %s)", text, url)
    return {
        "partition": store.partition(PIPELINE, DATASET_STAGE, partition).url,
        "rows": dataset.num_rows,
        "iteration": run["iteration"],
        "accuracy": it["accuracy"],
        "report": url,
    }


def iteration_funnel(store: Store, partition: str) -> list[dict[str, Any]]:
    return [
        store.partition(PIPELINE, s, partition).manifest().meta["funnel"]
        for s in FUNNEL_STAGES
        if store.partition(PIPELINE, s, partition).exists()
    ]


# -- shards -------------------------------------------------------------------------------------


def shards_of(store: Store, partition: str, *stages: str) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = []
    for stage in stages:
        for data_file in store.partition(PIPELINE, stage, partition).manifest().files:
            if data_file.rows:
                shards.append({"stage": stage, "shard": len(shards), "file": data_file.name, "rows": data_file.rows})
    return shards


def _write_stage(
    store: Store,
    partition: str,
    stage: str,
    table: pa.Table,
    schema: pa.Schema,
    rejected: list[dict[str, Any]],
    shard_size: int,
    meta: dict[str, Any],
    rows_in: int | None = None,
) -> None:
    """A non-model stage's output in shards, its rejected rows, and its funnel - committed through
    the same accounting check as a model stage."""
    out = store.partition(PIPELINE, stage, partition)
    offsets = range(0, table.num_rows, shard_size) or [0]
    results = []
    for n, offset in enumerate(offsets):
        piece = table.slice(offset, shard_size)
        shard_rejects = rejected if n == 0 else []
        rejected_file = store.rejected(PIPELINE, stage, partition).write_table(
            n, pa.Table.from_pylist(shard_rejects, schema=REJECTED_SCHEMA), REJECTED_SCHEMA
        )
        results.append(
            ShardResult(
                shard=n,
                rows_in=piece.num_rows + len(shard_rejects),
                output=out.write_table(n, piece, schema).to_dict(),
                rejected=rejected_file.to_dict(),
                rejected_by_reason=dict(Counter(r["reason"] for r in shard_rejects)),
            ).to_dict()
        )
    if rows_in is not None and rows_in != table.num_rows + len(rejected):
        raise ValueError(f"{stage}: {rows_in} rows in but {table.num_rows} kept + {len(rejected)} rejected")
    commit_stage(store, PIPELINE, stage, partition, schema, results, meta=meta)


def _now() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="seconds")
