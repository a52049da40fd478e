"""Settings that more than one pipeline has: the problem checks, the quality gate, the lint and test gates."""

from __future__ import annotations

from typing import Literal

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
    test_gate: Literal["off", "report", "enforce"] = Field(
        "off",
        description="Run each answer's generated tests in the bubblewrap sandbox (Python, JavaScript): off; report (keep "
        "every pair, record test_verdict); enforce (pairs whose tests fail, error, time out or are killed are rejected)",
    )


VERIFIED = "execute"  # the last step of answered_and_verified: the answers that passed every gate


def answered_and_verified(after: str, *, fused: bool = False) -> tuple[Step, Step, Step, Step]:
    """Responses to the problems of step ``after``, then the lint gate on them (Infinite-Instruct
    3.3-3.4), then tests written for the lint-clean ones and run in the sandbox (the ``test_gate``
    Param; docs/SANDBOX.md). ``write_tests`` has no ``when``: a switched-off step writes no
    partition, so ``execute`` would get nothing to pass through; with the gate off it makes no
    model call and passes every row on (``tests`` null).

    ``fused``: the four run in the mapped task of ``after`` (a mapped step), each row streaming
    from the judge to the answer to the gates; the task ids are then those of ``after``'s chain."""
    return (
        Step("respond", "infinisynth.stages.respond:ResponseGeneration", upstream=(after,), task="generate_responses", fused=fused),
        Step(
            "verify",
            "infinisynth.stages.verify:StaticVerification",
            "batch",
            upstream=("respond",),
            task="verify_responses",
            funnel_meta=("discard_by_language",),
            fused=fused,
        ),
        Step(
            "write_tests",
            "infinisynth.stages.write_tests:WriteTests",
            upstream=("verify",),
            settings={"enabled": "test_gate"},
            fused=fused,
        ),
        Step(
            VERIFIED,
            "infinisynth.stages.execute:DynamicVerification",
            "batch",
            upstream=("write_tests",),
            task="execute_tests",
            funnel_meta=("test_pass_by_language",),
            fused=fused,
        ),
    )
