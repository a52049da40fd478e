"""Backfeeding Construction, step 4: a connected keyword triple -> a new problem.

The triple comes from the knowledge graph (:func:`infinisynth.knowledge_graph.sample_combinations`),
so the problem's task, method and knowledge point are related rather than drawn at random.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pyarrow as pa

from infinisynth.languages import display_name
from infinisynth.llm import LLMClient
from infinisynth.prompts import PromptTemplate
from infinisynth.records import content_id, schema_with
from infinisynth.runner import Outcome, Passed, Rejected
from infinisynth.stages.problems import PROBLEM_SCHEMA, ProblemAnswer, ProblemChecks, check_problem, with_provenance

# One row per combination to build: the triple, the target language and where it came from.
COMBINATION_SCHEMA = schema_with(
    pa.field("task", pa.string(), nullable=False),
    pa.field("instruction", pa.string(), nullable=False),
    pa.field("knowledge", pa.string(), nullable=False),
    pa.field("coherence", pa.float64()),
)


class BackfeedConstruction:
    name = "backfeed"
    schema = PROBLEM_SCHEMA

    def __init__(self, client: LLMClient, prompt: PromptTemplate, checks: ProblemChecks = ProblemChecks()):
        self.client = client
        self.prompt = prompt
        self.checks = checks

    def cache_key(self, row: dict[str, Any]) -> str:
        config = self.client.config
        return content_id(self.prompt.version, config.model, config.temperature, config.seed, asdict(self.checks))

    async def process(self, row: dict[str, Any]) -> Outcome:
        messages = self.prompt.render(
            task=row["task"], instruction=row["instruction"], knowledge=row["knowledge"], lang_name=display_name(row.get("lang"))
        )
        answer = await self.client.structured(messages, ProblemAnswer, stage=self.name)
        problem = answer.problem.strip()
        problem_check = check_problem(problem, self.checks)
        if problem_check is not None:
            return Rejected(*problem_check, raw_answer=problem)
        combination = {"task": row["task"], "instruction": row["instruction"], "knowledge": row["knowledge"]}
        return Passed(
            [
                {
                    "id": content_id("backfeed", row["id"], problem),
                    "parent_ids": [row["id"], *row.get("parent_ids", [])],
                    "origin": "backfeed",
                    "lang": row.get("lang"),
                    "problem": problem,
                    "seed": None,
                    "combination": combination,
                    "variant": 0,
                    "provenance": with_provenance({}, self.name, self.prompt.version, self.client.config.model),
                }
            ]
        )
