"""What Reverse and Backfeeding Construction both produce: a programming problem row.

Both directions share one schema, so every later stage (quality, responses, verification,
publishing) reads one table shape whichever way a problem was made. ``provenance`` records, per
stage that touched the row, the prompt version and model used (JSON: ``{stage: {prompt, model}}``).
"""

from __future__ import annotations

import re

import pyarrow as pa
from pydantic import BaseModel, Field

from infinisynth.records import schema_with
from infinisynth.stages.base import StageSettings, with_provenance

COMBINATION_TYPE = pa.struct([("task", pa.string()), ("instruction", pa.string()), ("knowledge", pa.string())])

PROBLEM_FIELDS = [
    pa.field("problem", pa.string(), nullable=False),
    pa.field("seed", pa.string()),  # reverse: the snippet it came from
    pa.field("combination", COMBINATION_TYPE),  # backfeed: the keyword triple it came from
    pa.field("variant", pa.int32()),
    pa.field("provenance", pa.string()),
]
PROBLEM_SCHEMA = schema_with(*PROBLEM_FIELDS)

# Phrases that only make sense to someone who has seen material the solver is not given.
_REFERS_TO_HIDDEN = re.compile(
    r"\b(the|this|above|given|provided|following) (code )?(snippet|code above|above code)\b"
    r"|\bin the (code|snippet) (above|provided|given)\b",
    re.IGNORECASE,
)


class ProblemAnswer(BaseModel):
    problem: str = Field(min_length=1)


class ProblemChecks(StageSettings):
    min_chars: int = 40
    max_chars: int = 8_000
    leak_line_chars: int = 20  # snippet lines at least this long count as substantive
    leak_max_lines: int = 2  # copying more substantive lines than this is a leak ...
    leak_max_fraction: float = 0.5  # ... and so is copying this share of them or more


def check_problem(problem: str, checks: ProblemChecks, snippet: str | None = None) -> tuple[str, str] | None:
    """``(reason, detail)`` if the problem is unusable, else None."""
    if len(problem) < checks.min_chars:
        return "too_short", f"problem has {len(problem)} characters; at least {checks.min_chars} needed"
    if len(problem) > checks.max_chars:
        return "too_long", f"problem has {len(problem)} characters; at most {checks.max_chars} allowed"
    if snippet:
        substantive, copied = copied_lines(problem, snippet, checks.leak_line_chars)
        if copied and (len(copied) > checks.leak_max_lines or len(copied) >= checks.leak_max_fraction * substantive):
            return "leaks_snippet", f"{len(copied)} of {substantive} seed snippet lines appear verbatim, e.g. {copied[0]!r}"
    mention = _REFERS_TO_HIDDEN.search(problem)
    if mention:
        return "not_self_contained", f"refers to code the solver cannot see: {mention.group(0)!r}"
    return None


def copied_lines(problem: str, snippet: str, min_chars: int) -> tuple[int, list[str]]:
    """(number of substantive snippet lines, those of them found verbatim in the problem).

    Whitespace is normalized on both sides, so re-indenting a copy does not hide it.
    """
    flat_problem = " ".join(problem.split())
    lines = {" ".join(line.split()) for line in snippet.splitlines()}
    substantive = [line for line in lines if len(line) >= min_chars]
    return len(substantive), sorted(line for line in substantive if line in flat_problem)


__all__ = ["PROBLEM_SCHEMA", "ProblemAnswer", "ProblemChecks", "check_problem", "copied_lines", "with_provenance"]
