"""Backfeeding Construction, step 1: each problem -> task, instruction and knowledge keywords.

The keyword rows of a whole run are the knowledge graph's input (:mod:`infinisynth.knowledge_graph`).
"""

from __future__ import annotations

from typing import Annotated, Any

import pyarrow as pa
from pydantic import BaseModel, Field

from infinisynth.knowledge_graph import KEYWORD_SCHEMA_FIELDS
from infinisynth.languages import display_name
from infinisynth.llm import LLMClient
from infinisynth.prompts import PromptTemplate
from infinisynth.records import content_id, schema_with
from infinisynth.runner import Outcome, Passed, Rejected
from infinisynth.stages.problems import with_provenance

KeywordText = Annotated[str, Field(min_length=1, max_length=80)]


class Relation(BaseModel):
    head: str
    relation: str
    tail: str


class Keywords(BaseModel):
    task_keywords: list[KeywordText] = Field(min_length=1, max_length=12)
    instruction_keywords: list[KeywordText] = Field(min_length=1, max_length=12)
    knowledge_keywords: list[KeywordText] = Field(min_length=1, max_length=12)
    relations: list[Relation] = Field(default_factory=list, max_length=20)


SCHEMA = schema_with(
    *[f for f in KEYWORD_SCHEMA_FIELDS if f.name != "id"],
    pa.field("provenance", pa.string()),
)


class KeywordExtraction:
    name = "keywords"
    schema = SCHEMA

    def __init__(self, client: LLMClient, prompt: PromptTemplate):
        self.client = client
        self.prompt = prompt

    def cache_key(self, row: dict[str, Any]) -> str:
        config = self.client.config
        return content_id(self.prompt.version, config.model, config.temperature, config.seed)

    async def process(self, row: dict[str, Any]) -> Outcome:
        messages = self.prompt.render(problem=row["problem"], lang_name=display_name(row.get("lang")))
        answer = await self.client.structured(messages, Keywords, stage=self.name)
        cleaned = {kind: _clean(getattr(answer, kind)) for kind in ("task_keywords", "instruction_keywords", "knowledge_keywords")}
        empty = [kind for kind, words in cleaned.items() if not words]
        if empty:
            return Rejected("no_keywords", f"no usable {', '.join(empty)} in the answer", raw_answer=answer.model_dump_json())
        relations = [r.model_dump() for r in answer.relations if r.head.strip() and r.tail.strip()]
        return Passed(
            [
                {
                    "id": content_id("keywords", row["id"], cleaned, relations),
                    "parent_ids": [row["id"]],
                    "origin": row["origin"],
                    "lang": row.get("lang"),
                    **cleaned,
                    "relations": relations,
                    "provenance": with_provenance({}, self.name, self.prompt.version, self.client.config.model),
                }
            ]
        )


def _clean(words: list[str]) -> list[str]:
    """Trimmed, de-duplicated (case-insensitively), short keywords in their original order."""
    seen: set[str] = set()
    kept = []
    for word in words:
        text = " ".join(word.split())
        if text and len(text) <= 80 and text.lower() not in seen:
            seen.add(text.lower())
            kept.append(text)
    return kept
