"""Reverse Construction (Infinite-Instruct 3.1): a real code snippet -> self-contained problems.

Each seed yields ``problems_per_seed`` problems (prompt variants, so they differ). A problem that
copies the snippet or leans on it ("the code above") is not self-contained and is rejected; a seed
none of whose problems survive goes to ``rejected`` with the first reason.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from infinisynth.languages import display_name
from infinisynth.llm import LLMClient, LLMRejection
from infinisynth.prompts import PromptTemplate
from infinisynth.records import content_id, schema_with
from infinisynth.runner import Outcome, Passed, Rejected

# Phrases that only make sense to someone who has seen the snippet.
_REFERS_TO_SNIPPET = re.compile(
    r"\b(the|this|above|given|provided|following) (code )?(snippet|code above|above code)\b"
    r"|\bin the (code|snippet) (above|provided|given)\b",
    re.IGNORECASE,
)


class ReverseProblem(BaseModel):
    problem: str = Field(min_length=1)


@dataclass(frozen=True)
class ReverseSettings:
    problems_per_seed: int = 1
    min_problem_chars: int = 40
    max_problem_chars: int = 8_000
    leak_line_chars: int = 20  # snippet lines at least this long count as substantive
    leak_max_lines: int = 2  # copying more substantive lines than this is a leak ...
    leak_max_fraction: float = 0.5  # ... and so is copying this share of them or more


SCHEMA = schema_with(
    pa.field("problem", pa.string(), nullable=False),
    pa.field("seed", pa.string()),
    pa.field("variant", pa.int32()),
    pa.field("prompt_version", pa.string()),
    pa.field("model", pa.string()),
)


class ReverseConstruction:
    name = "reverse"
    schema = SCHEMA

    def __init__(self, client: LLMClient, prompt: PromptTemplate, settings: ReverseSettings = ReverseSettings()):
        self.client = client
        self.prompt = prompt
        self.settings = settings

    def cache_key(self, row: dict[str, Any]) -> str:
        config = self.client.config
        return content_id(self.prompt.version, config.model, config.temperature, config.seed, asdict(self.settings))

    async def process(self, row: dict[str, Any]) -> Outcome:
        answers = await asyncio.gather(
            *(self._one(row, variant) for variant in range(self.settings.problems_per_seed)),
        )
        passed = [a for a in answers if isinstance(a, dict)]
        if passed:
            return Passed(passed)
        return next(a for a in answers if isinstance(a, Rejected))

    async def _one(self, row: dict[str, Any], variant: int) -> dict[str, Any] | Rejected:
        messages = self.prompt.render(
            lang=row.get("lang") or "", lang_name=display_name(row.get("lang")), snippet=row["seed"], variant=variant
        )
        try:
            answer = await self.client.structured(messages, ReverseProblem, stage=self.name)
        except LLMRejection as rejection:
            return Rejected(rejection.reason, rejection.detail, rejection.raw_answer)
        problem = answer.problem.strip()
        problem_check = check_problem(problem, row["seed"], self.settings)
        if problem_check is not None:
            reason, detail = problem_check
            return Rejected(reason, detail, raw_answer=problem)
        return {
            "id": content_id("reverse", row["id"], variant, problem),
            "parent_ids": [row["id"]],
            "origin": "reverse",
            "lang": row.get("lang"),
            "problem": problem,
            "seed": row["seed"],
            "variant": variant,
            "prompt_version": self.prompt.version,
            "model": self.client.config.model,
        }


def check_problem(problem: str, snippet: str, settings: ReverseSettings) -> tuple[str, str] | None:
    """``(reason, detail)`` if the problem is unusable, else None."""
    if len(problem) < settings.min_problem_chars:
        return "too_short", f"problem has {len(problem)} characters; at least {settings.min_problem_chars} needed"
    if len(problem) > settings.max_problem_chars:
        return "too_long", f"problem has {len(problem)} characters; at most {settings.max_problem_chars} allowed"
    substantive, copied = copied_lines(problem, snippet, settings.leak_line_chars)
    if copied and (len(copied) > settings.leak_max_lines or len(copied) >= settings.leak_max_fraction * substantive):
        return "leaks_snippet", f"{len(copied)} of {substantive} seed snippet lines appear verbatim, e.g. {copied[0]!r}"
    mention = _REFERS_TO_SNIPPET.search(problem)
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
