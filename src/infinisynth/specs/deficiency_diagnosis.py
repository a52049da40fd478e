"""The deficiency-diagnosis loop (Infinity Instruct Subject, Mechanism 3), declared.

    [start: target model, iteration number, settings] -> diagnosis_set -> answer (target)
      -> verdict (oracle) -> [aggregate: groups, ranking, accuracy] targets -> targeted (generator)
      -> [leakage screen] leakage -> quality (judge) -> respond (generator) -> verify (lint gate) -> write_tests -> execute (test gate)
      -> dataset (targeted chat rows, the iteration row, the report)

Every table of an iteration lives under ``{root}/diagnosis/{stage}/ds={date}.iter{NNNN}/`` (the
iteration's partition): the DAG's first task claims the iteration and resolves the run's settings
once (Param defaults < the ``deficiency_diagnosis_settings`` Variable < the run's conf); every
step then runs in that iteration's context.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from infinisynth.spec import PipelineSettings, PipelineSpec, Step
from infinisynth.specs.common import VERIFIED, LintGate, QualityGate, answered_and_verified

PIPELINE = "diagnosis"
HOLDOUT_SOURCE = "holdout"


class DiagnosisSettings(QualityGate, LintGate, PipelineSettings):
    """A run's settings: every field is a Param of the DAG."""

    target_base_url: str | None = Field(None, description="Manual runs: the model's OpenAI-compatible base URL (else the asset event's)")
    target_model: str | None = Field(None, description="Manual runs: the model id")
    target_conn_id: str | None = Field(
        None, description="Connection with the target's API key; empty = the event's conn_id, else llm_target, else none"
    )
    target_max_tokens: int | None = Field(None, gt=0, description="Override the target's max_tokens")
    target_temperature: float = Field(0.0, ge=0, le=2, description="The target's temperature (0: its best answer)")
    diagnosis_source: str = Field(
        HOLDOUT_SOURCE, description="'holdout' (code_instruct's held-out slice) or a Parquet/JSONL path with prompt and reference"
    )
    holdout_pipeline: str = Field("code_instruct", description="The pipeline whose held-out slice is the diagnosis set")
    max_diagnosis_rows: int = Field(200, gt=0, description="Diagnosis prompts per iteration")
    shard_size: int = Field(50, gt=0, description="Rows per mapped task")
    benchmarks: list[str] = Field(
        default_factory=lambda: ["humaneval"], description="Evaluation benchmarks a diagnosis set or a targeted row must not overlap"
    )
    merge_similarity: float = Field(
        0.91, ge=0, le=1, description="Merge deficiency labels this similar (paper's lambda); 1 = exact labels only"
    )
    top_groups: int = Field(5, ge=1, description="Deficiency groups targeted per iteration")
    max_targeted: int = Field(50, ge=0, description="Cap on targeted instructions per iteration, split by group weight")
    leakage_max_cosine: float = Field(0.80, ge=0, le=1, description="Reject targeted rows with MiniLM cosine >= this to a diagnosis prompt")
    leakage_max_ngram_overlap: float = Field(
        0.50, ge=0, le=1, description="Reject targeted rows sharing this share of word n-grams with a diagnosis prompt"
    )
    leakage_ngram: int = Field(5, ge=1, le=20, description="Word n-gram length of the overlap check")
    oracle_model: str | None = Field(None, description="Override the oracle connection's model")


class ModelRegistration(BaseModel):
    """The ``register_model`` DAG's Params: what a ``models.registered`` event names."""

    base_url: str = Field(min_length=1, description="OpenAI-compatible base URL of the model (…/v1)")
    model: str = Field(min_length=1, description="Model id at that endpoint")
    conn_id: str | None = Field(None, description="Airflow connection holding its API key (password); empty = llm_target or none")
    name: str | None = Field(None, description="Free-form label, e.g. the training run")


_CHECKS = {"min_chars": "min_problem_chars"}
_QUALITY = {"samples": "quality_samples", "threshold": "quality_threshold"}
_DIAGNOSIS = "infinisynth.pipelines.diagnosis"

SPEC = PipelineSpec(
    PIPELINE,
    DiagnosisSettings,
    (
        Step("diagnosis_set", f"{_DIAGNOSIS}:DiagnosisSet", "global", task="load_diagnosis_set"),
        Step(
            "answer",
            "infinisynth.diagnosis.diagnose:TargetAnswer",
            upstream=("diagnosis_set",),
            task="answer_prompts",
            commit_task="commit_answers",
        ),
        Step("verdict", "infinisynth.diagnosis.diagnose:OracleVerdict", upstream=("answer",), task="judge_answers"),
        Step(
            "targets",
            f"{_DIAGNOSIS}:AggregateDeficiencies",
            "global",
            upstream=("verdict",),
            task="aggregate_deficiencies",
            in_funnel=False,
        ),
        Step(
            "targeted",
            "infinisynth.diagnosis.targeted:TargetedSynthesis",
            upstream=("targets",),
            task="synthesize_targeted",
            settings=_CHECKS,
        ),
        Step("leakage", f"{_DIAGNOSIS}:ScreenLeakage", "global", upstream=("targeted",), task="screen_leakage"),
        Step("quality", "infinisynth.stages.quality:QualityAssessment", upstream=("leakage",), task="assess_quality", settings=_QUALITY),
        *answered_and_verified("quality"),
        Step("dataset", f"{_DIAGNOSIS}:Publish", "global", upstream=(VERIFIED,), task="publish", in_funnel=False),
    ),
    context=f"{_DIAGNOSIS}:run_context",
)
