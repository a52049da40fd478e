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

import pendulum
from airflow.sdk import Asset, dag, task

from infinisynth.airflow_dag import pipeline_dag
from infinisynth.spec import params_from_settings
from infinisynth.specs.deficiency_diagnosis import SPEC, ModelRegistration

MODELS_REGISTERED = Asset(name="models.registered", uri="infinisynth://models/registered")
DIAGNOSIS_DATASET = Asset(name="diagnosis.dataset", uri="infinisynth://diagnosis/dataset")
START = pendulum.datetime(2026, 1, 1, tz="UTC")


@dag(
    dag_id="register_model",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["diagnosis"],
    doc_md="Register a trained model: emits a `models.registered` asset event whose extra names its endpoint, which triggers `deficiency_diagnosis`. The API key stays in the connection named by `conn_id`.",
    params=params_from_settings(ModelRegistration),
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


@task(inlets=[MODELS_REGISTERED])
def start_iteration(params=None, ds=None, dag_run=None, triggering_asset_events=None, inlet_events=None) -> dict:
    """Resolve the run's settings and target, claim its iteration: the `run` every task gets."""
    from airflow.sdk import Variable

    from infinisynth.airflow_env import connection_lookup
    from infinisynth.pipelines import diagnosis as p

    def plain(event) -> dict:
        return {k: getattr(event, k, None) for k in ("id", "extra", "timestamp", "source_dag_id", "source_run_id")}

    def latest() -> dict | None:  # a manual run without a target diagnoses the latest registration
        try:
            return plain(inlet_events[MODELS_REGISTERED][-1])
        except IndexError:
            return None

    triggering = [plain(e) for e in (triggering_asset_events or {}).get(MODELS_REGISTERED, [])] if triggering_asset_events else []
    return p.begin(
        params,
        dag_run.conf,
        Variable.get(p.SETTINGS_VARIABLE, default=None, deserialize_json=True),
        triggering,
        latest,
        run_id=dag_run.run_id,
        date=ds or dag_run.run_after.date().isoformat(),  # asset-triggered runs have no logical date
        lookup=connection_lookup,
    )


diagnosis = pipeline_dag(
    SPEC,
    dag_id="deficiency_diagnosis",
    schedule=[MODELS_REGISTERED],
    tags=["infinity-instruct-subject", "diagnosis"],
    doc_md=__doc__,
    outlets={"dataset": [DIAGNOSIS_DATASET]},
    start=start_iteration,  # iterations are numbered in order: one run at a time claims its number
)
