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

**The reference check stands beside the oracle.** A diagnosis row may carry an ``answer_key``: a
short exact answer (a number, a word, a value) that the target's final answer can be checked
against without a model (:func:`reference_check`). For such a row the check decides whether the
answer is right (``checked_by = reference``) and the oracle's own verdict is kept beside it
(``oracle_correct``); when the check finds the answer wrong and the oracle had called it right,
the oracle is asked again, told the check's result, to name what failed. A small oracle cannot
wave a wrong answer through, and a wrong verdict of it stays visible in the table. Rows without
a key are judged by the oracle alone (``checked_by = oracle``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


class Diagnosis(BaseModel):
    """What failed in an answer already known to be wrong (the reference check said so)."""

    deficiencies: list[Deficiency] = Field(min_length=1, max_length=3)
    rationale: str = Field("", max_length=800)


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
    pa.field("answer_key", pa.string()),  # a short exact answer checkable without a model, if the set has one
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
    pa.field("correct", pa.bool_(), nullable=False),  # the reference check's result where there is one, else the oracle's
    pa.field("checked_by", pa.string(), nullable=False),  # reference | oracle: what decided `correct`
    pa.field("reference_correct", pa.bool_()),  # the reference check (null: the row has no answer key)
    pa.field("final_answer", pa.string()),  # what the reference check read as the answer's final value
    pa.field("oracle_correct", pa.bool_(), nullable=False),  # the oracle's own verdict, kept beside the check
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
        return content_id(self._key, row["answer"], row.get("answer_key"))

    def format_input(self, row: Row, check: Check | None = None) -> Messages:
        """The verdict prompt; with a failed ``check``, the prompt that asks only what failed."""
        return self.template.render(
            prompt=row["prompt"],
            reference=row["reference"],
            answer=row["answer"],
            truncated=row["answer_truncated"],
            known_wrong=check is not None and not check.correct,
            final_answer=check.found[:FINAL_VALUE_CHARS] if check is not None and check.found else None,
            answer_key=row.get("answer_key"),
        )

    async def process(self, row: Row) -> Outcome:
        verdict = await self.client.structured(self.format_input(row), Verdict, stage=self.name)
        check = reference_check(row["answer"], row.get("answer_key"))
        diagnosis: Verdict | Diagnosis = verdict
        if check is not None and not check.correct and verdict.correct:
            # The check overrules the oracle; the oracle, told so, names what failed.
            diagnosis = await self.client.structured(self.format_input(row, check), Diagnosis, stage=self.name)
        return self.format_output(row, verdict, check, diagnosis)

    def format_output(self, row: Row, answer: Verdict, check: Check | None = None, diagnosis: Verdict | Diagnosis | None = None) -> Outcome:
        correct = answer.correct if check is None else check.correct
        named = (diagnosis or answer).deficiencies
        entities = concrete_entities(row["prompt"])
        if row.get("answer_key"):  # the exam's answer must not reach targeted data either
            entities.setdefault(str(row["answer_key"]).strip(), "a specific value")
        deficiencies, removed = [], 0
        for item in [] if correct else named:
            fields = item.model_dump()
            for key in ("skill", "knowledge_area", "description"):
                fields[key], count = abstract(fields[key], entities)
                removed += count
            deficiencies.append(fields)
        rationale = (diagnosis or answer).rationale
        return Passed(
            [
                self.annotate(
                    row,
                    correct=correct,
                    checked_by="oracle" if check is None else "reference",
                    reference_correct=None if check is None else check.correct,
                    final_answer=None if check is None or check.found is None else check.found[:FINAL_VALUE_CHARS],
                    oracle_correct=answer.correct,
                    deficiencies=deficiencies,
                    rationale=rationale,
                    abstracted_entities=removed,
                )
            ]
        )


# -- the reference check ------------------------------------------------------------------------

_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:=]\s*(.+)", re.IGNORECASE)
_ANY_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")
FINAL_VALUE_CHARS = 200  # what the table keeps of the line the check read
_WRAPPING = "`'\"*_ .,;:!()[]{}<>"


@dataclass(frozen=True)
class Check:
    correct: bool
    found: str | None  # the final value read from the answer (None: it states none)


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _normal(text: str) -> str:
    return " ".join(text.strip().strip(_WRAPPING).lower().split())


def final_value(answer: str) -> str:
    """The part of an answer that states its result: what follows its last "Answer:" (the set's
    prompts ask for that line), else its last line with a letter or digit (not a code fence)."""
    lines = [line for line in answer.strip().splitlines() if re.search(r"[^\W_]", line) and not line.strip().startswith("```")]
    for line in reversed(lines):
        match = _ANSWER_LINE.search(line)
        if match:
            return match.group(1).strip()
    return lines[-1].strip() if lines else ""


def reference_check(answer: str, key: str | None) -> Check | None:
    """Whether ``answer`` states ``key`` as its result, decided without a model (None: no key).

    A numeric key matches the last number of the answer's final value (1e-6 relative tolerance,
    thousands separators ignored); any other key must be the final value, or a whole phrase of it,
    once case, quotes, backticks and surrounding punctuation are ignored.
    """
    if key is None or not str(key).strip():
        return None
    key = str(key).strip()
    value = final_value(answer)
    expected = _number(key)
    if expected is not None:
        numbers = _ANY_NUMBER.findall(value)
        if not numbers:
            return Check(False, value or None)
        got = _number(numbers[-1])
        return Check(got is not None and abs(got - expected) <= 1e-6 * max(1.0, abs(expected)), numbers[-1])
    want, got_text = _normal(key), _normal(value)
    found = got_text == want or re.search(rf"(?<![\w]){re.escape(want)}(?![\w])", got_text) is not None
    return Check(found, value or None)


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
