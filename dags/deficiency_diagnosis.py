"""
### Deficiency diagnosis: find what a model gets wrong, synthesize data that targets it, repeat

Infinity Instruct Subject's closed loop (Mechanism 3). Each run is one numbered **iteration**:

1. **Target**: the model named by the `models.registered` asset event that triggered the run
   (extra: `base_url`, `model`, optional `conn_id` holding its key), or by the `target_*` Params of
   a manual run, or - a manual run without them - the latest registration.
2. **Diagnosis set**: the held-out slice of `code_instruct` (never in a training export) or a
   Parquet/JSONL file with `prompt` and `reference`. A set overlapping an evaluation benchmark
   (HumanEval) is refused.
3. **Diagnose**: the target answers every prompt; the oracle (`llm_oracle`, else `llm_judge`, else
   `llm_default`) compares with the reference and names each deficiency in the abstract.
4. **Aggregate**: deficiencies grouped and ranked by frequency x severity; accuracy recorded.
5. **Targeted synthesis**: up to `max_targeted` new instructions for the top groups, in proportion
   to weight; any too close to a diagnosis prompt (embedding or n-gram) is rejected; then the
   quality gate, responses and the static lint gate as in `code_instruct`; published with `origin = diagnosis` and the
   deficiency each row targets.

Data: `{storage_root}/diagnosis/{stage}/ds={date}.iter{NNNN}/`; one row per iteration in
`diagnosis/iterations/` (model, previous iteration, accuracy, ranking); the report with its plot in
`diagnosis/reports/{partition}/`.

Register a model with the `register_model` DAG (Params `base_url`, `model`, `conn_id`), or post an
asset event to `models.registered` through the REST API.

Settings: an asset-triggered run has no conf, so it takes the Param defaults overridden by the
Airflow Variable `deficiency_diagnosis_settings` (a JSON object keyed by Param name, e.g.
`{"diagnosis_source": "s3://bucket/diagnosis.parquet", "max_targeted": 100}`); a manual run's conf
overrides both. The first task resolves them once; every task of the run uses those.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, task

MODELS_REGISTERED = Asset(name="models.registered", uri="infinisynth://models/registered")
DIAGNOSIS_DATASET = Asset(name="diagnosis.dataset", uri="infinisynth://diagnosis/dataset")

MAPPED = {
    "pool": "llm",
    "max_active_tis_per_dagrun": 4,
    "map_index_template": "{{ task.op_kwargs['shard']['stage'] }} shard {{ task.op_kwargs['shard']['shard'] }}",
}
REDUCE = {"trigger_rule": "none_failed"}
# The static gate runs linters, not model calls: outside the llm pool, a few shards at a time.
GATE = {
    "max_active_tis_per_dagrun": 2,
    "map_index_template": "{{ task.op_kwargs['shard']['stage'] }} shard {{ task.op_kwargs['shard']['shard'] }}",
}  # an empty upstream (no shards) still commits
START = pendulum.datetime(2026, 1, 1, tz="UTC")


@dag(
    dag_id="register_model",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["diagnosis"],
    doc_md="Register a trained model: emits a `models.registered` asset event whose extra names its endpoint, which triggers `deficiency_diagnosis`. The API key stays in the connection named by `conn_id`.",
    params={
        "base_url": Param(type="string", minLength=1, description="OpenAI-compatible base URL of the model (…/v1)"),
        "model": Param(type="string", minLength=1, description="Model id at that endpoint"),
        "conn_id": Param("", type="string", description="Airflow connection holding its API key (password); empty = llm_target or none"),
        "name": Param("", type="string", description="Free-form label, e.g. the training run"),
    },
)
def register_model():
    @task(outlets=[MODELS_REGISTERED])
    def register(params=None, outlet_events=None) -> dict:
        from infinisynth.pipelines.diagnosis import registration_extra

        extra = registration_extra(params)
        outlet_events[MODELS_REGISTERED].extra = extra
        return extra

    register()


register_model()


@dag(
    dag_id="deficiency_diagnosis",
    schedule=[MODELS_REGISTERED],
    start_date=START,
    catchup=False,
    max_active_runs=1,  # iterations are numbered in order; one claims its number at a time
    doc_md=__doc__,
    tags=["infinity-instruct-subject", "diagnosis"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "target_base_url": Param(
            "", type="string", description="Manual runs: the model's OpenAI-compatible base URL (else the asset event's)"
        ),
        "target_model": Param("", type="string", description="Manual runs: the model id"),
        "target_conn_id": Param(
            "", type="string", description="Connection with the target's API key; empty = the event's conn_id, else llm_target, else none"
        ),
        "target_max_tokens": Param(None, type=["null", "integer"], minimum=1),
        "target_temperature": Param(0.0, type="number", minimum=0, maximum=2),
        "diagnosis_source": Param(
            "holdout",
            type="string",
            description="'holdout' (code_instruct's held-out slice) or a Parquet/JSONL path with prompt and reference",
        ),
        "holdout_pipeline": Param("code_instruct", type="string"),
        "max_diagnosis_rows": Param(200, type="integer", minimum=1),
        "shard_size": Param(50, type="integer", minimum=1, description="Rows per mapped task"),
        "benchmarks": Param(
            ["humaneval"], type="array", description="Evaluation benchmarks a diagnosis set or a targeted row must not overlap"
        ),
        "merge_similarity": Param(
            0.91,
            type="number",
            minimum=0,
            maximum=1,
            description="Merge deficiency labels this similar (paper's lambda); 1 = exact labels only",
        ),
        "top_groups": Param(5, type="integer", minimum=1, description="Deficiency groups targeted per iteration"),
        "max_targeted": Param(
            50, type="integer", minimum=0, description="Cap on targeted instructions per iteration, split by group weight"
        ),
        "leakage_max_cosine": Param(
            0.80, type="number", minimum=0, maximum=1, description="Reject targeted rows with MiniLM cosine >= this to a diagnosis prompt"
        ),
        "leakage_max_ngram_overlap": Param(
            0.50,
            type="number",
            minimum=0,
            maximum=1,
            description="Reject targeted rows sharing this share of word n-grams with a diagnosis prompt",
        ),
        "leakage_ngram": Param(5, type="integer", minimum=1, maximum=20),
        "quality_samples": Param(3, type="integer", minimum=1),
        "quality_threshold": Param(6.0, type="number", minimum=1, maximum=10),
        "min_problem_chars": Param(40, type="integer", minimum=1),
        "oracle_model": Param("", type="string", description="Override the oracle connection's model"),
        "generator_model": Param("", type="string"),
        "judge_model": Param("", type="string"),
        "lint_gate": Param(
            True, type="boolean", description="Discard pairs whose code has an error-level lint finding (the code pipeline's static gate)"
        ),
        "lint_max_code_bytes": Param(262144, type="integer", minimum=1),
        "lint_timeout_scale": Param(1.0, type="number", exclusiveMinimum=0),
        "storage_root": Param("", type="string", description="Object-storage URL; empty = INFINISYNTH_ROOT or data/ in the project"),
    },
)
def deficiency_diagnosis():
    @task(inlets=[MODELS_REGISTERED])
    def start_iteration(params=None, ds=None, dag_run=None, triggering_asset_events=None, inlet_events=None) -> dict:
        from airflow.sdk import Variable

        from infinisynth.airflow_env import run_store
        from infinisynth.pipelines import diagnosis as p

        def plain(event) -> dict:
            return {k: getattr(event, k, None) for k in ("id", "extra", "timestamp", "source_dag_id", "source_run_id")}

        # Settings are resolved once here and travel in `run`: every later task uses the same ones.
        values = p.run_settings(params, dag_run.conf, Variable.get(p.SETTINGS_VARIABLE, default=None, deserialize_json=True))
        settings = p.DiagnosisSettings(**values)
        triggering = [plain(e) for e in (triggering_asset_events or {}).get(MODELS_REGISTERED, [])] if triggering_asset_events else []
        latest = None
        if not triggering and not (settings.target_base_url or settings.target_model):
            try:  # a manual run without Params diagnoses the latest registration, as the scheduler would
                latest = plain(inlet_events[MODELS_REGISTERED][-1])
            except IndexError:
                latest = None
        target, trigger, event = p.resolve_target(settings, triggering, latest)
        date = ds or dag_run.run_after.date().isoformat()  # asset-triggered runs have no logical date
        run = p.start(run_store(values), run_id=dag_run.run_id, date=date, target=target, trigger=trigger, event=event, settings=settings)
        return {**run, "settings": values}

    @task
    def diagnosis_shards(run: dict) -> list[dict]:
        from infinisynth.airflow_env import run_store
        from infinisynth.pipelines import diagnosis as p

        return p.shards_of(run_store(run["settings"]), run["partition"], p.SET_STAGE)

    @task(**MAPPED)
    def model_stage(stage: str, run: dict, shard: dict) -> dict:
        from infinisynth.airflow_env import connection_lookup, run_store
        from infinisynth.pipelines import diagnosis as p

        return p.run_model_stage(run_store(run["settings"]), run, stage, shard, connection_lookup, p.settings_of(run))

    @task(**REDUCE)
    def commit_stage(stage: str, run: dict, results: list[dict], next_stages: list[str]) -> list[dict]:
        from infinisynth.airflow_env import connection_lookup, run_store
        from infinisynth.pipelines import diagnosis as p

        store = run_store(run["settings"])
        p.commit(store, run, stage, list(results), connection_lookup, p.settings_of(run))
        return p.shards_of(store, run["partition"], *next_stages)

    @task(**REDUCE)
    def aggregate_deficiencies(run: dict, results: list[dict]) -> list[dict]:
        from infinisynth.airflow_env import connection_lookup, run_store
        from infinisynth.pipelines import diagnosis as p

        store, settings = run_store(run["settings"]), p.settings_of(run)
        p.commit(store, run, p.VERDICT_STAGE, list(results), connection_lookup, settings)
        return p.aggregate(store, run, settings)

    @task(**REDUCE)
    def screen_leakage(run: dict, results: list[dict]) -> list[dict]:
        from infinisynth.airflow_env import connection_lookup, run_store
        from infinisynth.pipelines import diagnosis as p

        store, settings = run_store(run["settings"]), p.settings_of(run)
        p.commit(store, run, p.TARGETED_STAGE, list(results), connection_lookup, settings)
        return p.screen(store, run, settings)

    @task(**REDUCE, outlets=[DIAGNOSIS_DATASET])
    def publish(run: dict, results: list[dict]) -> dict:
        from infinisynth.airflow_env import connection_lookup, run_store
        from infinisynth.pipelines import diagnosis as p

        store, settings = run_store(run["settings"]), p.settings_of(run)
        p.commit_verify(store, run, list(results), connection_lookup, settings)
        return p.publish(store, run, settings)

    @task(**GATE)
    def verify_responses(run: dict, shard: dict) -> dict:
        from infinisynth.airflow_env import connection_lookup, run_store
        from infinisynth.pipelines import diagnosis as p

        return p.run_verify(run_store(run["settings"]), run, shard, connection_lookup, p.settings_of(run))

    run = start_iteration()
    answers = model_stage.override(task_id="answer_prompts").partial(stage="answer", run=run).expand(shard=diagnosis_shards(run))
    answered = commit_stage.override(task_id="commit_answers")(stage="answer", run=run, results=answers, next_stages=["answer"])
    verdicts = model_stage.override(task_id="judge_answers").partial(stage="verdict", run=run).expand(shard=answered)
    plan = aggregate_deficiencies(run, verdicts)
    targeted = model_stage.override(task_id="synthesize_targeted").partial(stage="targeted", run=run).expand(shard=plan)
    screened = screen_leakage(run, targeted)
    scored = model_stage.override(task_id="assess_quality").partial(stage="quality", run=run).expand(shard=screened)
    kept = commit_stage.override(task_id="commit_quality")(stage="quality", run=run, results=scored, next_stages=["quality"])
    responses = model_stage.override(task_id="generate_responses").partial(stage="respond", run=run).expand(shard=kept)
    answered_shards = commit_stage.override(task_id="commit_respond")(stage="respond", run=run, results=responses, next_stages=["respond"])
    publish(run, verify_responses.partial(run=run).expand(shard=answered_shards))


deficiency_diagnosis()
