"""Hierarchical tagging, step 1: the tagger role names each instruction's fine-grained tags.

Each tag comes with a short explanation (structured output). Tags are only cleaned here (spacing,
quotes, sentences that are not tags, case-insensitive repeats); lower-casing, lemmatizing, merging
and mapping to domains happen over the whole pool in :mod:`infinisynth.subject.vocabulary`.
The row keeps its pool id: tagging annotates a conversation, it does not make a new one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any

import pyarrow as pa
from pydantic import BaseModel, Field

from infinisynth.llm import LLMClient
from infinisynth.prompts import PromptTemplate
from infinisynth.records import content_id
from infinisynth.runner import Outcome, Passed, Rejected
from infinisynth.stages.problems import with_provenance
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


@dataclass(frozen=True)
class TaggingSettings:
    min_tags: int = 1
    max_tags: int = 8
    max_tag_words: int = 6  # longer "tags" are sentences the model failed to condense
    max_tag_chars: int = 60
    max_instruction_chars: int = 6_000  # the prompt sees the start of very long instructions


class Tagging:
    name = STAGE
    schema = TAGGED_SCHEMA

    def __init__(self, client: LLMClient, prompt: PromptTemplate, settings: TaggingSettings = TaggingSettings()):
        self.client = client
        self.prompt = prompt
        self.settings = settings

    def cache_key(self, row: dict[str, Any]) -> str:
        config = self.client.config
        return content_id(self.prompt.version, config.model, config.temperature, config.seed, asdict(self.settings))

    async def process(self, row: dict[str, Any]) -> Outcome:
        instruction = row["instruction"][: self.settings.max_instruction_chars]
        messages = self.prompt.render(instruction=instruction, min_tags=self.settings.min_tags, max_tags=self.settings.max_tags)
        answer = await self.client.structured(messages, TagAnswer, stage=self.name)
        tags = clean_tags(answer.tags, self.settings)
        if not tags:
            return Rejected("no_tags", "no usable tag in the answer (all empty, sentences or repeats)", raw_answer=answer.model_dump_json())
        provenance = with_provenance(row, self.name, self.prompt.version, self.client.config.model)
        return Passed([{**row, "raw_tags": tags[: self.settings.max_tags], "provenance": provenance}])


def clean_tags(tags: list[Tag], settings: TaggingSettings = TaggingSettings()) -> list[dict[str, str]]:
    """Trimmed tags in the model's order, without sentences and case-insensitive repeats."""
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
