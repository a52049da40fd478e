"""Infinite-Instruct, the code-instruction pipeline, declared.

seeds -> reverse -> keywords -> [knowledge graph -> combinations] -> backfeed
      -> quality (reverse + backfeed problems) -> respond -> verify (static lint gate) -> write_tests -> execute (test gate) -> dataset
seeds -> seed_quality (the seeds' own problems, for the complexity-by-origin report)

Two chains stream in one mapped task each (:mod:`infinisynth.stream`): reverse -> keywords, and
quality -> respond -> verify -> write_tests -> execute. The barriers left are the method's: the
knowledge graph needs every keyword, quality reads reverse and backfeed problems alike.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from infinisynth.spec import PipelineSettings, PipelineSpec, Step
from infinisynth.specs.common import VERIFIED, LintGate, QualityGate, answered_and_verified

PIPELINE = "code_instruct"


class CodeInstructSettings(QualityGate, LintGate, PipelineSettings):
    """A run's settings, with the paper's defaults: every field is a Param of the DAG."""

    seed_source: str = Field(
        "mine", description="'mine' to mine snippets from seed_roots, or a Magicoder-OSS-Instruct-shaped Parquet/JSONL path"
    )
    seed_roots: list[str] = Field(
        default_factory=list, description="Source trees to mine; empty = the Python standard library and global npm modules"
    )
    seed_languages: list[str] = Field(
        default_factory=list, description="Languages to keep (python, javascript, java, cpp, sql, ...); empty = all"
    )
    max_seeds: int = Field(200, gt=0, description="Seed snippets per night: the night's own window of the seed corpus")
    max_seed_bytes: int = Field(
        8_000, gt=0, description="Largest seed snippet (or seed problem) in UTF-8 bytes; larger rows are rejected (mined: cut at 2,000)"
    )
    shard_size: int = Field(50, gt=0, description="Rows per mapped task")
    mining_seed: int = Field(0, description="Random seed of the seed corpus's order (which seeds each night gets) and of snippet mining")
    problems_per_seed: int = Field(1, ge=1, le=10, description="Reverse problems per seed snippet")
    backfeed_ratio: float = Field(0.67, ge=0, description="Backfeed problems per reverse problem (paper: 20K / 30K)")
    backfeed_languages: list[str] = Field(default_factory=list, description="Target languages of backfeed problems; empty = the seeds' mix")
    reuse_graph: bool = Field(True, description="Grow the knowledge graph from the latest earlier night's")
    sampling_seed: int = Field(0, description="Random seed for keyword-combination sampling")
    generator_temperature: float | None = Field(None, ge=0, le=2, description="Override the generator's temperature")
    generator_max_tokens: int | None = Field(None, gt=0, description="Override the generator's max_tokens")
    judge_temperature: float | None = Field(None, ge=0, le=2, description="Override the judge's temperature")
    score_seed_problems: bool = Field(
        True, description="Judge the seeds' own problems (Magicoder files) for the complexity-by-origin report"
    )
    answer_threshold: float | None = Field(
        None,
        ge=1,
        le=10,
        description="Answer problems scoring at least this (at most quality_threshold; empty = quality_threshold): rows between "
        "the two are kept apart in below_threshold/ for the release's lower-threshold variants, never published",
    )
    holdout_fraction: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Share of published pairs held out (by prompt hash) as the deficiency-diagnosis exam; never in the dataset",
    )

    @model_validator(mode="after")
    def _answer_threshold(self) -> CodeInstructSettings:
        if self.answer_threshold is None:
            self.answer_threshold = self.quality_threshold
        elif self.answer_threshold > self.quality_threshold:
            raise ValueError(f"answer_threshold ({self.answer_threshold}) exceeds quality_threshold ({self.quality_threshold})")
        return self


_PROBLEM_CHECKS = {"min_chars": "min_problem_chars"}

SPEC = PipelineSpec(
    PIPELINE,
    CodeInstructSettings,
    (
        Step("seeds", "infinisynth.pipelines.code_instruct:PrepareSeeds", "global", task="prepare_seeds"),
        Step(
            "reverse",
            "infinisynth.stages.reverse:ReverseConstruction",
            upstream=("seeds",),
            task="reverse_construct",
            settings=_PROBLEM_CHECKS,
        ),
        Step(
            "seed_quality",
            "infinisynth.pipelines.code_instruct:SeedProblemQuality",
            upstream=("seeds",),
            beside="reverse",  # in reverse construction's tasks: no task instances of its own when it is off
            in_funnel=False,
            settings={"samples": "quality_samples", "threshold": "quality_threshold"},
            # Mined snippets carry no problems: nothing to score, so the step is off for them.
            when=lambda settings: settings.score_seed_problems and settings.seed_source != "mine",
        ),
        # Each problem's keywords as soon as it is made, in reverse construction's task.
        Step("keywords", "infinisynth.stages.keywords:KeywordExtraction", upstream=("reverse",), fused=True),
        Step(
            "combinations",
            "infinisynth.pipelines.code_instruct:PlanBackfeed",
            "global",
            upstream=("keywords",),
            task="build_knowledge_graph",
            in_funnel=False,
        ),
        Step(
            "backfeed",
            "infinisynth.stages.backfeed:BackfeedConstruction",
            upstream=("combinations",),
            task="backfeed_construct",
            settings=_PROBLEM_CHECKS,
        ),
        Step(
            "quality",
            "infinisynth.stages.quality:QualityAssessment",
            upstream=("reverse", "backfeed"),
            task="assess_quality",
            settings={"samples": "quality_samples", "threshold": "answer_threshold"},
        ),
        # A problem the judges pass is answered, linted and tested in the same task, while the
        # rest of its shard is still being judged.
        *answered_and_verified("quality", fused=True),
        Step(
            "dataset",
            "infinisynth.pipelines.code_instruct:Publish",
            "global",
            upstream=(VERIFIED, "seed_quality"),
            task="publish",
            in_funnel=False,
        ),
    ),
)
