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

import pyarrow as pa
from pydantic import BaseModel, Field

from infinisynth.records import schema_with
from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Rejected, Row, StageSettings, with_provenance
from infinisynth.subject.evolve import CHAIN_FIELDS, EVOLVED_FIELDS, Evolution, prompt_values

VERIFIED_FIELDS = [pa.field("oracle_explanation", pa.string())]
VERIFIED_SCHEMA = schema_with(*CHAIN_FIELDS, *EVOLVED_FIELDS, *VERIFIED_FIELDS)

_WORD = re.compile(r"\w+", re.UNICODE)


class OracleVerdict(BaseModel):
    adds_information: bool
    answerable: bool
    explanation: str = Field("", max_length=600)


class OracleSettings(StageSettings):
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


class OracleCheck(ModelStage):
    """The checks above, cheapest first; survivors keep their row and id.

    The provenance key is ``oracle_g{generation}`` of the row (the pipeline's step name).
    """

    name = "oracle"
    schema = VERIFIED_SCHEMA
    prompt = "subject_oracle_check"
    also_renders = (Evolution.prompt,)  # the copy check re-renders the evolution prompt
    role = "oracle"
    Settings = OracleSettings
    answer = OracleVerdict
    settings: OracleSettings

    def deterministic_checks(self, row: Row) -> Rejected | None:
        """Checks 1 and 2: a rejection, or None if the row goes on."""
        instruction, parent = row["instruction"], row["parent_instruction"]
        tags, domains = list(row.get("tags") or []), list(row.get("domains") or [])
        rendered = self.prompts[Evolution.prompt].render(**prompt_values(parent, row["operation"], tags, domains))
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
        return None

    def format_input(self, row: Row) -> Messages:
        return self.template.render(
            parent=row["parent_instruction"], instruction=row["instruction"], operation=row["operation"].replace("_", " ")
        )

    def format_output(self, row: Row, answer: OracleVerdict) -> Outcome:
        evidence = {"operation": row["operation"], "adds_information": answer.adds_information, "answerable": answer.answerable}
        if not answer.adds_information:
            return Rejected(
                "no_new_information", answer.explanation or "the oracle found no information gain over the parent", evidence=evidence
            )
        if not answer.answerable:
            return Rejected("unanswerable", answer.explanation or "the oracle judged it unanswerable", evidence=evidence)
        provenance = with_provenance(row, f"oracle_g{row.get('generation')}", self.template.version, self.model)
        return Passed([{**row, "oracle_explanation": answer.explanation, "provenance": provenance}])

    async def process(self, row: Row) -> Outcome:
        rejected = self.deterministic_checks(row)
        if rejected is not None:
            return rejected
        if not self.settings.model_verdict:
            provenance = with_provenance(row, f"oracle_g{row.get('generation')}", "deterministic checks only", "-")
            return Passed([{**row, "oracle_explanation": None, "provenance": provenance}])
        return await super().process(row)
