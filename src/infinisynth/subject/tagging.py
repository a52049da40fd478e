"""Hierarchical tagging, step 1: the tagger role names each instruction's fine-grained tags.

Each tag comes with a short explanation (structured output). Tags are only cleaned here (spacing,
quotes, sentences that are not tags, case-insensitive repeats); lower-casing, lemmatizing, merging
and mapping to domains happen over the whole pool in :mod:`infinisynth.subject.vocabulary`.
The row keeps its pool id: tagging annotates a conversation, it does not make a new one.
"""

from __future__ import annotations

from typing import Annotated

import pyarrow as pa
from pydantic import BaseModel, Field

from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Rejected, Row, StageSettings
from infinisynth.subject.pool import POOL_SCHEMA

STAGE = "tagging"
ROLE = "tagger"
PROMPT = "subject_tagging"

RAW_TAG_TYPE = pa.struct([("tag", pa.string()), ("explanation", pa.string())])
TAGGED_SCHEMA = pa.schema([*POOL_SCHEMA, pa.field("raw_tags", pa.list_(RAW_TAG_TYPE), nullable=False), pa.field("provenance", pa.string())])

_QUOTES = "\"'`“”‘’"


class Tag(BaseModel):
    tag: Annotated[str, Field(min_length=1, max_length=120)]
    explanation: Annotated[str, Field(max_length=600)] = ""


class TagAnswer(BaseModel):
    tags: list[Tag] = Field(min_length=1, max_length=20)


class TaggingSettings(StageSettings):
    min_tags: int = 1
    max_tags: int = 8
    max_tag_words: int = 6  # longer "tags" are sentences the model failed to condense
    max_tag_chars: int = 60
    max_instruction_chars: int = 6_000  # the prompt sees the start of very long instructions


class Tagging(ModelStage):
    name = STAGE
    schema = TAGGED_SCHEMA
    prompt = PROMPT
    role = ROLE
    Settings = TaggingSettings
    answer = TagAnswer
    settings: TaggingSettings

    def format_input(self, row: Row) -> Messages:
        instruction = row["instruction"][: self.settings.max_instruction_chars]
        return self.template.render(instruction=instruction, min_tags=self.settings.min_tags, max_tags=self.settings.max_tags)

    def format_output(self, row: Row, answer: TagAnswer) -> Outcome:
        tags = clean_tags(answer.tags, self.settings)
        if not tags:
            return Rejected("no_tags", "no usable tag in the answer (all empty, sentences or repeats)", raw_answer=answer.model_dump_json())
        return Passed([self.annotate(row, raw_tags=tags[: self.settings.max_tags])])


def clean_tags(tags: list[Tag], settings: TaggingSettings | None = None) -> list[dict[str, str]]:
    """Trimmed tags in the model's order, without sentences and case-insensitive repeats."""
    settings = settings if settings is not None else TaggingSettings()
    seen: set[str] = set()
    kept = []
    for tag in tags:
        text = " ".join(tag.tag.split()).strip(_QUOTES + " ").rstrip(".,;:!?").strip(_QUOTES + " ")
        if not text or len(text) > settings.max_tag_chars or len(text.split()) > settings.max_tag_words:
            continue
        if text.lower() in seen:
            continue
        seen.add(text.lower())
        kept.append({"tag": text, "explanation": " ".join(tag.explanation.split())})
    return kept
