"""Reverse Construction (Infinite-Instruct 3.1): a real code snippet -> self-contained problems.

Each seed yields ``problems_per_seed`` problems (prompt variants, so they differ). A problem that
copies the snippet or leans on it ("the code above") is not self-contained and is rejected; a seed
none of whose problems survive goes to ``rejected`` with the first reason.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from infinisynth.languages import display_name
from infinisynth.llm import LLMRejection
from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Rejected, Row
from infinisynth.stages.problems import PROBLEM_SCHEMA, ProblemAnswer, ProblemChecks, check_problem


class ReverseSettings(ProblemChecks):
    problems_per_seed: int = Field(1, ge=1)


class ReverseConstruction(ModelStage):
    name = "reverse"
    schema = PROBLEM_SCHEMA
    prompt = "reverse_construction"
    role = "generator"
    Settings = ReverseSettings
    answer = ProblemAnswer
    origin = "reverse"
    settings: ReverseSettings

    def format_input(self, row: Row, variant: int = 0) -> Messages:
        lang = row.get("lang")
        return self.template.render(lang=lang or "", lang_name=display_name(lang), snippet=row["seed"], variant=variant)

    def format_output(self, row: Row, answer: Any, variant: int = 0) -> Outcome:
        problem = answer.problem.strip()
        failed = check_problem(problem, self.settings, snippet=row["seed"])
        if failed is not None:
            return Rejected(*failed, raw_answer=problem)
        fields = {"problem": problem, "seed": row["seed"], "combination": None, "variant": variant}
        return Passed([self.derive(row, variant, problem, **fields)])

    async def process(self, row: Row) -> Outcome:
        outcomes = await asyncio.gather(*(self._variant(row, v) for v in range(self.settings.problems_per_seed)))
        rejected = [o for o in outcomes if isinstance(o, Rejected)]
        # A variant whose call did not complete makes the whole seed pending: a re-run redoes it
        # (the variants that were answered come back from the response cache).
        unfinished = next((o for o in rejected if o.transient), None)
        if unfinished is not None:
            return unfinished
        passed = [r for o in outcomes if isinstance(o, Passed) for r in o.rows]
        return Passed(passed) if passed else rejected[0]

    async def _variant(self, row: Row, variant: int) -> Outcome:
        try:
            answer = await self.ask(self.format_input(row, variant))
        except LLMRejection as rejection:
            return Rejected(rejection.reason, rejection.detail, rejection.raw_answer)
        return self.format_output(row, answer, variant)
