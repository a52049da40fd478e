"""Responses for evolved instructions, and multi-turn dialogues built on the answered pairs.

:class:`SurvivorResponse` answers each instruction that passed the oracle. An answer that is empty,
cut off, only punctuation, or a short refusal rejects the instruction (Evol-Instruct's signal that
the model cannot answer it).

:class:`MultiTurn` extends a kept single-turn pair with 1-4 follow-up rounds (the paper's range; the
count per row is seeded by the row id, so re-runs agree): the generator writes the next user turn
from the conversation so far, then answers it with the whole conversation as context. A follow-up
that repeats an earlier user turn, or an answer that fails the checks above, rejects the row with
that reason. The result is stored as chat ``messages``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from infinisynth.llm import LLMClient
from infinisynth.llm.client import ChatAnswer
from infinisynth.prompts import PromptTemplate
from infinisynth.records import content_id, schema_with
from infinisynth.runner import Outcome, Passed, Rejected
from infinisynth.stages.problems import with_provenance
from infinisynth.stages.publish import MESSAGE_TYPE
from infinisynth.subject.evolve import CHAIN_FIELDS, EVOLVED_FIELDS
from infinisynth.subject.oracle import VERIFIED_FIELDS, words

ANSWERED_FIELDS = [pa.field("response", pa.string(), nullable=False)]
ANSWERED_SCHEMA = schema_with(*CHAIN_FIELDS, *EVOLVED_FIELDS, *VERIFIED_FIELDS, *ANSWERED_FIELDS)
CONVERSATION_FIELDS = [
    pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False),
    pa.field("followups", pa.int32()),
]
CONVERSATION_SCHEMA = schema_with(*CHAIN_FIELDS, *EVOLVED_FIELDS, *VERIFIED_FIELDS, *ANSWERED_FIELDS, *CONVERSATION_FIELDS)

_REFUSAL = re.compile(r"\b(sorry|i cannot|i can't|i can ?not|i am unable|i'm unable|as an ai)\b", re.IGNORECASE)
REFUSAL_MAX_WORDS = 80  # a refusal inside a long, real answer is a caveat, not a refusal


class FollowUp(BaseModel):
    question: str = Field(min_length=1)


def check_answer(answer: ChatAnswer, max_tokens: int) -> tuple[str, str] | None:
    """``(reason, detail)`` if the answer is unusable, else None."""
    text = answer.text.strip()
    if not text or not words(text):
        return "empty_response", "the answer has no words"
    if answer.finish_reason == "length":
        return "truncated", f"the answer hit max_tokens ({max_tokens})"
    refusal = _REFUSAL.search(text)
    if refusal and len(text.split()) < REFUSAL_MAX_WORDS:
        return "refused", f"a short answer that declines ({refusal.group(0)!r})"
    return None


class SurvivorResponse:
    name = "respond"
    schema = ANSWERED_SCHEMA

    def __init__(self, client: LLMClient, prompt: PromptTemplate):
        self.client = client
        self.prompt = prompt

    def cache_key(self, row: dict[str, Any]) -> str:
        config = self.client.config
        return content_id(self.prompt.version, config.model, config.temperature, config.seed, config.max_tokens)

    async def process(self, row: dict[str, Any]) -> Outcome:
        answer = await self.client.chat(self.prompt.render(instruction=row["instruction"]), stage=self.name)
        problem = check_answer(answer, self.client.config.max_tokens)
        if problem is not None:
            return Rejected(*problem, raw_answer=answer.text)
        provenance = with_provenance(row, self.name, self.prompt.version, self.client.config.model)
        return Passed([{**row, "response": answer.text.strip(), "provenance": provenance}])


@dataclass(frozen=True)
class MultiTurnSettings:
    min_followups: int = 1
    max_followups: int = 4
    sampling_seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_followups <= self.max_followups:
            raise ValueError(f"follow-ups must satisfy 1 <= min ({self.min_followups}) <= max ({self.max_followups})")


def followup_count(row_id: str, settings: MultiTurnSettings) -> int:
    rng = random.Random(content_id("followups", row_id, settings.sampling_seed))
    return rng.randint(settings.min_followups, settings.max_followups)


class MultiTurn:
    name = "multiturn"
    schema = CONVERSATION_SCHEMA

    def __init__(
        self,
        client: LLMClient,
        followup_prompt: PromptTemplate,
        response_prompt: PromptTemplate,
        settings: MultiTurnSettings = MultiTurnSettings(),
    ):
        self.client = client
        self.followup_prompt = followup_prompt
        self.response_prompt = response_prompt
        self.settings = settings

    def cache_key(self, row: dict[str, Any]) -> str:
        config = self.client.config
        return content_id(
            self.followup_prompt.version,
            self.response_prompt.version,
            config.model,
            config.temperature,
            config.seed,
            config.max_tokens,
            self.settings.__dict__,
        )

    async def process(self, row: dict[str, Any]) -> Outcome:
        messages = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["response"]}]
        # The answering persona is the response prompt's system message; the turns are the real ones.
        system = [m for m in self.response_prompt.render(instruction=row["instruction"]) if m["role"] == "system"]
        wanted = followup_count(row["id"], self.settings)
        for turn in range(1, wanted + 1):
            ask = self.followup_prompt.render(
                messages=messages, tags=list(row.get("tags") or []), domains=list(row.get("domains") or []), turn=turn
            )
            question = (await self.client.structured(ask, FollowUp, stage=self.name)).question.strip()
            earlier = [m["content"] for m in messages if m["role"] == "user"]
            if not words(question) or any(words(question) == words(e) for e in earlier):
                return Rejected(
                    "repeated_turn", f"follow-up {turn} of {wanted} repeats an earlier user turn or is empty", raw_answer=question
                )
            answer = await self.client.chat([*system, *messages, {"role": "user", "content": question}], stage=self.name)
            problem = check_answer(answer, self.client.config.max_tokens)
            if problem is not None:
                reason, detail = problem
                return Rejected(reason, f"answer to follow-up {turn} of {wanted}: {detail}", raw_answer=answer.text)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.text.strip()}]
        return Passed(
            [
                {
                    **row,
                    "id": content_id("multiturn", row["id"], messages),
                    "parent_ids": [row["id"], *(row.get("parent_ids") or [])],
                    "origin": "multiturn",
                    "messages": messages,
                    "followups": wanted,
                    "provenance": with_provenance(row, self.name, self.followup_prompt.version, self.client.config.model),
                }
            ]
        )
