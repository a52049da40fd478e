"""Response generation: the generator answers each kept problem.

The prompt asks for the solution in a fenced block tagged with the problem's language, so the
static gate can find and check it. Empty or cut-off answers are rejected here.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from infinisynth.languages import display_name, fence_tag
from infinisynth.llm import LLMClient
from infinisynth.prompts import PromptTemplate
from infinisynth.records import content_id, schema_with
from infinisynth.runner import Outcome, Passed, Rejected
from infinisynth.stages.problems import PROBLEM_FIELDS, with_provenance
from infinisynth.stages.quality import QUALITY_FIELDS

RESPONSE_SCHEMA = schema_with(*PROBLEM_FIELDS, *QUALITY_FIELDS, pa.field("response", pa.string(), nullable=False))


class ResponseGeneration:
    name = "respond"
    schema = RESPONSE_SCHEMA

    def __init__(self, client: LLMClient, prompt: PromptTemplate):
        self.client = client
        self.prompt = prompt

    def cache_key(self, row: dict[str, Any]) -> str:
        config = self.client.config
        return content_id(self.prompt.version, config.model, config.temperature, config.seed, config.max_tokens)

    async def process(self, row: dict[str, Any]) -> Outcome:
        lang = row.get("lang")
        messages = self.prompt.render(problem=row["problem"], lang_name=display_name(lang), fence=fence_tag(lang))
        answer = await self.client.chat(messages, stage=self.name)
        text = answer.text.strip()
        if not text:
            return Rejected("empty_response", "the generator returned no text")
        if answer.finish_reason == "length":
            return Rejected("truncated", f"the answer hit max_tokens ({self.client.config.max_tokens})", raw_answer=text)
        return Passed(
            [{**row, "response": text, "provenance": with_provenance(row, self.name, self.prompt.version, self.client.config.model)}]
        )
