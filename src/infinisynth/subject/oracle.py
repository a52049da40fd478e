"""The oracle check on evolved instructions: each failure rejected with its own reason.

In order, cheapest first:

1. ``copies_evolution_prompt`` (deterministic): the evolved instruction repeats a run of
   ``copy_ngram_words`` words from the evolution prompt it was made with (the prompt re-rendered
   for its parent and operation), other than runs that also occur in the parent instruction, its
   tags or its domains. Evol-Instruct's elimination step drops these "copied the prompt" failures.
2. ``no_new_information`` (deterministic): the evolved instruction equals its parent once case,
   whitespace and punctuation are ignored.
3. The oracle role judges the pair: ``no_new_information`` if the rewrite adds no information or
   requirement to its parent, ``unanswerable`` if a capable assistant could not answer it (missing
   material, contradictory, nonsensical, or asks for something impossible).

Survivors carry the oracle's explanation. ``model_verdict=False`` keeps only checks 1 and 2 (the
demo does this: a 135M model judges nearly every rewrite unanswerable). Responses are generated afterwards, and a refusal or an
empty answer there rejects the instruction too (Evol-Instruct's "the model cannot answer" signal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from infinisynth.llm import LLMClient
from infinisynth.prompts import PromptTemplate
from infinisynth.records import content_id, schema_with
from infinisynth.runner import Outcome, Passed, Rejected
from infinisynth.stages.problems import with_provenance
from infinisynth.subject.evolve import CHAIN_FIELDS, EVOLVED_FIELDS, prompt_values

VERIFIED_FIELDS = [pa.field("oracle_explanation", pa.string())]
VERIFIED_SCHEMA = schema_with(*CHAIN_FIELDS, *EVOLVED_FIELDS, *VERIFIED_FIELDS)

_WORD = re.compile(r"\w+", re.UNICODE)


class OracleVerdict(BaseModel):
    adds_information: bool
    answerable: bool
    explanation: str = Field("", max_length=600)


@dataclass(frozen=True)
class OracleSettings:
    copy_ngram_words: int = 6  # a run this long shared with the prompt (and not the parent) is a copy
    # False: deterministic checks only. For demos on tiny models, whose verdicts reject nearly
    # everything; nightly runs keep the oracle's verdict.
    model_verdict: bool = True


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def copied_prompt_ngrams(instruction: str, prompt_text: str, allowed_texts: list[str], n: int) -> list[str]:
    """Runs of ``n`` words the instruction shares with the prompt but with none of ``allowed_texts``."""
    allowed: set[tuple[str, ...]] = set()
    for text in allowed_texts:
        allowed |= ngrams(words(text), n)
    shared = ngrams(words(instruction), n) & ngrams(words(prompt_text), n)
    return sorted(" ".join(gram) for gram in shared - allowed)


def same_text(a: str, b: str) -> bool:
    return words(a) == words(b)


class OracleCheck:
    name = "oracle"
    schema = VERIFIED_SCHEMA

    def __init__(
        self, client: LLMClient, prompt: PromptTemplate, evolution_prompt: PromptTemplate, settings: OracleSettings = OracleSettings()
    ):
        self.client = client
        self.prompt = prompt
        self.evolution_prompt = evolution_prompt
        self.settings = settings

    def cache_key(self, row: dict[str, Any]) -> str:
        config = self.client.config
        return content_id(
            self.prompt.version, self.evolution_prompt.version, config.model, config.temperature, config.seed, self.settings.__dict__
        )

    async def process(self, row: dict[str, Any]) -> Outcome:
        instruction, parent = row["instruction"], row["parent_instruction"]
        tags, domains = list(row.get("tags") or []), list(row.get("domains") or [])
        rendered = self.evolution_prompt.render(**prompt_values(parent, row["operation"], tags, domains))
        prompt_text = "\n".join(m["content"] for m in rendered)
        copied = copied_prompt_ngrams(instruction, prompt_text, [parent, *tags, *domains], self.settings.copy_ngram_words)
        if copied:
            return Rejected(
                "copies_evolution_prompt",
                f"{len(copied)} run(s) of {self.settings.copy_ngram_words} words copied from the evolution prompt, e.g. {copied[0]!r}",
                evidence={"copied": copied[:20], "operation": row["operation"]},
            )
        if same_text(instruction, parent):
            return Rejected(
                "no_new_information", "the evolved instruction is the same text as its parent", evidence={"operation": row["operation"]}
            )
        if not self.settings.model_verdict:
            provenance = with_provenance(row, f"oracle_g{row.get('generation')}", "deterministic checks only", "-")
            return Passed([{**row, "oracle_explanation": None, "provenance": provenance}])
        messages = self.prompt.render(parent=parent, instruction=instruction, operation=row["operation"].replace("_", " "))
        verdict = await self.client.structured(messages, OracleVerdict, stage=self.name)
        evidence = {"operation": row["operation"], "adds_information": verdict.adds_information, "answerable": verdict.answerable}
        if not verdict.adds_information:
            return Rejected(
                "no_new_information", verdict.explanation or "the oracle found no information gain over the parent", evidence=evidence
            )
        if not verdict.answerable:
            return Rejected("unanswerable", verdict.explanation or "the oracle judged it unanswerable", evidence=evidence)
        provenance = with_provenance(row, f"oracle_g{row.get('generation')}", self.prompt.version, self.client.config.model)
        return Passed([{**row, "oracle_explanation": verdict.explanation, "provenance": provenance}])
