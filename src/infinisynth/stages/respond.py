"""Response generation: the generator answers each kept problem.

The prompt asks for the solution in a fenced block tagged with the problem's language, so the
static gate can find and check it. Empty or cut-off answers are rejected here.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from infinisynth.languages import display_name, fence_tag
from infinisynth.records import schema_with
from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Rejected, Row
from infinisynth.stages.problems import PROBLEM_FIELDS
from infinisynth.stages.quality import QUALITY_FIELDS

RESPONSE_SCHEMA = schema_with(*PROBLEM_FIELDS, *QUALITY_FIELDS, pa.field("response", pa.string(), nullable=False))


class ResponseGeneration(ModelStage):
    name = "respond"
    schema = RESPONSE_SCHEMA
    prompt = "response"
    role = "generator"

    def format_input(self, row: Row) -> Messages:
        lang = row.get("lang")
        return self.template.render(problem=row["problem"], lang_name=display_name(lang), fence=fence_tag(lang))

    def format_output(self, row: Row, answer: Any) -> Outcome:
        text = answer.text.strip()
        if not text:
            return Rejected("empty_response", "the generator returned no text")
        if answer.finish_reason == "length":
            return Rejected("truncated", f"the answer hit max_tokens ({self.client.config.max_tokens})", raw_answer=text)
        return Passed([self.annotate(row, response=text)])
