"""Diagnosis: the target model answers each prompt; the oracle judges the answer against the
reference and names the deficiencies in the abstract.

Two stages, each the runner's usual shape:

- :class:`TargetAnswer` (role ``target``): the model under diagnosis answers the prompt as a user
  would ask it. An empty or cut-off answer is still an answer - a wrong one - so it goes on to
  the oracle rather than to ``rejected``; only calls that never return are rejected.
- :class:`OracleVerdict` (role ``oracle``): a structured verdict - correct or not, and per failure
  the skill, knowledge area, error type, severity and a one-line description - validated by
  pydantic. Whatever concrete entity of the prompt the oracle still left in a deficiency (a
  function name, a literal) is replaced by its kind here (:func:`abstract`), so the targeted
  data made from it cannot echo the exam.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
from pydantic import BaseModel, Field, model_validator

from infinisynth.records import content_id, schema_with
from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Row

if TYPE_CHECKING:
    from infinisynth.llm.client import ChatAnswer

ErrorType = Literal[
    "wrong_logic", "missed_edge_case", "misread_task", "factual_error", "incomplete",
    "invalid_code", "inefficient", "format_violation", "other",
]  # fmt: skip
Severity = Literal["minor", "major", "critical"]
SEVERITY_WEIGHT = {"minor": 1.0, "major": 2.0, "critical": 3.0}


class Deficiency(BaseModel):
    skill: str = Field(min_length=3, max_length=160)
    knowledge_area: str = Field(min_length=3, max_length=160)
    error_type: ErrorType
    severity: Severity
    description: str = Field(min_length=1, max_length=500)


class Verdict(BaseModel):
    correct: bool
    deficiencies: list[Deficiency] = Field(max_length=3)
    rationale: str = Field("", max_length=800)

    @model_validator(mode="after")
    def _failures_name_a_deficiency(self) -> Verdict:
        if not self.correct and not self.deficiencies:
            raise ValueError("an incorrect answer needs at least one deficiency")
        return self


DEFICIENCY_TYPE = pa.struct(
    [
        ("skill", pa.string()),
        ("knowledge_area", pa.string()),
        ("error_type", pa.string()),
        ("severity", pa.string()),
        ("description", pa.string()),
    ]
)
_SET_FIELDS = [
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("reference", pa.string(), nullable=False),
    pa.field("source", pa.string()),
]
_ANSWER_FIELDS = [
    pa.field("answer", pa.string(), nullable=False),
    pa.field("answer_truncated", pa.bool_(), nullable=False),
    pa.field("target_model", pa.string(), nullable=False),
    pa.field("provenance", pa.string()),
]
ANSWER_SCHEMA = schema_with(*_SET_FIELDS, *_ANSWER_FIELDS)
VERDICT_SCHEMA = schema_with(
    *_SET_FIELDS,
    *_ANSWER_FIELDS,
    pa.field("correct", pa.bool_(), nullable=False),
    pa.field("deficiencies", pa.list_(DEFICIENCY_TYPE), nullable=False),
    pa.field("rationale", pa.string()),
    pa.field("abstracted_entities", pa.int32()),  # entities of the prompt this module had to remove
)


class TargetAnswer(ModelStage):
    name = "answer"
    schema = ANSWER_SCHEMA
    prompt = "diagnosis_answer"
    role = "target"

    def fingerprint(self) -> str:
        # The target is named by its endpoint as much as by its model id (a registered model is
        # often served under a generic alias), so the endpoint is part of the key too.
        return content_id(super().fingerprint(), self.client.config.base_url)

    def format_input(self, row: Row) -> Messages:
        return self.template.render(prompt=row["prompt"])

    def format_output(self, row: Row, answer: ChatAnswer) -> Outcome:
        return Passed(
            [
                self.annotate(
                    row,
                    answer=answer.text.strip(),
                    answer_truncated=answer.finish_reason == "length",
                    target_model=self.model,
                )
            ]
        )


class OracleVerdict(ModelStage):
    name = "verdict"
    schema = VERDICT_SCHEMA
    prompt = "diagnosis_oracle"
    role = "oracle"
    answer = Verdict

    def cache_key(self, row: Row) -> str:
        # A verdict judges one answer: the row keeps its id whatever the target said, so the
        # answer is part of the key (a new answer is never judged by an old verdict).
        return content_id(self._key, row["answer"])

    def format_input(self, row: Row) -> Messages:
        return self.template.render(
            prompt=row["prompt"], reference=row["reference"], answer=row["answer"], truncated=row["answer_truncated"]
        )

    def format_output(self, row: Row, answer: Verdict) -> Outcome:
        entities = concrete_entities(row["prompt"])
        deficiencies, removed = [], 0
        for item in [] if answer.correct else answer.deficiencies:
            fields = item.model_dump()
            for key in ("skill", "knowledge_area", "description"):
                fields[key], count = abstract(fields[key], entities)
                removed += count
            deficiencies.append(fields)
        return Passed(
            [self.annotate(row, correct=answer.correct, deficiencies=deficiencies, rationale=answer.rationale, abstracted_entities=removed)]
        )


# -- abstraction --------------------------------------------------------------------------------

_BACKTICKED = re.compile(r"`([^`\n]{2,60})`")
_QUOTED = re.compile(r"\"([^\"\n]{2,60})\"|'([^'\n]{2,60})'")
_IDENTIFIER = re.compile(r"\b(?:[A-Za-z]+_[A-Za-z0-9_]+|[a-z]+[A-Z][A-Za-z0-9]*|[A-Za-z_][A-Za-z0-9_]*\(\))")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")


def concrete_entities(prompt: str) -> dict[str, str]:
    """Concrete things a prompt names, each with the abstraction that replaces it.

    Identifiers (snake_case, camelCase, ``call()``, anything in backticks) become "a named
    function or variable"; quoted strings "a literal value"; numbers of two or more digits
    "a specific number" (single digits are too common in general prose to be the exam's).
    """
    found: dict[str, str] = {}
    for match in _BACKTICKED.finditer(prompt):
        found[match.group(1).strip()] = "a named function or variable"
    for match in _QUOTED.finditer(prompt):
        found[(match.group(1) or match.group(2)).strip()] = "a literal value"
    for match in _IDENTIFIER.finditer(prompt):
        found[match.group(0).removesuffix("()")] = "a named function or variable"
    for match in _NUMBER.finditer(prompt):
        if len(match.group(0).lstrip("-").replace(".", "")) >= 2:
            found[match.group(0)] = "a specific number"
    return {k: v for k, v in found.items() if len(k) >= 2}


def abstract(text: str, entities: dict[str, str]) -> tuple[str, int]:
    """``text`` with every entity replaced by its abstraction; and how many were replaced."""
    count = 0
    for entity in sorted(entities, key=len, reverse=True):  # longest first: `parse_rows` before `rows`
        pattern = re.compile(rf"(?<![\w]){re.escape(entity)}(?![\w])")
        text, n = pattern.subn(entities[entity], text)
        count += n
    return text, count
