"""Settings that more than one pipeline has: the problem checks, the quality gate and the lint gate."""

from __future__ import annotations

from pydantic import BaseModel, Field

from infinisynth.spec import Step


class QualityGate(BaseModel):
    """Infinite-Instruct 3.3: problems judged on seven dimensions, kept when the mean passes."""

    min_problem_chars: int = Field(40, ge=1, description="Shorter problems are rejected")
    quality_samples: int = Field(3, ge=1, description="Independent judge assessments averaged")
    quality_threshold: float = Field(6.0, ge=1, le=10, description="Keep problems whose mean score is at least this")
    generator_model: str | None = Field(None, description="Override the generator connection's model")
    judge_model: str | None = Field(None, description="Override the judge connection's model")


class LintGate(BaseModel):
    """Infinite-Instruct 3.4: the static lint gate on every answer's code."""

    lint_gate: bool = Field(True, description="Discard pairs whose code has an error-level lint finding (off: publish unchecked)")
    lint_max_code_bytes: int = Field(256 * 1024, gt=0, description="Larger code blocks fail the gate unread")
    lint_timeout_scale: float = Field(1.0, gt=0, description="Multiplies every linter's time budget")


def answered_and_verified(after: str) -> tuple[Step, Step]:
    """Responses to the problems of step ``after``, then the lint gate on them (Infinite-Instruct 3.3-3.4)."""
    return (
        Step("respond", "infinisynth.stages.respond:ResponseGeneration", upstream=(after,), task="generate_responses"),
        Step(
            "verify",
            "infinisynth.stages.verify:StaticVerification",
            "batch",
            upstream=("respond",),
            task="verify_responses",
            funnel_meta=("discard_by_language",),
        ),
    )
