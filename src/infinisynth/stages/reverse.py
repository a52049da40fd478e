"""Reverse Construction (Infinite-Instruct 3.1): a real code snippet -> self-contained problems.

Each seed yields ``problems_per_seed`` problems (prompt variants, so they differ). A problem that
copies the snippet or leans on it ("the code above") is not self-contained and is rejected; a seed
none of whose problems survive goes to ``rejected`` with the first reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

from infinisynth.languages import display_name
from infinisynth.llm import LLMClient, LLMRejection
from infinisynth.prompts import PromptTemplate
from infinisynth.records import content_id
from infinisynth.runner import Outcome, Passed, Rejected
from infinisynth.stages.problems import PROBLEM_SCHEMA, ProblemAnswer, ProblemChecks, check_problem, with_provenance


@dataclass(frozen=True)
class ReverseSettings:
    problems_per_seed: int = 1
    checks: ProblemChecks = field(default_factory=ProblemChecks)


class ReverseConstruction:
    name = "reverse"
    schema = PROBLEM_SCHEMA

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
            answer = await self.client.structured(messages, ProblemAnswer, stage=self.name)
        except LLMRejection as rejection:
            return Rejected(rejection.reason, rejection.detail, rejection.raw_answer)
        problem = answer.problem.strip()
        problem_check = check_problem(problem, self.settings.checks, snippet=row["seed"])
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
            "combination": None,
            "variant": variant,
            "provenance": with_provenance({}, self.name, self.prompt.version, self.client.config.model),
        }
