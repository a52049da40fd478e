"""Backfeeding Construction, step 1: each problem -> task, instruction and knowledge keywords.

The keyword rows of a whole run are the knowledge graph's input (:mod:`infinisynth.knowledge_graph`).
"""

from __future__ import annotations

from typing import Annotated, Any

import pyarrow as pa
from pydantic import BaseModel, Field

from infinisynth.knowledge_graph import KEYWORD_SCHEMA_FIELDS
from infinisynth.languages import display_name
from infinisynth.records import schema_with
from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Rejected, Row

KeywordText = Annotated[str, Field(min_length=1, max_length=80)]
KINDS = ("task_keywords", "instruction_keywords", "knowledge_keywords")


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


class KeywordExtraction(ModelStage):
    name = "keywords"
    schema = SCHEMA
    prompt = "keyword_extraction"
    role = "generator"
    answer = Keywords

    def format_input(self, row: Row) -> Messages:
        return self.template.render(problem=row["problem"], lang_name=display_name(row.get("lang")))

    def format_output(self, row: Row, answer: Any) -> Outcome:
        cleaned = {kind: _clean(getattr(answer, kind)) for kind in KINDS}
        empty = [kind for kind, words in cleaned.items() if not words]
        if empty:
            return Rejected("no_keywords", f"no usable {', '.join(empty)} in the answer", raw_answer=answer.model_dump_json())
        relations = [r.model_dump() for r in answer.relations if r.head.strip() and r.tail.strip()]
        return Passed([self.derive(row, cleaned, relations, **cleaned, relations=relations)])


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
