"""Infinity Instruct Subject, the general-instruction pipeline, declared.

    pool -> tagging -> [normalize: vocabulary] tags -> losses -> [select] seeds
         -> difficulty of seeds
         -> generation 1..G: evolve -> oracle check (one mapped task per shard does both)
         -> respond (survivors of every generation) -> difficulty of evolved | multi-turn
         -> dataset (chat rows + coverage and depth report)

The spec wires ``MAX_GENERATIONS`` generation steps; the ``generations`` setting decides how many
run: a later generation's steps are switched off, map over nothing and write no partition.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from infinisynth.spec import PipelineSettings, PipelineSpec, Step

PIPELINE = "subject_instruct"
MAX_GENERATIONS = 4


class SubjectSettings(PipelineSettings):
    """A run's settings, with the paper's defaults: every field is a Param of the DAG."""

    pool_source: str = Field(
        "code_instruct",
        description="'code_instruct' (that pipeline's latest dataset at or before the date) or a Parquet/JSONL path/URL with messages or instruction/response columns",
    )
    max_pool_rows: int = Field(0, ge=0, description="Cap on pool rows; 0 = the whole pool")
    shard_size: int = Field(200, gt=0, description="Rows per mapped task")
    # tag normalization
    merge_similarity: float = Field(
        0.91, gt=0, le=1, description="Merge tags whose embedding cosine similarity is at least this (paper: lambda 0.91)"
    )
    cluster_eps: float = Field(0.47, gt=0, description="Tag clustering radius (paper: eps 0.47)")
    noise_floor: int = Field(100, ge=1, description="Drop tags rarer than this over the pool (paper: 100)")
    domains: int = Field(25, ge=1, description="Domain categories tags are mapped to (paper: 25)")
    # informative seed selection
    long_tail_frequency: int = Field(200, ge=1, description="Long-tail seed: carries a tag rarer than this (paper: 200)")
    multi_skill_tags: int = Field(4, ge=0, description="Multi-skill seed: more tags than this (paper: 4)")
    loss_z: float = Field(1.96, ge=0, description="Undertrained seed: base loss above mean + this many std (paper: 1.96)")
    hard_to_follow_quantile: float = Field(
        0.1, gt=0, lt=1, description="Hard-to-follow seed: loss reduction in this lowest share of the pool"
    )
    max_seeds: int = Field(1000, gt=0, description="Seeds evolved per night (most selection reasons first)")
    # evolution, oracle, multi-turn, difficulty
    generations: int = Field(3, ge=1, le=MAX_GENERATIONS, description="Evolution generations, each over the previous one's survivors")
    copy_ngram_words: int = Field(
        6, ge=2, description="Oracle: a run of this many words copied from the evolution prompt rejects a rewrite"
    )
    oracle_verdict: bool = Field(
        True,
        description="Ask the oracle whether each rewrite adds information and is answerable; off = the deterministic checks only (tiny demo models)",
    )
    min_followups: int = Field(1, ge=1, le=4, description="Multi-turn: fewest follow-up rounds (paper: 1)")
    max_followups: int = Field(4, ge=1, le=4, description="Multi-turn: most follow-up rounds (paper: 4)")
    followup_attempts: int = Field(
        3, ge=1, le=10, description="Multi-turn: draws of a follow-up question (new sampling seed each) before a repeat rejects the row"
    )
    difficulty_samples: int = Field(1, ge=1, description="Judge ratings averaged per difficulty score")
    sampling_seed: int = Field(0, description="Random seed for evolution operations and follow-up counts")
    # models
    tagger_model: str | None = Field(None, description="Override the tagger connection's model")
    base_model: str | None = Field(None, description="Override the base (loss) connection's model")
    generator_model: str | None = Field(None, description="Override the generator connection's model")
    generator_temperature: float | None = Field(None, ge=0, le=2, description="Override the generator's temperature")
    generator_max_tokens: int | None = Field(None, gt=0, description="Override the generator's max_tokens")
    followup_model: str | None = Field(None, description="Override the follow-up role's model (its connection, else the generator's)")
    followup_frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="Multi-turn: frequency penalty of the follow-up role (none: its connection's)"
    )
    followup_presence_penalty: float | None = Field(
        None, ge=-2, le=2, description="Multi-turn: presence penalty of the follow-up role (none: its connection's)"
    )
    oracle_model: str | None = Field(None, description="Override the oracle connection's model")
    judge_model: str | None = Field(None, description="Override the judge connection's model")

    @model_validator(mode="after")
    def _followups_ordered(self) -> SubjectSettings:
        if self.min_followups > self.max_followups:
            raise ValueError(f"min_followups ({self.min_followups}) exceeds max_followups ({self.max_followups})")
        return self


def evolve_stage(generation: int) -> str:
    return f"evolve_g{generation}"


def oracle_stage(generation: int) -> str:
    return f"oracle_g{generation}"


def _runs(generation: int) -> Any:
    return lambda settings: settings.generations >= generation


def _generation(g: int) -> tuple[Step, Step]:
    """Evolve the previous generation's survivors (the seeds for g = 1), then the oracle check in
    the same mapped task; ``commit_g<g>`` publishes both."""
    parents = "seeds" if g == 1 else oracle_stage(g - 1)
    return (
        Step(evolve_stage(g), "infinisynth.subject.evolve:Evolution", upstream=(parents,), commit_task=f"commit_g{g}", when=_runs(g)),
        Step(
            oracle_stage(g),
            "infinisynth.subject.oracle:OracleCheck",
            upstream=(evolve_stage(g),),
            fused=True,
            settings={"model_verdict": "oracle_verdict"},
            when=_runs(g),
        ),
    )


_DIFFICULTY = {"samples": "difficulty_samples"}

SPEC = PipelineSpec(
    PIPELINE,
    SubjectSettings,
    (
        Step("pool", "infinisynth.pipelines.subject:PreparePool", "global", task="prepare_pool"),
        Step("tagging", "infinisynth.subject.tagging:Tagging", upstream=("pool",), task="tag_instructions"),
        Step(
            "tags", "infinisynth.pipelines.subject:NormalizeTags", "global", upstream=("tagging",), task="normalize_tags", in_funnel=False
        ),
        Step("losses", "infinisynth.pipelines.subject:PoolLosses", upstream=("tags",), task="score_losses"),
        Step("seeds", "infinisynth.pipelines.subject:SelectSeeds", "global", upstream=("losses",), task="select_seeds"),
        Step(
            "difficulty_seeds",
            "infinisynth.subject.difficulty:Difficulty",
            upstream=("seeds",),
            task="score_seed_difficulty",
            commit_task="commit_seed_difficulty",
            settings=_DIFFICULTY,
        ),
        *(step for g in range(1, MAX_GENERATIONS + 1) for step in _generation(g)),
        Step(
            "respond",
            "infinisynth.subject.multiturn:SurvivorResponse",
            upstream=tuple(oracle_stage(g) for g in range(1, MAX_GENERATIONS + 1)),
            task="generate_responses",
            commit_task="commit_responses",
        ),
        Step(
            "difficulty_evolved",
            "infinisynth.subject.difficulty:Difficulty",
            upstream=("respond",),
            task="score_evolved_difficulty",
            settings=_DIFFICULTY,
        ),
        Step("multiturn", "infinisynth.subject.multiturn:MultiTurn", upstream=("respond",), task="extend_multiturn"),
        Step(
            "dataset",
            "infinisynth.pipelines.subject:Publish",
            "global",
            upstream=("multiturn", "difficulty_evolved", "difficulty_seeds"),
            commits=("multiturn", "difficulty_evolved"),
            task="publish",
            in_funnel=False,
        ),
    ),
)
