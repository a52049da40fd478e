"""Difficulty scores (judge role), before and after evolution.

The paper shows evolution raises difficulty by rating seeds and evolved instructions with one judge.
This stage scores any instruction row (seeds are generation 0) ``samples`` times and keeps the mean;
the run report compares the means by generation. A row whose samples are all unusable is rejected
with the judge's failure reason, so it is visible rather than silently missing from the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, Field

from infinisynth.llm import LLMRejection, first_failure
from infinisynth.records import schema_with
from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Rejected, Row, StageSettings

# An enum, not a range: grammar-constrained decoders (llama.cpp) enforce enums but not bounds.
Score = Literal[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]

DIFFICULTY_SCHEMA = schema_with(
    pa.field("instruction", pa.string(), nullable=False),
    pa.field("seed_id", pa.string()),
    pa.field("generation", pa.int32()),
    pa.field("difficulty", pa.float64()),
    pa.field("difficulty_samples", pa.int32()),
    pa.field("difficulty_rationale", pa.string()),
)


class DifficultyAnswer(BaseModel):
    difficulty: Score
    rationale: str = Field("", max_length=500)


class DifficultySettings(StageSettings):
    samples: int = 1


class Difficulty(ModelStage):
    """Scores rows in place (same id); the pipeline runs it as ``difficulty_seeds`` and ``difficulty_evolved``."""

    name = "difficulty"
    schema = DIFFICULTY_SCHEMA
    prompt = "subject_difficulty"
    role = "judge"
    Settings = DifficultySettings
    answer = DifficultyAnswer
    settings: DifficultySettings

    def format_input(self, row: Row) -> Messages:
        return self.template.render(instruction=row["instruction"])

    def format_output(self, row: Row, answer: Sequence[DifficultyAnswer | LLMRejection]) -> Outcome:
        """``answer``: the ``samples`` ratings of the row, each an answer or the judge's failure."""
        valid = [s for s in answer if isinstance(s, DifficultyAnswer)]
        if not valid:
            failure = first_failure(answer)
            return Rejected(failure.reason, f"no usable difficulty rating of {self.settings.samples}; {failure.detail}", failure.raw_answer)
        return Passed(
            [
                {
                    "id": row["id"],
                    "parent_ids": list(row.get("parent_ids") or []),
                    "origin": row["origin"],
                    "lang": row.get("lang"),
                    "instruction": row["instruction"],
                    "seed_id": row.get("seed_id") or row["id"],
                    "generation": int(row.get("generation") or 0),
                    "difficulty": round(fmean(s.difficulty for s in valid), 3),
                    "difficulty_samples": len(valid),
                    "difficulty_rationale": valid[0].rationale,
                }
            ]
        )

    async def process(self, row: Row) -> Outcome:
        samples = await self.client.structured_samples(self.format_input(row), DifficultyAnswer, stage=self.name, n=self.settings.samples)
        return self.format_output(row, samples)
