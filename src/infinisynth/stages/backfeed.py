"""Backfeeding Construction, step 4: a connected keyword triple -> a new problem.

The triple comes from the knowledge graph (:func:`infinisynth.knowledge_graph.sample_combinations`),
so the problem's task, method and knowledge point are related rather than drawn at random.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from infinisynth.languages import display_name
from infinisynth.records import schema_with
from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Rejected, Row
from infinisynth.stages.problems import PROBLEM_SCHEMA, ProblemAnswer, ProblemChecks, check_problem

# One row per combination to build: the triple, the target language and where it came from.
COMBINATION_SCHEMA = schema_with(
    pa.field("task", pa.string(), nullable=False),
    pa.field("instruction", pa.string(), nullable=False),
    pa.field("knowledge", pa.string(), nullable=False),
    pa.field("coherence", pa.float64()),
)


class BackfeedConstruction(ModelStage):
    name = "backfeed"
    schema = PROBLEM_SCHEMA
    prompt = "backfeed_construction"
    role = "generator"
    Settings = ProblemChecks
    answer = ProblemAnswer
    origin = "backfeed"
    settings: ProblemChecks

    def format_input(self, row: Row) -> Messages:
        return self.template.render(
            task=row["task"], instruction=row["instruction"], knowledge=row["knowledge"], lang_name=display_name(row.get("lang"))
        )

    def format_output(self, row: Row, answer: Any) -> Outcome:
        problem = answer.problem.strip()
        failed = check_problem(problem, self.settings)
        if failed is not None:
            return Rejected(*failed, raw_answer=problem)
        combination = {"task": row["task"], "instruction": row["instruction"], "knowledge": row["knowledge"]}
        return Passed([self.derive(row, problem, problem=problem, seed=None, combination=combination, variant=0)])
