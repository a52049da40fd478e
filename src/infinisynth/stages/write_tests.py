"""Test writing: the generator writes executable tests for each lint-clean answer (the test gate).

The step between the lint gate (``verify``) and the sandboxed test gate (``execute``,
:mod:`infinisynth.stages.execute`). It asks for a structured answer with one field, the tests,
given the problem, the language and the solution's code blocks (what the lint gate checked and
the sandbox runs). Tests are written in a stage of their own rather than with the answer: a small
generator asked for a structured solution fills it with schema text and stray JSON, and the answer
a user gets must be the same whether the gate is on or off. So ``respond`` always writes its
plain-text answer, and this stage only adds the ``tests`` column.

Every row passes: a row whose language has no sandboxed runner, or with no code block of its
language, gets empty tests without a model call; an answer the model could not make valid (after
the client's re-asks) also gives empty tests, which the gate names ``unverified``, never a
failure. Transient failures (the call did not complete) stay transient, as in every model stage.
With ``test_gate`` off the stage makes no model call at all: rows pass with ``tests`` null.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field, field_validator

from infinisynth.languages import display_name, fence_tag
from infinisynth.llm.reasons import is_transient
from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Row, StageSettings
from infinisynth.stages.verify import VERIFIED_SCHEMA
from infinisynth.verify.execute import LANGUAGES
from infinisynth.verify.responses import code_blocks

TESTED_SCHEMA = pa.schema([*VERIFIED_SCHEMA, pa.field("tests", pa.string())])  # null: the gate is off

# How each language with a sandboxed runner should write its tests.
TESTS_STYLE = {
    "python": "Write the tests as plain Python `assert` statements at top level (no pytest, no unittest, no imports of the solution).",
    "javascript": (
        "Write the tests in CommonJS JavaScript with `const assert = require('node:assert');` and "
        "`assert.strictEqual`/`assert.deepStrictEqual`, at top level or inside `test(...)` from `require('node:test')`."
    ),
}


# The structured answer. (No class docstring: pydantic would put it in the JSON schema the model
# sees, and small models copy it into their answer.)
class WrittenTests(BaseModel):
    tests: str = Field(description="Executable tests that assert the solution's behaviour")


class WriteTestsSettings(StageSettings):
    enabled: bool = False

    @field_validator("enabled", mode="before")
    @classmethod
    def _from_gate(cls, value: Any) -> Any:
        # Mapped from the pipeline's ``test_gate`` (off / report / enforce): tests are written
        # unless it is off, the same for report and enforce (one cache key for both).
        if isinstance(value, str) and value in ("off", "report", "enforce"):
            return value != "off"
        return value


class WriteTests(ModelStage):
    name = "write_tests"
    schema = TESTED_SCHEMA
    prompt = "test_writing"
    role = "generator"
    Settings = WriteTestsSettings
    settings: WriteTestsSettings
    answer = WrittenTests

    def format_input(self, row: Row) -> Messages:
        lang = str(row.get("lang") or "")
        return self.template.render(
            problem=row["problem"],
            lang_name=display_name(lang),
            fence=fence_tag(lang),
            solution=solution_code(row.get("response") or "", lang).rstrip(),
            tests_style=TESTS_STYLE[lang],
        )

    def format_output(self, row: Row, answer: Any) -> Outcome:
        # Empty tests are kept as such: the test gate names the row unverified, it does not fail it.
        return Passed([self.annotate(row, tests=strip_fence(answer.tests))])

    async def process(self, row: Row) -> Outcome:
        if not self.settings.enabled:  # the gate is off: no call, no tests
            return Passed([{**row, "tests": None}])
        lang = str(row.get("lang") or "")
        if lang not in LANGUAGES or not solution_code(row.get("response") or "", lang).strip():
            return Passed([self.annotate(row, tests="")])  # nothing the sandbox could run: no call
        from infinisynth.llm.client import LLMRejection

        try:
            return await super().process(row)
        except LLMRejection as rejection:
            if is_transient(rejection.reason):
                raise  # the call did not complete: the row is redone, as everywhere
            return Passed([self.annotate(row, tests="")])  # no usable tests: unverified, not rejected


def solution_code(response: str, lang: str) -> str:
    """The code the tests run against: the response's blocks tagged with the row's language, in
    order (a solution and the blocks that use it, as the lint gate reads them)."""
    return "\n".join(code for language, code in code_blocks(response) if language == lang)


def strip_fence(code: str) -> str:
    """``code`` without one enclosing Markdown fence, which models add despite being asked not to."""
    lines = code.strip("\n").split("\n")
    if len(lines) >= 2 and lines[0].lstrip().startswith(("```", "~~~")) and lines[-1].strip() in ("```", "~~~"):
        return "\n".join(lines[1:-1]) + "\n"
    return code
