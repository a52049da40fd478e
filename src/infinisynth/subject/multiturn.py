"""Responses for evolved instructions, and multi-turn dialogues built on the answered pairs.

:class:`SurvivorResponse` answers each instruction that passed the oracle. An answer that is empty,
cut off, only punctuation, or a short refusal rejects the instruction (Evol-Instruct's signal that
the model cannot answer it).

:class:`MultiTurn` extends a kept single-turn pair with 1-4 follow-up rounds (the paper's range; the
count per row is seeded by the row id, so re-runs agree): the ``followup`` role (the generator's
connection unless it has its own) writes the next user turn from the conversation so far, then
answers it with the whole conversation as context.

Follow-ups are kept distinct by construction, not only by a check: each round of a conversation
asks a different *kind* of follow-up (:data:`FOLLOWUP_KINDS`: a worked example, an edge case, an
alternative, why a step works, a new requirement), drawn per row without repetition by a generator
seeded with the row id; the role may carry repetition penalties (``followup_frequency_penalty``,
``followup_presence_penalty``). A follow-up that still repeats an earlier user turn (the same
words, or most of its word trigrams) is drawn again with another sampling seed, up to
``followup_attempts`` times, and only then rejects the row as ``repeated_turn``; an answer that
fails the checks above rejects the row with that reason. The result is stored as chat ``messages``.
"""

from __future__ import annotations

import random
import re

import pyarrow as pa
from pydantic import BaseModel, Field, model_validator

from infinisynth.llm.client import ChatAnswer
from infinisynth.records import content_id, schema_with
from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Rejected, Row, StageSettings
from infinisynth.stages.publish import MESSAGE_TYPE
from infinisynth.subject.evolve import CHAIN_FIELDS, EVOLVED_FIELDS
from infinisynth.subject.oracle import VERIFIED_FIELDS, ngrams, words

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


class SurvivorResponse(ModelStage):
    name = "respond"
    schema = ANSWERED_SCHEMA
    prompt = "subject_response"
    role = "generator"
    answer = None  # plain chat

    def format_input(self, row: Row) -> Messages:
        return self.template.render(instruction=row["instruction"])

    def format_output(self, row: Row, answer: ChatAnswer) -> Outcome:
        problem = check_answer(answer, self.client.config.max_tokens)
        if problem is not None:
            return Rejected(*problem, raw_answer=answer.text)
        return Passed([self.annotate(row, response=answer.text.strip())])


# The kinds of follow-up a round can ask for (the prompt spells each out); a conversation never
# asks the same kind twice, so its user turns differ in intent, not just in wording.
FOLLOWUP_KINDS = ("example", "edge_case", "alternative", "explain_step", "new_requirement")
REPEAT_TRIGRAM_SHARE = 0.7  # a follow-up sharing this share of its word trigrams with an earlier turn repeats it


class MultiTurnSettings(StageSettings):
    min_followups: int = 1
    max_followups: int = 4
    sampling_seed: int = 0
    followup_attempts: int = 3  # draws of a follow-up question before a repeat rejects the row

    @model_validator(mode="after")
    def _followups_ordered(self) -> MultiTurnSettings:
        if not 1 <= self.min_followups <= self.max_followups:
            raise ValueError(f"follow-ups must satisfy 1 <= min ({self.min_followups}) <= max ({self.max_followups})")
        return self


def followup_count(row_id: str, settings: MultiTurnSettings) -> int:
    rng = random.Random(content_id("followups", row_id, settings.sampling_seed))
    return rng.randint(settings.min_followups, settings.max_followups)


def followup_kinds(row_id: str, count: int, sampling_seed: int = 0) -> list[str]:
    """The kind of each of a conversation's ``count`` follow-ups: seeded by the row, all different."""
    rng = random.Random(content_id("followup-kinds", row_id, sampling_seed))
    return rng.sample(FOLLOWUP_KINDS, min(count, len(FOLLOWUP_KINDS)))


_PLACEHOLDER = re.compile(r"^\s*<[^<>]*>\s*$")  # the prompt's "<the user's next message>", copied


def repeats(question: str, earlier: list[str]) -> bool:
    """Whether ``question`` is empty, the prompt's placeholder, or repeats one of the ``earlier``
    user turns: the same words, or most of its word trigrams taken from one of them."""
    tokens = words(question)
    if not tokens or _PLACEHOLDER.match(question):
        return True
    mine = ngrams(tokens, 3)
    for turn in earlier:
        theirs = words(turn)
        if tokens == theirs:
            return True
        if mine and len(mine & ngrams(theirs, 3)) >= REPEAT_TRIGRAM_SHARE * len(mine):
            return True
    return False


class MultiTurn(ModelStage):
    """One row, several calls: per round a follow-up question (structured), then its answer (chat)."""

    name = "multiturn"
    schema = CONVERSATION_SCHEMA
    prompt = "subject_followup"
    also_renders = (SurvivorResponse.prompt,)  # its system message is the answering persona
    role = "followup"
    Settings = MultiTurnSettings
    answer = FollowUp
    origin = "multiturn"
    settings: MultiTurnSettings

    def format_input(self, row: Row, messages: Messages | None = None, turn: int = 1, kind: str | None = None) -> Messages:
        """The follow-up prompt for round ``turn`` (of kind ``kind``) of the conversation so far (``messages``)."""
        messages = messages if messages is not None else opening(row)
        if kind is None:
            kind = followup_kinds(row["id"], turn, self.settings.sampling_seed)[turn - 1]
        return self.template.render(
            messages=messages, tags=list(row.get("tags") or []), domains=list(row.get("domains") or []), turn=turn, kind=kind
        )

    def format_output(self, row: Row, answer: Messages) -> Outcome:
        """``answer``: the finished conversation, the opening pair and every follow-up round."""
        conversation = self.derive(row, answer, messages=answer, followups=(len(answer) - 2) // 2)
        return Passed([{**row, **conversation, "provenance": self.provenance(row)}])

    async def process(self, row: Row) -> Outcome:
        messages = opening(row)
        # The answering persona is the response prompt's system message; the turns are the real ones.
        system = [m for m in self.prompts[SurvivorResponse.prompt].render(instruction=row["instruction"]) if m["role"] == "system"]
        wanted = followup_count(row["id"], self.settings)
        kinds = followup_kinds(row["id"], wanted, self.settings.sampling_seed)
        base_seed = self.client.config.seed or 0
        for turn, kind in enumerate(kinds, 1):
            earlier = [m["content"] for m in messages if m["role"] == "user"]
            prompt = self.format_input(row, messages, turn, kind)
            for attempt in range(self.settings.followup_attempts):
                # A repeat is drawn again with another sampling seed (None: the role's own for the first).
                seed = None if attempt == 0 else base_seed + 1000 * attempt
                question = (await self.client.structured(prompt, FollowUp, stage=self.name, seed=seed)).question.strip()
                if not repeats(question, earlier):
                    break
            else:
                return Rejected(
                    "repeated_turn",
                    f"follow-up {turn} of {wanted} ({kind}) repeated an earlier user turn or was empty in {self.settings.followup_attempts} draws",
                    raw_answer=question,
                )
            answer = await self.client.chat([*system, *messages, {"role": "user", "content": question}], stage=self.name)
            problem = check_answer(answer, self.client.config.max_tokens)
            if problem is not None:
                reason, detail = problem
                return Rejected(reason, f"answer to follow-up {turn} of {wanted}: {detail}", raw_answer=answer.text)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.text.strip()}]
        return self.format_output(row, messages)


def opening(row: Row) -> Messages:
    """The single-turn pair a conversation starts from."""
    return [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["response"]}]
