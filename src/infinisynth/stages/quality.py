"""Quality assessment (Infinite-Instruct 3.3): seven dimensions, several assessments, one gate.

The judge scores each problem ``samples`` times independently (default 3); the per-dimension means
are kept on the row, and a problem whose overall mean is below ``threshold`` (default 6) is
rejected with its scores. The judge's ``complexity`` dimension is the problem's complexity score,
which the run report averages by origin (the paper: seeds 3.17, reverse 5.85, backfeed 6.83).
"""

from __future__ import annotations

import json
from statistics import fmean
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, Field

from infinisynth.languages import display_name
from infinisynth.llm import first_failure
from infinisynth.quality_dimensions import DIMENSIONS
from infinisynth.records import schema_with
from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Rejected, Row, StageSettings
from infinisynth.stages.problems import PROBLEM_FIELDS

# An enum rather than a 1..10 range: grammar-constrained decoders (llama.cpp) enforce enums but
# not numeric bounds, so small models cannot answer 34.
Score = Literal[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


class Assessment(BaseModel):
    specificity: Score
    domain_knowledge: Score
    complexity: Score
    problem_solving: Score
    creativity: Score
    technical_accuracy: Score
    practical_application: Score
    rationale: str = Field("", max_length=500)


QUALITY_FIELDS = [
    pa.field("quality_scores", pa.struct([(d, pa.float64()) for d in DIMENSIONS])),
    pa.field("quality_mean", pa.float64()),
    pa.field("complexity", pa.float64()),
    pa.field("quality_samples", pa.int32()),
]
SCORED_SCHEMA = schema_with(*PROBLEM_FIELDS, *QUALITY_FIELDS)


class QualitySettings(StageSettings):
    samples: int = Field(3, ge=1)
    threshold: float = 6.0
    min_valid_samples: int = 2  # fewer valid assessments than this and the row is rejected


class QualityAssessment(ModelStage):
    """Scores each problem; the same judge scores other stages' problems too (e.g. ``seed_quality``)."""

    name = "quality"
    schema = SCORED_SCHEMA
    prompt = "quality_assessment"
    role = "judge"
    Settings = QualitySettings
    answer = Assessment
    settings: QualitySettings

    def format_input(self, row: Row) -> Messages:
        return self.template.render(problem=row["problem"], lang_name=display_name(row.get("lang")))

    async def process(self, row: Row) -> Outcome:
        samples = await self.client.structured_samples(self.format_input(row), Assessment, stage=self.name, n=self.settings.samples)
        valid = [s for s in samples if isinstance(s, Assessment)]
        if len(valid) < min(self.settings.min_valid_samples, self.settings.samples):
            failure = first_failure(samples)
            return Rejected(
                failure.reason,
                f"only {len(valid)} of {self.settings.samples} assessments were usable; {failure.detail}",
                failure.raw_answer,
            )
        scores = {d: round(fmean(getattr(s, d) for s in valid), 3) for d in DIMENSIONS}
        mean = round(fmean(scores.values()), 3)
        if mean < self.settings.threshold:
            return Rejected(
                "low_quality",
                f"mean {mean:.2f} < {self.settings.threshold:g}; scores {json.dumps(scores)}",
                evidence={"quality_scores": scores, "quality_mean": mean, "complexity": scores["complexity"], "origin": row["origin"]},
            )
        return Passed(
            [self.annotate(row, quality_scores=scores, quality_mean=mean, complexity=scores["complexity"], quality_samples=len(valid))]
        )
